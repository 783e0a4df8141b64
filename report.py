"""Tables and figures for a report, from the results.json files of a sweep.

    python report.py runs/sweep                        # -> runs/sweep/report/
    python report.py runs/sweep --output_dir report    # report.md, tables.tex, summary.json, *.png
    python report.py runs/sweep --glm_examples examples    # also examples/<dataset>/ for the GLM repository

Runs are grouped into studies (task, dataset, data), systems (method, peft, model, settings), configs
(prompt, lr, batch) and seeds (mean ± std, ddof=1); see analysis.separate_runs. Per study: the systems
compared at their best config (chosen on VALIDATION, never test) with zero-shot scores, bootstrap CIs and
paired tests; an error analysis of the best system; grid tables, heatmaps, prompt comparisons, curves.
"""

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from cli import ArgumentParser
from reporting import error_analysis, significance
from reporting.analysis import (
    METRIC_NAMES,
    NO_PROMPT,
    SYSTEM,
    TASK_NAMES,
    add_scores,
    add_zero_shot,
    best_runs,
    choose_metric,
    comparison_table,
    few_shot_curve,
    grid_sensitivity,
    grid_table,
    learning_curve,
    load_results,
    match_zero_shot,
    metric_label,
    prompt_sensitivity,
    prompt_table,
    separate_runs,
    split_untrained,
    system_label,
    trivial_baselines,
    zero_shot_summary,
)
from reporting.figures import (
    plot_confusion, plot_few_shot, plot_heatmap, plot_learning_curves, plot_prompts)
from reporting.glm_examples import datasets_without_full_data_runs, write_glm_examples
from reporting.levers import lever_section
from reporting.readings import (
    comparison_reading,
    errors_reading,
    few_shot_reading,
    grid_reading,
    length_following_reading,
    length_reading,
    lowest_bleu_reading,
    per_class_reading,
    prompt_pair_readings,
    prompt_reading,
    prompt_zero_shot_reading,
)
from reporting.significance import add_test_statistics, add_tests_against_best, zero_shot_test
from reporting.tables import (
    fmt_config,
    fmt_lr,
    fmt_mean_std,
    fmt_prompt,
    fmt_seeds,
    make_comparison_table,
    make_errors_table,
    make_few_shot_table,
    make_grid_table,
    make_length_table,
    make_lowest_bleu_table,
    make_per_class_table,
    make_prompt_table,
    shared_words,
    study_title,
)
from training import safe_name, write_json_atomic

logger = logging.getLogger("report")


def parse_args(argv=None):
    parser = ArgumentParser(description="Tables (Markdown + LaTeX) and figures from results.json files.",
                            usage="%(prog)s [RESULTS_DIR] [options]")
    parser.add_argument("results_dir", nargs="?", default="runs",
                        help="Folder searched recursively for results.json files.")
    parser.add_argument("--output_dir", default=None,
                        help="Where report.md, tables.tex and the PNGs go (default RESULTS_DIR/report).")
    parser.add_argument("--glm_examples", default=None, metavar="DIR",
                        help="Also write DIR/<dataset>/ for each dataset, a folder in the layout the GLM repository's "
                        "examples/ asks for: README.md, requirements.txt and the code that reproduces the runs.")
    parser.add_argument("--title", default="Prompt-based fine-tuning of GLM: sweep report", help="Title of report.md.")
    return parser.parse_args(argv)


SELECTION_NOTE = (
    "**Model selection never looks at test.** For every method, the configuration (prompt, learning "
    "rate, batch size) with the best mean *validation* score over seeds is selected, and only then is "
    "its *test* score (mean ± std over the same seeds) read. Within each run the checkpoint is also "
    "chosen on validation (best epoch). Test scores are shown only for selected configurations: each "
    "method's, and in the prompt comparison each prompt's own (its best learning rate and batch size). "
    "Runs share a table cell only when all their settings but the seed are equal."
)
STATISTICS_NOTE = (
    f"**Is a difference real?** Test 95% confidence intervals: percentile bootstrap over the test examples "
    f"({significance.CI_RESAMPLES:,} resamples, seeded) of the mean over seeds. Differences: paired approximate "
    f"randomization test on the same test examples ({significance.TEST_RESAMPLES:,} random swaps), two-sided; "
    f"significant means p < {significance.ALPHA}, without correction for the number of comparisons. Both read the "
    "saved test predictions of each run."
)


