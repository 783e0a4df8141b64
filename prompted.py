"""Prompted examples: every row of a split rendered with one template (templates.py), checked.

`build_prompted_examples` turns dataset rows into the examples the scripts train and evaluate
on: a cloze context with GLM's `[MASK]` where the answer goes, the answer choices (verbalizers)
and the gold label (classification), or a source and its target (generation). It checks every
row first and reports every unusable one by its place in the user's file; a split whose labels
are all hidden (-1 or empty, as benchmarks publish test sets) gives examples without labels.
`group_references` gathers the references of each generation source.
"""

import logging
import math

from data import ORIGIN_COLUMN
from modeling_glm import UsageError
from templates import (
    LabelError,
    answer_fields,
    check_task,
    check_template_fields,
    choice_fields,
    list_fields,
    make_cloze_context,
    render_example,
    template_fields,
)

logger = logging.getLogger(__name__)


def _is_empty_field(value):
    """None, NaN, or a blank string: a value with no text to prompt with."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_hidden_mark(value):
    """-1: how benchmarks (GLUE, QASC, ...) mark a test label they do not publish."""
    return isinstance(value, int) and not isinstance(value, bool) and value == -1


# How many unusable rows a message lists before it gives the count of the rest.
_ROWS_LISTED = 10


def build_prompted_examples(dataset, template, task, skip_empty=True, skip_flag="--skip_empty"):
    """Render every row of a dataset into the examples the scripts train and evaluate on.

    Checks first that the dataset has the template's fields (check_template_fields), then
    whether the split's labels are hidden: every value of the answer fields (answer_fields:
    the label column of a classification prompt, the reference of a generation prompt) is
    empty (None, NaN, blank) or, for "cls", -1. A hidden split gives examples whose
    "target" and "label" are None (its answers are never rendered: a -1 label is never
    read as the last choice), for predictions only.

    A field the template reads as a list (list_fields: `endings[0]`, `endings | join`) must
    hold lists: text there (a CSV cell) is refused at once, in one line.

    Per row, in a split with labels: rows where the template renders to nothing
    (promptsource's conditional templates) are skipped ("not_applicable"). An empty input
    field is rendered as "" (an optional part of the context is no reason to drop a row);
    rows that cannot be rendered, with an empty answer field (label), an empty rendered input
    or target, or (choices read from the row's fields) an empty or repeated answer choice,
    are skipped and counted when `skip_empty`, with one logged warning listing them;
    otherwise they are errors whose message points to `skip_flag`. For "cls" an integer
    label must index the answer choices (0..len-1), and the rendered target must be one of
    them; a -1 label among labelled rows is an error.

    Every row is checked before anything is raised: the ValueError lists the unusable rows
    (the first 10, then how many more), each by its place (the row's ORIGIN_COLUMN, e.g.
    "data/train.csv line 8 (validation split)", else "row i", its 0-based index) and cause
    in words ("label_coarse 6 is outside the 6 answer choices (0 to 5)").

    Args:
        dataset: datasets.Dataset or list of dicts. template: PromptTemplate.
        task: "cls" or "gen". skip_empty: bool. skip_flag: the flag that skips such rows.
    Returns:
        (examples, counts). examples: list of dicts with "context" (input with one
        "[MASK]", see make_cloze_context), "input", "target" (None when hidden), "choices"
        (list[str] for cls, None for gen), "label" (index of target in choices for cls;
        None for gen and hidden labels), "source_key" (the rendered input; group_references
        groups by it), "row" (the 0-based index of its dataset row, e.g. to read the raw
        text columns there), "origin" (its place, as in the messages).
        counts: dict with "rows", "kept", "not_applicable", "empty_field" (an empty answer
        field), "empty_input", "empty_target", "bad_choices" (ints) and "labels_hidden": None, or why the split's labels are
        hidden, e.g. "every label_coarse is -1".
    Raises:
        UsageError: a "cls" template without answer choices, a missing column, a template
            without "|||", duplicate or empty fixed answer choices, text in a list field, a
            template that fails to
            render (first row, with its place), or unusable rows (listed as above).
    """
    check_task(task)
    if task == "cls" and template.answer_choices is None:
        raise UsageError(
            f"Template {template.name!r} has no answer choices, so it cannot be used for "
            "classification; choose a prompt listed by --list_prompts."
        )
    check_template_fields(template, _column_names(dataset))
    _check_list_fields(template, dataset)
    answers = sorted(answer_fields(template))
    counts = dict.fromkeys(("rows", "kept", "not_applicable", "empty_field", "empty_input", "empty_target",
                            "bad_choices"), 0)
    counts["labels_hidden"] = _hidden_labels(dataset, answers, task)
    # A hidden split's answer fields are empty or -1 by definition; other fields may be empty.
    checked = answers if counts["labels_hidden"] is None else []
    examples, skipped, problems = [], [], []
    for row, example in enumerate(dataset):
        counts["rows"] += 1
        origin = example.get(ORIGIN_COLUMN) or f"row {row}"
        try:
            prompted, kind, cause = _prompt_row(template, task, example, checked, answers, counts["labels_hidden"])
        except ValueError as err:  # the template itself fails: one row shows it
            raise UsageError(f"{origin}: {err}") from err
        if prompted is not None:
            examples.append({**prompted, "row": row, "origin": origin})
        elif kind == "not_applicable":
            counts[kind] += 1
        elif kind != "label" and skip_empty:
            counts[kind] += 1
            skipped.append(f"{origin}: {cause}")
        else:
            problems.append(f"{origin}: {cause}")
    counts["kept"] = len(examples)
    if problems:
        raise UsageError(
            f"{len(problems)} of {counts['rows']} rows cannot be used with prompt {template.name!r}:\n"
            f"{_list_rows(problems)}\n{_PROBLEM_ADVICE[task]}"
            + ("" if skip_empty else f" Rows that cannot be rendered can be skipped with {skip_flag}.")
        )
    if skipped:
        logger.warning(
            "Prompt %r: skipped %d row(s) that cannot be rendered (counts: %s):\n%s",
            template.name, len(skipped), counts, _list_rows(skipped),
        )  # fmt: skip
    return examples, counts


_PROBLEM_ADVICE = {
    "cls": "Integer labels index the answer choices from 0; word labels must be one of them. Fix these rows "
    "in the file (a test file whose labels are hidden has -1 or an empty label on every row), or choose "
    "another prompt (--list_prompts).",
    "gen": "Fix these rows in the file, or choose another prompt (--list_prompts).",
}


def _list_rows(lines):
    """The first _ROWS_LISTED lines, indented, then how many more there are."""
    listed = [f"  {line}" for line in lines[:_ROWS_LISTED]]
    if len(lines) > _ROWS_LISTED:
        listed.append(f"  ... and {len(lines) - _ROWS_LISTED} more")
    return "\n".join(listed)


def _check_list_fields(template, dataset):
    """Text where the template reads a list (a CSV cell holds text, never a list): one line."""
    for field in sorted(list_fields(template)):
        value = next((v for v in _column(dataset, field) if not _is_empty_field(v)), None)
        if isinstance(value, str):
            raise UsageError(
                f"Template {template.name!r} reads {field!r} as a list, but the data holds text there "
                f"({value[:30]!r}...): list fields need a JSON Lines file (.jsonl, the field a JSON list), not CSV"
            )


def _column_names(dataset):
    """Columns of a datasets.Dataset, or the keys of the first dict of a list."""
    if hasattr(dataset, "column_names"):
        return dataset.column_names
    return list(dataset[0]) if len(dataset) else []


def _column(dataset, field):
    """The values of one field: a datasets column, or the field of each dict of a list."""
    return dataset[field] if hasattr(dataset, "column_names") else [row[field] for row in dataset]


def _hidden_labels(dataset, answers, task):
    """None when the split has a label; else why its labels are hidden ("every label is -1")."""
    if not answers or not len(dataset):
        return None
    marks = set()
    for field in answers:
        for value in _column(dataset, field):
            if _is_empty_field(value):
                marks.add("empty")
            elif task == "cls" and _is_hidden_mark(value):
                marks.add("-1")
            else:
                return None
    return f"every {' and '.join(answers)} is {' or '.join(sorted(marks))}"


def _prompt_row(template, task, example, checked, answers, hidden):
    """One row -> (prompted example, None, None) when usable, else (None, kind, cause in
    words): kind "not_applicable", "empty_field", "empty_input", "empty_target", "bad_choices"
    (skippable) or "label" (an error). Raises UsageError where the template fails, whatever
    the row."""
    empty = [field for field in checked if _is_empty_field(example[field])]
    if empty:
        return None, "empty_field", f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty"
    marked = [field for field in answers if not hidden and task == "cls" and _is_hidden_mark(example[field])]
    if marked:
        return None, "label", f"{marked[0]} is -1, the mark of a hidden label, but other rows of this split have labels"
    # An empty number or null renders as "", not "None" / "nan".
    example = {key: "" if not isinstance(value, str) and _is_empty_field(value) else value
               for key, value in example.items()}
    try:
        input_text, target, choices = render_example(template, example, hidden_answer=bool(hidden))
    except LabelError as err:
        named = [field for field in answers if type(example[field]) is type(err.index) and example[field] == err.index]
        return None, "label", f"{named[0] if named else 'label'} {err.index!r} {err.why}"
    if not input_text and target is None:
        return None, "not_applicable", None
    if target is None:
        raise UsageError(
            f"Template {template.name!r} rendered no '|||' separator; a training template needs 'input ||| target'."
        )
    if not input_text:
        return None, "empty_input", "the prompt renders empty"
    if not target and not hidden:
        return None, "empty_target", "the answer renders empty"
    try:
        context = make_cloze_context(input_text)
    except ValueError as err:
        raise UsageError(f"Template {template.name!r}: {err}") from err
    label = None
    if task == "cls":
        if _bad_choices(choices):
            if choice_fields(template):  # this row's own choices
                return None, "bad_choices", f"its answer choices {choices} hold an empty or repeated choice"
            raise UsageError(
                f"Template {template.name!r}: answer choices {choices} contain an empty or repeated choice, so "
                "the label would be ambiguous; fix the template's answer_choices."
            )
        if not hidden and target not in choices:
            named = answers[0] if len(answers) == 1 and str(example[answers[0]]) == target else "the answer"
            return None, "label", f"{named} {target!r} is not one of the answer choices {choices}"
        label = None if hidden else choices.index(target)
    prompted = {
        "context": context,
        "input": input_text,
        "target": None if hidden else target,
        "choices": choices if task == "cls" else None,
        "label": label,
        "source_key": input_text,
    }
    return prompted, None, None


def _bad_choices(choices):
    """An empty or repeated choice: the label would be ambiguous."""
    return "" in choices or len(set(choices)) != len(choices)


def group_references(examples):
    """Group generation examples by source: every reference of the same input together.

    Args:
        examples: dicts with "source_key" and "target" (from build_prompted_examples).
    Returns:
        (sources, references_list): sources is list[str] of distinct source keys in order of
        first appearance; references_list[i] is list[str], the targets of sources[i] in order
        ([] for a split whose references are hidden: targets None).
    """
    grouped = {}
    for example in examples:
        references = grouped.setdefault(example["source_key"], [])
        if example["target"] is not None:
            references.append(example["target"])
    return list(grouped), list(grouped.values())

