"""The pieces of report.py: grouping runs, tables, figures, tests, error analysis, readings, the levers
section and the GLM examples folder. Only report.py imports them."""