def report_sections(runs, zero_shot, output_dir):
    """Markdown sections, LaTeX tables and figures for every study (task, dataset, data) in runs, with the
    zero-shot columns of `zero_shot`. Returns (markdown lines, [tables.Table], {(task, dataset, study):
    comparison DataFrame})."""
    lines, tables, comparisons = [], [], {}
    runs = runs.sort_values(["task", "dataset", "num_shots", "study"], na_position="first")  # full data, then K up
    for (task, dataset, study), group in runs.groupby(["task", "dataset", "study"], sort=False):
        metric = choose_metric(group)
        group = add_scores(group, metric)
        scored_zero_shot = add_scores(zero_shot, metric)
        title = study_title(dataset, study)
        lines += [f"## {title}: {TASK_NAMES.get(task, task)}, metric {metric_label(metric)}", ""]
        if group["test_hidden"].any():
            lines += ["**Test labels hidden.** The test labels of this data are hidden (results.json: "
                      "`test_labels_hidden`): only validation scores are reported, never a test score.", ""]

        comparison, stats = add_test_statistics(comparison_table(group, metric), task, metric)
        comparison = add_tests_against_best(comparison, stats, metric)
        systems = [group[(group[SYSTEM] == row[SYSTEM]).all(axis=1)] for _, row in comparison.iterrows()]
        comparison = add_zero_shot(comparison, [zero_shot_summary(scored_zero_shot, runs_) for runs_ in systems])
        trivial = trivial_baselines(group, metric)
        comparisons[(task, dataset, study)] = comparison
        table = make_comparison_table(task, dataset, study, comparison, trivial, metric)
        tables.append(table)
        best = int(np.flatnonzero(comparison["best"])[0])
        gain = zero_shot_test(comparison.iloc[best], stats[best], task, metric)
        lines += ["### Methods compared", "", table.caption, "", table.markdown(), "",
                  *comparison_reading(comparison, trivial, gain), *skipped_rows_reading(group), ""]
        lines += error_section(task, comparison.iloc[best], output_dir, tables)
        if task == "cls":  # calibration, prompt ensembles, demonstrations, label-word search (reporting/levers.py)
            lines += lever_section(group, scored_zero_shot, metric)

        curves = {}
        for (_, row), system_runs in zip(comparison.iterrows(), systems):  # GLM, GLM + PEFT, baselines
            system = {key: row[key] for key in SYSTEM}
            lines += system_section(task, system, system_runs, metric, output_dir, tables, trivial,
                                    zero_shot_summary(scored_zero_shot, system_runs))  # fmt: skip
            best_config = best_runs(system_runs, metric)
            curve = learning_curve(best_config, metric)
            if len(curve[0]) > 1:  # one evaluation is a dot, no curve
                curves[f"{system_label(system)}\n{fmt_config(best_config.iloc[0])}"] = curve
        lines += ["### Learning curves", ""]
        if curves:
            figure = f"curves_{safe_name(f'{task}_{dataset}_{study}')}.png"
            plot_learning_curves(curves, metric, f"{title} ({task}): learning curves of each method's best "
                                 "configuration", output_dir / figure)  # fmt: skip
            lines += [f"![learning curves]({figure})", ""]
        else:
            lines += ["No learning curve: every run evaluated validation once. Curves need several evaluations per "
                      "run: `--eval_steps N` evaluates every N optimizer steps.", ""]
    return lines, tables, comparisons


def skipped_rows_reading(group):
    """A bullet when the study's runs scored fewer test examples than the test file has rows."""
    kept = group["data_settings"].map(lambda settings: settings["test examples"]).astype(float)  # None: no test
    skipped = group[kept < group["test_rows"].astype(float)]
    if skipped.empty:
        return []
    return [f"- Scored on {kept[skipped.index[0]]:.0f} of {skipped['test_rows'].iloc[0]} test rows: the prompt could "
            "not render the others, which the runs skipped (`--skip_eval_rows`)."]


def few_shot_sections(runs, output_dir):
    """Per (task, dataset) with few-shot runs (--num_shots): the test score against K (analysis.few_shot_curve)
    as a figure, a table and its reading. Returns (markdown lines, list of tables.Table)."""
    lines, tables = [], []
    for (task, dataset), group in runs.groupby(["task", "dataset"], sort=True):
        metric = choose_metric(group)
        curve = few_shot_curve(add_scores(group, metric), metric)
        if curve.empty:
            continue
        table = make_few_shot_table(task, dataset, curve, metric)
        tables.append(table)
        # The trivial baselines of the full data, so that a few-shot "lead" is read against them.
        full = group[group["num_shots"].isna() & (group["study"] == "")]
        trivial = {name: test for name, (_, test) in trivial_baselines(full, metric).items() if not math.isnan(test)}
        figure = f"few_shot_{safe_name(f'{task}_{dataset}')}.png"
        plot_few_shot(curve, metric, f"{study_title(dataset)} ({task}): test {METRIC_NAMES.get(metric, metric)} "
                      "against examples per class", output_dir / figure, trivial)  # fmt: skip
        references = [f"For reference, the {name.replace('_', ' ')} baseline scores {test:.1f} on test."
                      for name, test in trivial.items()]
        lines += [f"## {study_title(dataset)}: few-shot learning curves", "", table.caption, "", table.markdown(), "",
                  f"![test score against K]({figure})", "", " ".join(few_shot_reading(curve, metric) + references),
                  ""]
    return lines, tables


def system_section(task, system, system_runs, metric, output_dir, tables, trivial, zero_shot):
    """Grid table + heatmap with its sensitivity, and the prompt comparison when there are several prompts
    (`trivial`: {name: (validation, test)} drawn on its bar chart; `zero_shot`: the system's summary)."""
    dataset, study, label = system["dataset"], system["study"], system_label(system)
    stem = safe_name(f"{task}_{dataset}_{study}_{label}")
    title = study_title(dataset, study)
    grid = grid_table(system_runs, metric)
    best = grid[grid["best"]].iloc[0]
    table = make_grid_table(task, dataset, study, label, grid, metric)
    tables.append(table)
    n_seeds = int(system_runs["replicate"].nunique())
    test = "test labels hidden" if best["test_hidden"] else f"test {fmt_mean_std(best['test_mean'], best['test_std'])}"
    lines = [f"### Grid search: {label}", "", table.caption, "", table.markdown(), ""]
    lines += [
        f"Best on validation: prompt {fmt_prompt(best['prompt_id'])}, learning rate {fmt_lr(best['learning_rate'])}, "
        f"batch size {int(best['batch_size'])}: validation {fmt_mean_std(best['val_mean'], best['val_std'])}, "
        f"**{test}** ({metric_label(metric)}, {fmt_seeds(best['n_seeds'])}).",
        "",
    ]  # fmt: skip
    at_best_prompt = grid[grid["prompt_id"] == best["prompt_id"]]
    prompt = "no prompt" if best["prompt_id"] == NO_PROMPT else f"prompt {fmt_prompt(best['prompt_id'])}"
    if best["prompt_id"] != NO_PROMPT and grid["prompt_id"].nunique() > 1:
        prompt += " (the best on validation)"
    if len(at_best_prompt) > 1:  # one cell has no sensitivity to draw
        figure = f"heatmap_{stem}.png"
        plot_heatmap(at_best_prompt, metric,
                     f"{title} ({task}), {label}\n"
                     f"validation {METRIC_NAMES.get(metric, metric)}, {prompt}\n"
                     f"cells: {f'mean ± std over {n_seeds} seeds' if n_seeds > 1 else 'one seed'}; "
                     "red frame: selected configuration",
                     output_dir / figure)  # fmt: skip
        sensitivity = grid_sensitivity(at_best_prompt, metric)
        lines += [f"![lr x batch size heatmap]({figure})", "", grid_reading(sensitivity, metric), ""]

    if system_runs["prompt_id"].nunique() > 1:
        prompts, stats = add_test_statistics(prompt_table(system_runs, metric), task, metric)
        prompts = add_zero_shot(prompts, [zero_shot] * len(prompts))
        table = make_prompt_table(task, dataset, study, label, prompts, metric)
        tables.append(table)
        figure = f"prompts_{stem}.png"
        references = {name: test for name, (_, test) in trivial.items()}
        plot_prompts(prompts, metric, f"{title} ({task}), {label}: prompts at their best config", output_dir / figure,
                     references)  # fmt: skip
        lines += [f"### Prompts compared: {label}", "", table.caption, "", table.markdown(), "",
                  f"![prompt comparison]({figure})", "", prompt_reading(prompt_sensitivity(prompts), metric), ""]
        before_after = prompt_zero_shot_reading(prompts, metric)
        lines += [before_after, ""] if before_after else []
        pairs = prompt_pair_readings(prompts, stats, metric)
        if pairs:
            lines += ["Paired tests between prompts, each at its best configuration:", "", *pairs, ""]
    return lines


def error_section(task, best, output_dir, tables):
    """The error analysis of the system best on validation (`best`: its comparison row), from its runs' test
    predictions."""
    label = system_label(best)
    lines = [f"### Error analysis: {label}", ""]
    if best["test_hidden"]:
        return lines + ["The test labels are hidden: no error analysis.", ""]
    runs_rows = [significance.read_predictions(Path(path).parent, task) for path in best["paths"]]
    if any(rows is None for rows in runs_rows):
        return lines + [f"No error analysis: a run of its best configuration saved no "
                        f"{significance.PREDICTION_FILES[task]}.", ""]  # fmt: skip
    lines += [f"The system best on validation, at {fmt_config(best)}: its test predictions "
              f"({fmt_seeds(len(runs_rows))}).", ""]  # fmt: skip
    if task == "cls":
        return lines + classification_errors(runs_rows, best, output_dir, tables)
    return lines + generation_errors(runs_rows, best, tables)


def classification_errors(runs_rows, best, output_dir, tables):
    """Per-class table, confusion matrix figure and the most confident errors, each with its reading."""
    label, seeds = system_label(best), len(runs_rows)
    classes, matrix = error_analysis.per_class(runs_rows)
    by_position = error_analysis.choices_vary(runs_rows)
    table = make_per_class_table("cls", best["dataset"], best["study"], label, classes, seeds, by_position)
    tables.append(table)
    stem = safe_name("_".join(["cls", best["dataset"], best["study"], label]))
    figure = f"confusion_{stem}.png"
    pooled = f"{seeds} seeds pooled" if seeds > 1 else "one seed"
    plot_confusion(matrix, classes["class"].tolist(),
                   f"{study_title(best['dataset'], best['study'])} (cls)\n{label}\n"
                   f"test, {fmt_config(best)}; {pooled}", output_dir / figure)  # fmt: skip
    errors = error_analysis.confident_errors(runs_rows)
    lines = [table.caption, "", table.markdown(), "", f"![confusion matrix]({figure})", "",
             per_class_reading(classes, matrix, "choice position" if by_position else "class"), ""]
    following = error_analysis.length_following(runs_rows) if by_position else None
    if following:  # the runs of a comparison row share all flags but the seed: the first one's say
        first_args = json.loads(Path(best["paths"][0]).read_text(encoding="utf-8")).get("args") or {}
        lines += [length_following_reading(following, first_args.get("length_normalize")), ""]
    if len(errors):
        errors_table = make_errors_table(errors, shared_words(row["input"] for row in runs_rows[0]))
        lines += [f"The {len(errors)} most confident errors (margin: the predicted choice's score minus the gold "
                  "choice's, in the run's own scores; an example wrong in several seeds appears once, at its largest "
                  "margin):", "", errors_table.markdown(), ""]
    return lines + [errors_reading(errors), ""]


def generation_errors(runs_rows, best, tables):
    """The lowest sentence-BLEU outputs and the length table, each with its reading."""
    label, seeds = system_label(best), len(runs_rows)
    outputs = error_analysis.lowest_bleu(runs_rows)
    lengths, facts = error_analysis.length_stats(runs_rows)
    table = make_length_table("gen", best["dataset"], best["study"], label, lengths)
    tables.append(table)
    ranked = "mean over seeds; the output shown is the seed's that scores lowest" if seeds > 1 else "one seed"
    return [f"The {len(outputs)} test sources whose outputs score the lowest sentence BLEU (sacrebleu.sentence_bleu "
            f"against all references of the source; {ranked}):", "",
            make_lowest_bleu_table(outputs, seeds, shared_words(row["source"] for row in runs_rows[0])).markdown(), "",
            lowest_bleu_reading(outputs, facts), "",
            table.caption, "", table.markdown(), "", length_reading(lengths, facts), ""]  # fmt: skip


def write_report(runs, zero_shot, results_dir, output_dir, title, untrained, notes):
    """Writes report.md, tables.tex, summary.json and the figures; returns the comparison tables. `zero_shot`
    runs fill the zero-shot columns; the other `untrained` runs are listed with the reason they are in no
    table; `notes` say which runs were set apart and why."""
    output_dir.mkdir(parents=True, exist_ok=True)
    few_shot = bool(runs["num_shots"].notna().any())
    draws = " (for few-shot runs, over seeds x draws of the examples: --shots_seed)" * few_shot
    lines = [f"# {title}", "",
             f"{len(runs)} trained runs (results.json files) under `{results_dir}`; "
             f"{runs['seed'].nunique()} seed(s); std is the sample standard deviation over seeds{draws}.", "",
             SELECTION_NOTE, "", STATISTICS_NOTE, ""]  # fmt: skip
    if len(zero_shot):
        lines += [f"**Zero-shot.** {len(zero_shot)} run(s) evaluate an untrained model (`--no-do_train`): their test "
                  "score is the zero-shot column of the comparison and prompt tables, next to the fine-tuned score of "
                  "the same model and prompt on the same data. They take part in no choice.", ""]  # fmt: skip
    if notes:
        lines += ["**Runs set apart.** These runs differ from the others of their method in more than prompt, "
                  "learning rate, batch size and seed:", "", *notes, ""]
    # Run folders of sweeps.sh (they hold a sweep.log) without a results.json: failed, killed or still running.
    unfinished = sorted(log.parent for log in Path(results_dir).rglob("sweep.log")
                        if not (log.parent / "results.json").exists())
    if unfinished:
        lines += [f"{len(unfinished)} run folder(s) have no results.json (failed, killed or still running; see "
                  "their sweep.log and failed_runs.txt) and are missing from the tables:", ""]
        lines += [f"- `{path.relative_to(results_dir)}`" for path in unfinished] + [""]
    if len(untrained):
        lines += [f"{len(untrained)} run(s) did not train and are in no table:", ""]
        for run in untrained.itertuples():
            metric = run.metric_for_best_model
            split = "test" if metric in run.test else "validation"
            score = (run.test if split == "test" else run.validation).get(metric)
            hidden = " (test labels hidden)" if run.test_hidden else ""
            lines.append(f"- `{Path(run.path).parent.relative_to(results_dir)}` ({run.reason}): {split} {metric} "
                         f"{'n/a' if score is None else f'{score:.4f}'}{hidden}")
        lines.append("")
    few_shot_lines, few_shot_tables = few_shot_sections(runs, output_dir)
    sections, tables, comparisons = report_sections(runs, zero_shot, output_dir)
    lines += few_shot_lines + sections
    tables = few_shot_tables + tables
    (output_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    preamble = ["% Tables of report.md; needs \\usepackage{booktabs}.", f"% {SELECTION_NOTE.replace('**', '')}", ""]
    (output_dir / "tables.tex").write_text("\n".join(preamble + [t.latex() for t in tables]), encoding="utf-8")
    summary = {"/".join(filter(None, key)): table.drop(columns=["paths", "zs_paths"]).to_dict(orient="records")
               for key, table in comparisons.items()}  # fmt: skip
    write_json_atomic(output_dir / "summary.json", _json_safe(summary))
    return comparisons


def _json_safe(value):
    """NaN -> None and numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def fail(message):
    """The one-line error of a user's mistake, exit status 2 (as argparse)."""
    print(f"report.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        fail(f"{results_dir} is not a folder. Give the folder of a sweep (e.g. runs/cpu-demo): report.py reads "
             "every results.json under it.")
    output_dir = Path(args.output_dir) if args.output_dir else results_dir / "report"
    runs = load_results(results_dir)
    if runs.empty:
        fail(f"no readable results.json under {results_dir} (searched recursively). Each finished run of run_cls.py, "
             "run_gen.py or run_baseline.py writes one into its --output_dir; run a sweep first (./sweeps.sh) or "
             "give the folder that holds the runs.")
    runs, untrained = split_untrained(runs)
    if runs.empty:
        fail(f"the {len(untrained)} results.json under {results_dir} are all from runs without training (zero-shot "
             "or --peft_weights evaluations): no grid search to report.")
    runs, notes = separate_runs(runs)
    few_shot_only = datasets_without_full_data_runs(runs)
    if args.glm_examples and few_shot_only:
        fail(f"--glm_examples reports each dataset's full-data runs, but every run of {', '.join(few_shot_only)} is "
             "few-shot (--num_shots): add full-data runs to the sweep (./sweeps.sh --shots \"full\" with the same "
             "--out), or drop --glm_examples.")
    zero_shot, untrained, repeats = match_zero_shot(runs, untrained)
    comparisons = write_report(runs, zero_shot, results_dir, output_dir, args.title, untrained, notes + repeats)
    logger.info("Wrote %s, %s and %d figures.", output_dir / "report.md", output_dir / "tables.tex",
                len(list(output_dir.glob("*.png"))))  # fmt: skip
    if args.glm_examples:
        for folder in write_glm_examples(runs, comparisons, args.glm_examples):
            logger.info("Wrote %s.", folder)


if __name__ == "__main__":
    main()
