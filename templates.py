"""Prompts (run_cls, run_gen, run_baseline; run_pretrain renders its texts with them): templates, their
rendering, the prompted examples, and a run's prompted splits.

- Templates: promptsource's and `prompts/*.yaml` (`load_templates`, `select_template`, `--list_prompts`).
- Rendering in a jinja sandbox (`render_example`: input, target, answer choices), which fields a template
  reads (`template_fields`, `answer_fields`), the cloze context with GLM's `[MASK]` (`make_cloze_context`).
- Prompted examples (`build_prompted_examples`): every row of a split rendered and checked, each unusable
  one named by file and line; a split whose labels are all hidden (-1 or empty) gives examples without
  labels (the one decision: `hidden_labels`; `hidden_label_splits` says what a run does with them).
- `load_prompted_splits`: the data flags -> data (data.py), prompt, few-shot draw or carve, max samples and
  prompted examples, the preamble every script calls.
- The levers' text side (run_cls): content-free inputs (calibration), demonstrations, the searched label
  words as a template and its YAML.
"""

import dataclasses
import functools
import logging
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jinja2
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox
import yaml

from data import (
    HUB_DATASETS,
    ORIGIN_COLUMN,
    OTHER_TASK_LABEL_COLUMNS,
    adapt_columns,
    apply_max_samples,
    carve_validation,
    load_raw_datasets,
    sample_few_shot,
)
from glm_utils import encode_context
from modeling_glm import MASK_TOKEN, UsageError

logger = logging.getLogger(__name__)

TASKS = ("cls", "gen")

# Prompt templates


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt: a jinja template whose output is "input ||| target".

    name: unique per dataset. jinja: the template source. answer_choices: jinja for the
    "a ||| b ||| c" list of verbalizers (None for generation). original_task: the prompt
    asks for the dataset's own task. source: "promptsource" or the path of our YAML file.
    """

    name: str
    jinja: str
    answer_choices: Optional[str]
    original_task: bool
    source: str


def load_templates(dataset_name, dataset_config_name=None, prompts_dir="prompts", task="cls"):
    """The usable prompt templates of a dataset, in a stable order (the prompt id = index).

    Sources: promptsource 0.2.3's templates (only their fields are read, never rendered by promptsource's
    unsandboxed code), sorted by name, then `<prompts_dir>/<dataset_name>.yaml`'s, sorted by name. A relative
    `prompts_dir` is looked up in the working directory, then next to this file. Usable: original_task true,
    answer_choices for "cls" and none for "gen", no label column of another task (OTHER_TASK_LABEL_COLUMNS).

    Returns:
        list[PromptTemplate], never empty.
    Raises:
        ValueError: unknown task (a bug).
        UsageError: malformed YAML, duplicate names, no usable template, or promptsource is not installed.
    """
    check_task(task)
    candidates, local_path = _candidate_templates(dataset_name, dataset_config_name, prompts_dir)
    dataset = _short_dataset_name(dataset_name)
    usable = [t for t in candidates if _why_left_out(t, task, dataset) is None]
    other_task = "gen" if task == "cls" else "cls"
    if not usable and any(_why_left_out(t, other_task, dataset) is None for t in candidates):
        kind = {"cls": ("classification", "they have answer choices"), "gen": ("generation", "no answer choices")}
        script = {"cls": "run_cls.py", "gen": "run_gen.py"}
        raise UsageError(f"The prompts of dataset {dataset!r} are {kind[other_task][0]} prompts "
                         f"({kind[other_task][1]}): {script[other_task]} is the script for them. For {kind[task][0]}, "
                         f"write a prompt with {'answer_choices' if task == 'cls' else 'no answer_choices'} in "
                         f"{local_path} (format: see the comment at the top of prompts/fine_foods.yaml).")
    if not usable:
        raise UsageError(f"No usable {task} templates for dataset {dataset!r} (config {dataset_config_name!r}): "
                         "promptsource has none with original_task true and "
                         f"{'answer choices' if task == 'cls' else 'no answer choices'}, and {local_path} "
                         f"{'adds none' if local_path.is_file() else 'does not exist'}. Write templates there "
                         "(format: see the comment at the top of prompts/fine_foods.yaml).")
    return usable


def left_out_templates(dataset_name, dataset_config_name=None, prompts_dir="prompts", task="cls"):
    """The templates load_templates leaves out (--list_prompts): {reason in words: [names]}, reasons in a fixed
    order, only those that occur."""
    check_task(task)
    candidates, _ = _candidate_templates(dataset_name, dataset_config_name, prompts_dir)
    left_out = {}
    for template in candidates:
        reason = _why_left_out(template, task, _short_dataset_name(dataset_name))
        if reason is not None:
            left_out.setdefault(reason, []).append(template.name)
    return left_out


def _candidate_templates(dataset_name, dataset_config_name, prompts_dir):
    """(every template of the dataset, usable or not, the local file's path)."""
    dataset_name = _short_dataset_name(dataset_name)
    local_path = _resolve_prompts_dir(prompts_dir) / f"{dataset_name}.yaml"
    candidates = _promptsource_templates(dataset_name, dataset_config_name)
    if local_path.is_file():
        candidates += _local_templates(local_path)
    _check_unique_names(candidates)
    return candidates, local_path


def check_task(task):
    """Raises ValueError unless task is one of TASKS."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


def _short_dataset_name(dataset_name):
    """'CogComp/trec' -> 'trec' (our registry name); other names unchanged."""
    for short, repo in HUB_DATASETS.items():
        if dataset_name == repo:
            return short
    return dataset_name


def prompt_file_name(dataset_name):
    """The file of a prompts folder that load_templates reads for a dataset: "<short name>.yaml"."""
    return f"{_short_dataset_name(dataset_name)}.yaml"


def _resolve_prompts_dir(prompts_dir):
    path = Path(prompts_dir)
    if path.is_absolute() or path.is_dir():
        return path
    return Path(__file__).resolve().parent / path


def _promptsource_templates(dataset_name, dataset_config_name):
    with warnings.catch_warnings():  # promptsource imports pkg_resources, which warns
        warnings.simplefilter("ignore")
        try:
            from promptsource.templates import TEMPLATES_FOLDER_PATH, DatasetTemplates
        except ImportError as err:
            raise UsageError("promptsource is not installed; install it with: "
                             "pip install --no-deps --ignore-requires-python promptsource==0.2.3") from err
        folder = Path(TEMPLATES_FOLDER_PATH, dataset_name, *([dataset_config_name] if dataset_config_name else []))
        if not (folder / "templates.yaml").is_file():
            return []
        collection = DatasetTemplates(dataset_name, dataset_config_name)
    return sorted(
        (
            PromptTemplate(
                name=t.name,
                jinja=t.jinja,
                answer_choices=t.answer_choices,
                original_task=bool(t.metadata.original_task),
                source="promptsource",
            )
            for t in collection.templates.values()
        ),
        key=lambda t: t.name,
    )


_YAML_KEYS = {"name", "jinja", "answer_choices", "original_task"}


def _local_templates(path):
    """Templates from one of our YAML files (safe_load; keys checked; jinja syntax checked)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(f"Prompt file {path} is not valid YAML: {err}") from err
    entries = document.get("templates") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise UsageError(f"Prompt file {path} needs a top-level 'templates:' list of mappings.")
    templates = []
    for position, entry in enumerate(entries, start=1):
        where = f"{path}, template {position}"
        if not isinstance(entry, dict) or not {"name", "jinja"} <= set(entry):
            raise UsageError(f"{where}: each template is a mapping with at least 'name' and 'jinja'.")
        unknown = set(entry) - _YAML_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_YAML_KEYS)}.")
        template = PromptTemplate(
            name=str(entry["name"]),
            jinja=str(entry["jinja"]),
            answer_choices=None if entry.get("answer_choices") is None else str(entry["answer_choices"]),
            original_task=bool(entry.get("original_task", True)),
            source=str(path),
        )
        template_fields(template)  # raises on a jinja syntax error, naming the template
        templates.append(template)
    return sorted(templates, key=lambda t: t.name)


def _check_unique_names(templates):
    counts = Counter(t.name for t in templates)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise UsageError(f"Duplicate template name(s) {duplicates}: rename the local one(s) in prompts/.")


def _why_left_out(template, task, dataset_name):
    """Why a template is no usable `task` prompt of the dataset, in words; None when it is."""
    if not template.original_task:
        return "not the dataset's original task"
    if task == "cls" and template.answer_choices is None:
        return "no answer choices (a generation prompt)"
    if task == "gen" and template.answer_choices is not None:
        return "answer choices (a classification prompt)"
    other = set(OTHER_TASK_LABEL_COLUMNS.get(dataset_name, ())) & template_fields(template)
    if other:
        return f"predicts another task's labels ({', '.join(sorted(other))})"
    return None


def select_template(templates, prompt_id=None, prompt_name=None):
    """Pick one template by id (index in `templates`) or by name; with neither, id 0.

    Raises:
        UsageError: both given, an unknown id or name (the message lists the valid "id: name" pairs), or an
            empty list.
    """
    if not templates:
        raise UsageError("No templates to choose from.")
    if prompt_id is not None and prompt_name is not None:
        raise UsageError("Pass either --prompt_id or --prompt_name, not both.")
    if prompt_name is not None:
        for template in templates:
            if template.name == prompt_name:
                return template
        raise UsageError(f"Unknown --prompt_name {prompt_name!r}; valid prompts:\n{describe_templates(templates)}")
    if prompt_id is None:
        return templates[0]
    if not 0 <= prompt_id < len(templates):
        raise UsageError(f"Unknown --prompt_id {prompt_id}; valid prompts:\n{describe_templates(templates)}")
    return templates[prompt_id]


def describe_templates(templates):
    """One line per template, "id: name [source] choices: a | b" (what --list_prompts prints)."""
    lines = []
    for prompt_id, template in enumerate(templates):
        choices = f" choices: {template.answer_choices}" if template.answer_choices else ""
        lines.append(f"{prompt_id}: {template.name} [{template.source}]{choices}")
    return "\n".join(lines)


# Rendering (sandboxed: templates can read the example, never reach Python internals)


def _highlight(text):  # promptsource's filters: highlight, choice, most_frequent
    return "<span style='color: #F08080'>" + text + "</span>"


def _choice(choices):
    """Python's `random`, so accelerate's set_seed makes it reproducible."""
    return random.choice(choices)


def _most_frequent(items):
    """Every item with the highest count, in first appearance order; None for an empty input."""
    if not items:
        return None
    counts = Counter(items)
    top = max(counts.values())
    return [item for item, count in counts.items() if count == top]


_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
_ENV.globals["zip"] = zip
_ENV.filters.update(highlight=_highlight, choice=_choice, most_frequent=_most_frequent)
_SEPARATOR = "|||"
# Stands in for "|||" inside example values while rendering, so only the template's own
# separator splits input from target (the same protection promptsource applies).
_PIPE_PLACEHOLDER = "\ue000PIPES\ue000"


@functools.lru_cache(maxsize=256)
def _compile(source, template_name):
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise UsageError(f"Template {template_name!r} has a jinja syntax error: {err}") from err


def template_fields(template):
    """The example fields a template reads (its jinja and its answer_choices jinja).

    Returns:
        set[str] of undeclared variables, without `answer_choices` and the globals.
    Raises:
        UsageError: a jinja syntax error (names the template).
    """
    fields = set()
    for source in (template.jinja, template.answer_choices):
        if source is None:
            continue
        try:
            fields |= jinja2.meta.find_undeclared_variables(_ENV.parse(source))
        except jinja2.TemplateSyntaxError as err:
            raise UsageError(f"Template {template.name!r} has a jinja syntax error: {err}") from err
    return fields - {"answer_choices"} - set(_ENV.globals)


def choice_fields(template):
    """The fields the answer choices read: non-empty when each example has its own choices
    ("{{endings | join(' ||| ')}}"), empty for fixed verbalizers ("yes ||| no")."""
    if template.answer_choices is None:
        return set()
    return jinja2.meta.find_undeclared_variables(_ENV.parse(template.answer_choices)) - set(_ENV.globals)


# Filters that read their input as a list (not length, first...: text has those too).
_LIST_FILTERS = {"join", "sort", "unique", "map", "select", "reject"}


def list_fields(template):
    """The fields a template reads as lists: indexed by a number (`endings[0]`), looped over, or
    piped into a list filter (`endings | join(' ||| ')`), in its jinja or its answer choices.

    Returns:
        set[str]. Raises: UsageError on a jinja syntax error (see template_fields).
    """
    fields = template_fields(template)
    found = set()
    for source in filter(None, (template.jinja, template.answer_choices)):
        tree = _ENV.parse(source)
        for node in tree.find_all((jinja2.nodes.Getitem, jinja2.nodes.Filter, jinja2.nodes.For)):
            if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
                target = node.node if isinstance(node.arg.value, int) else None
            elif isinstance(node, jinja2.nodes.Filter):
                target = node.node if node.name in _LIST_FILTERS else None
            elif isinstance(node, jinja2.nodes.For):
                target = node.iter
            else:
                target = None
            if isinstance(target, jinja2.nodes.Name):
                found.add(target.name)
    return found & fields


def check_template_fields(template, column_names):
    """Raises UsageError unless the dataset has every field the template reads (names the missing field(s) and
    the columns; when only answer fields are missing, says how to mark hidden labels)."""
    missing = sorted(template_fields(template) - set(column_names))
    if missing:
        columns = sorted(set(column_names) - {ORIGIN_COLUMN})
        unlabelled = (
            " A file whose labels are hidden still needs the column, with every cell empty (or -1 for "
            "integer labels)."
            if set(missing) <= answer_fields(template) else ""
        )
        raise UsageError(f"Template {template.name!r} ({template.source}) reads field(s) {missing} that the dataset "
                         f"lacks; available columns: {columns}. Choose another prompt (--list_prompts), or rename the "
                         f"columns of your files to match.{unlabelled}")


def answer_fields(template):
    """The fields read after the template's first "|||", e.g. {"label_coarse"} for
    "{{text}} ||| {{answer_choices[label_coarse]}}". Returns set[str], a subset of template_fields."""
    known = template_fields(template)  # raises first on a syntax error, naming the template
    after_separator, fields = False, set()
    for node in _ENV.parse(template.jinja).find_all((jinja2.nodes.TemplateData, jinja2.nodes.Name)):
        if isinstance(node, jinja2.nodes.TemplateData):
            after_separator = after_separator or _SEPARATOR in node.data
        elif after_separator:
            fields.add(node.name)
    return fields & known


class LabelError(ValueError):
    """A template indexed its answer choices with a value that is not one of their indices."""

    def __init__(self, index, count):
        if isinstance(index, int) and not isinstance(index, bool):
            self.why = f"is outside the {count} answer choices (0 to {count - 1})"
        else:
            self.why = f"is not a whole number, so it picks none of the {count} answer choices"
        self.index = index
        super().__init__(f"answer_choices[{index!r}]: {index!r} {self.why}")


class _AnswerChoices(list):
    """The answer choices as a template reads them. A label must be a whole number in
    0..len-1: Python's list would read -1 (the mark of a hidden label) as the last choice,
    and jinja would turn a text label into an undefined value. Slices work as for a list."""

    def __getitem__(self, index):
        if isinstance(index, slice):
            return super().__getitem__(index)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise LabelError(index, len(self))
        return super().__getitem__(index)


class _HiddenAnswer(list):
    """The answer choices of a row whose label is hidden: any index gives "" (the answer is
    not rendered; only the prompt is used)."""

    def __getitem__(self, index):
        return super().__getitem__(index) if isinstance(index, slice) else ""


def _render(source, template_name, context):
    compiled = _compile(source, template_name)
    try:
        return compiled.render(**context)
    except LabelError:
        raise
    except jinja2.sandbox.SecurityError as err:
        raise UsageError(f"Template {template_name!r} was refused by the sandbox ({err}): templates may only read "
                         "the example's fields; rewrite it or choose another prompt.") from err
    except (jinja2.TemplateError, TypeError, KeyError, IndexError, ValueError) as err:
        raise UsageError(f"Template {template_name!r} failed to render: {err}. Check that the fields have the types "
                         "the template expects.") from err


def _split_parts(rendered):
    return [part.replace(_PIPE_PLACEHOLDER, _SEPARATOR).strip() for part in rendered.split(_SEPARATOR)]


def render_example(template, example, hidden_answer=False):
    """Render one example with a template, in a sandbox: the answer choices, then input ||| target, each piece
    stripped; "|||" inside example values never splits. With `hidden_answer` any `answer_choices[i]` gives "".

    Args:
        template: PromptTemplate. example: dict of field -> value. hidden_answer: bool.
    Returns:
        (input_text: str, target_text: str or None when the template has no "|||" part, answer_choices:
        list[str] or None); ("", None, choices) where the template renders nothing (promptsource's conditionals).
    Raises:
        LabelError (a ValueError): answer_choices indexed with a negative, too large or non-integer value.
        UsageError: the sandbox refused the template (e.g. access to `__class__`), a field is missing or
            unusable, the example has a key `answer_choices`, or the output has more than one "|||".
    """
    if "answer_choices" in example:
        raise UsageError("The example has a field named 'answer_choices', which templates reserve; rename it.")
    protected = {
        key: value.replace(_SEPARATOR, _PIPE_PLACEHOLDER) if isinstance(value, str) else value
        for key, value in example.items()
    }
    choices = None
    if template.answer_choices is not None:
        choices = _split_parts(_render(template.answer_choices, template.name, protected))
    choices_type = _HiddenAnswer if hidden_answer else _AnswerChoices
    context = {**protected, "answer_choices": None if choices is None else choices_type(choices)}
    parts = _split_parts(_render(template.jinja, template.name, context))
    if len(parts) > 2:
        raise UsageError(f"Template {template.name!r} rendered {len(parts) - 1} '|||' separators; it needs one.")
    target = parts[1] if len(parts) == 2 else None
    return parts[0], target, choices


def make_cloze_context(input_text, mask_token=MASK_TOKEN):
    """The GLM cloze context of a rendered prompt: one `mask_token`, kept where the template put it, else
    appended (promptsource templates put the target right after the prompt).

    Returns:
        str. Raises: UsageError for two or more mask tokens (GLM cloze scoring fills one blank).
    """
    count = input_text.count(mask_token)
    if count == 0:
        return f"{input_text} {mask_token}"
    if count == 1:
        return input_text
    raise UsageError(f"The prompt has {count} {mask_token} tokens; a cloze prompt needs at most one answer slot. "
                     f"Prompt: {input_text!r}")


def make_mlm_context(input_text, mask_token, n):
    """A PET-style masked-LM context: the answer slot (as in make_cloze_context) replaced by `n` mask tokens,
    e.g. mask_token="<mask>" and n = the verbalizer's token count for RoBERTa.

    Returns:
        str. Raises: ValueError for n < 1 or two or more "[MASK]" in the prompt.
    """
    if n < 1:
        raise ValueError(f"n (mask tokens for the answer slot) must be >= 1, got {n}.")
    return make_cloze_context(input_text).replace(MASK_TOKEN, mask_token * n)


# Prompted examples: every row of a split rendered and checked


def _is_empty_field(value):
    """None, NaN, or a blank string: a value with no text to prompt with."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


# How benchmarks (GLUE, QASC, ...) mark a test label they do not publish; the scripts' batches mark
# an example without label the same way.
HIDDEN_LABEL = -1


def _is_hidden_mark(value):
    return isinstance(value, int) and not isinstance(value, bool) and value == HIDDEN_LABEL


_ROWS_LISTED = 10  # then the count of the rest


def build_prompted_examples(dataset, template, task, skip_empty=True, skip_flag="--skip_empty"):
    """Render every row of a dataset into the examples the scripts train and evaluate on.

    A split whose answer fields (answer_fields) are all empty or, for "cls", -1 is hidden (hidden_labels): its
    examples have "target" and "label" None, for predictions only. Rows where the template renders nothing
    (promptsource's conditional templates) are skipped; rows with an empty answer field, an empty rendered input
    or target, or an empty or repeated per-row answer choice are skipped with one warning when `skip_empty`, else
    errors that point to `skip_flag`. For "cls" the target must be one of the choices. An empty input field
    renders as "". Every row is checked before raising; the error lists the first 10 unusable rows by place
    (ORIGIN_COLUMN, e.g. "data/train.csv line 8 (validation split)", else "row i") and cause in words.

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
        field), "empty_input", "empty_target", "bad_choices" (ints) and "labels_hidden": None, or why the
        split's labels are hidden, e.g. "every label_coarse is -1".
    Raises:
        UsageError: a "cls" template without answer choices, a missing column, a template without "|||",
            duplicate or empty fixed answer choices, text in a list field (list_fields: a CSV cell), a template
            that fails to render (first row, with its place), or unusable rows (listed as above).
    """
    check_task(task)
    if task == "cls" and template.answer_choices is None:
        raise UsageError(f"Template {template.name!r} has no answer choices, so it cannot be used for "
                         "classification; choose a prompt listed by --list_prompts.")
    check_template_fields(template, _column_names(dataset))
    _check_list_fields(template, dataset)
    answers = sorted(answer_fields(template))
    counts = dict.fromkeys(("rows", "kept", "not_applicable", "empty_field", "empty_input", "empty_target",
                            "bad_choices"), 0)
    counts["labels_hidden"] = hidden_labels(dataset, answers, task)
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
        raise UsageError(f"{len(problems)} of {counts['rows']} rows cannot be used with prompt {template.name!r}:\n"
                         f"{_list_rows(problems)}\n{_PROBLEM_ADVICE[task]}"
                         + ("" if skip_empty else f" Rows that cannot be rendered can be skipped with {skip_flag}."))
    if skipped:
        logger.warning("Prompt %r: skipped %d row(s) that cannot be rendered (counts: %s):\n%s",
                       template.name, len(skipped), counts, _list_rows(skipped))
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
            raise UsageError(f"Template {template.name!r} reads {field!r} as a list, but the data holds text there "
                             f"({value[:30]!r}...): list fields need a JSON Lines file (.jsonl, the field a JSON "
                             "list), not CSV")


def _column_names(dataset):
    """Columns of a datasets.Dataset, or the keys of the first dict of a list."""
    if hasattr(dataset, "column_names"):
        return dataset.column_names
    return list(dataset[0]) if len(dataset) else []


def _column(dataset, field):
    """The values of one field: a datasets column, or the field of each dict of a list."""
    return dataset[field] if hasattr(dataset, "column_names") else [row[field] for row in dataset]


def hidden_labels(dataset, answers, task):
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
    """One row -> (prompted example, None, None), else (None, kind, cause in words): kind "not_applicable",
    "empty_field", "empty_input", "empty_target", "bad_choices" (skippable) or "label" (an error). Raises
    UsageError where the template fails, whatever the row."""
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
        raise UsageError(f"Template {template.name!r} rendered no '|||' separator; a training template needs "
                         "'input ||| target'.")
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
        if "" in choices or len(set(choices)) != len(choices):  # the label would be ambiguous
            if choice_fields(template):  # this row's own choices
                return None, "bad_choices", f"its answer choices {choices} hold an empty or repeated choice"
            raise UsageError(f"Template {template.name!r}: answer choices {choices} contain an empty or repeated "
                             "choice, so the label would be ambiguous; fix the template's answer_choices.")
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


def group_references(examples):
    """Group generation examples (build_prompted_examples') by "source_key".

    Returns:
        (sources, references_list): the distinct source keys in order of first appearance (list[str]);
        references_list[i] the targets of sources[i] in order (list[str]; [] when hidden: targets None).
    """
    grouped = {}
    for example in examples:
        references = grouped.setdefault(example["source_key"], [])
        if example["target"] is not None:
            references.append(example["target"])
    return list(grouped), list(grouped.values())


# A run's prompted splits (run_cls, run_gen, run_baseline)


@dataclasses.dataclass(frozen=True)
class PromptedSplits:
    """What a script trains and evaluates on. template, prompt_id: the chosen prompt. rows: the
    DatasetDict after few-shot draw / carve and max samples (the rows each example's "row" points
    to). examples: {split: build_prompted_examples' examples, each with its "index" in the split}.
    counts: {split: their counts} (results.json "data"). hidden: the splits whose labels are hidden
    (predictions only). few_shot, carved: sample_few_shot's / carve_validation's record, or None."""

    template: PromptTemplate
    prompt_id: int
    rows: object
    examples: dict
    counts: dict
    hidden: set
    few_shot: Optional[dict]
    carved: Optional[dict]


def load_prompted_splits(args, task, do_train, zero_shot=False):
    """The data flags -> every split rendered and checked with the chosen prompt, before any work.

    Picks the prompt, loads, draws --num_shots rows per class of the prompt's answer fields (sample_few_shot)
    or else carves validation (carve_validation), applies the --max_*_samples, renders each split
    (build_prompted_examples; evaluation rows skip with --skip_eval_rows where the script has it, else with
    --skip_empty), announces hidden splits (hidden_label_splits) and, with `do_train`, a small validation.
    Flags a script lacks (--num_shots, --skip_eval_rows) read as unset.

    Args:
        args: the parsed flags. task: "cls" or "gen". do_train: the run trains.
        zero_shot: the script evaluates an untrained model too (run_cls), so train and validation
            splits are needed only with `do_train`; run_gen and run_baseline always need them (their
            tokenizer and trivial baselines read train).
    Returns:
        PromptedSplits.
    Raises:
        UsageError: no train or validation split where required, a split the prompt leaves empty,
            hidden labels that training needs, and every error of the functions above.
    """
    templates = load_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, task)  # before the data:
    template = select_template(templates, args.prompt_id, args.prompt_name)  # a wrong prompt costs no loading
    raw_datasets = load_raw_datasets(args.dataset_name, args.dataset_config_name, args.train_file,
                                     args.validation_file, args.test_file)
    raw_datasets = adapt_columns(raw_datasets, args.dataset_name)
    few_shot = carved = None
    num_shots = getattr(args, "num_shots", None)
    if num_shots:
        raw_datasets, few_shot = sample_few_shot(raw_datasets, answer_fields(template), num_shots, args.shots_seed,
                                                 draw_validation=args.validation_file is None)
    else:
        raw_datasets, carved = carve_validation(raw_datasets, args.validation_split_percentage, args.data_seed)
    raw_datasets = apply_max_samples(raw_datasets, args.max_train_samples, args.max_eval_samples,
                                     args.max_test_samples)
    if (do_train or not zero_shot) and not {"train", "validation"} <= set(raw_datasets):
        raise UsageError(f"Need train and validation splits, got {list(raw_datasets)}: pass --train_file (validation "
                         "is carved from it)" + (", or --no-do_train to evaluate zero-shot." if zero_shot else "."))
    examples, counts = {}, {}
    for split, dataset in raw_datasets.items():
        skip, flag = args.skip_empty, "--skip_empty"
        if split != "train" and hasattr(args, "skip_eval_rows"):
            skip, flag = args.skip_eval_rows, "--skip_eval_rows"
        examples[split], counts[split] = build_prompted_examples(dataset, template, task, skip, flag)
        if not examples[split]:
            raise UsageError(f"Prompt {template.name!r} leaves no {split} example ({counts[split]}).")
        for index, example in enumerate(examples[split]):
            example["index"] = index
    hidden = hidden_label_splits(counts, do_train)
    if do_train:
        warn_if_small_validation(len(examples["validation"]), args, num_shots)
    return PromptedSplits(template, templates.index(template), raw_datasets, examples, counts, hidden, few_shot, carved)


def load_texts(args):
    """run_pretrain's data: the train and validation rows of the data flags (validation carved from train
    by --data_seed, the --max_*_samples applied), as texts: the --text_column, or the input that the
    selected prompt renders (no answer). Blank texts are left out.

    Returns:
        ({"train": [str], "validation": [str]}, carve_validation's record or None).
    Raises:
        UsageError: no train or validation rows, or a --text_column the data lacks.
    """
    raw_datasets = load_raw_datasets(args.dataset_name, args.dataset_config_name, args.train_file,
                                     args.validation_file, None)
    raw_datasets = adapt_columns(raw_datasets, args.dataset_name)
    raw_datasets, carved = carve_validation(raw_datasets, args.validation_split_percentage, args.data_seed)
    raw_datasets = apply_max_samples(raw_datasets, args.max_train_samples, args.max_eval_samples)
    raw_datasets.pop("test", None)
    if not {"train", "validation"} <= set(raw_datasets):
        raise UsageError(f"Pretraining needs train and validation texts, got splits {list(raw_datasets)}: pass "
                         "--train_file (validation is carved from it).")
    if args.text_column is not None:
        missing = [split for split, dataset in raw_datasets.items() if args.text_column not in dataset.column_names]
        if missing:
            raise UsageError(f"--text_column {args.text_column!r} is not a column of the {missing[0]} data; columns: "
                             f"{raw_datasets[missing[0]].column_names}")
        return {split: [str(text) for text in dataset[args.text_column] if str(text).strip()]
                for split, dataset in raw_datasets.items()}, carved
    template = select_template(load_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, "cls"),
                               args.prompt_id, args.prompt_name)
    logger.info("Texts: the input of prompt %r (no answer).", template.name)
    texts = {}
    for split, dataset in raw_datasets.items():
        rendered = (render_example(template, row)[0] for row in dataset)
        texts[split] = [text for text in rendered if text.strip()]
    return texts, carved


def hidden_label_splits(data_counts, do_train):
    """The splits whose labels are hidden (build_prompted_examples' counts "labels_hidden", e.g. a
    benchmark's test file with -1 on every row), each announced with one warning: they get
    predictions, never metrics or a trivial baseline.

    Raises:
        UsageError: training needs the hidden labels: those of train, or of validation (which picks the
            best step); says which labelled file to pass instead.
    """
    hidden = {split: counts["labels_hidden"] for split, counts in data_counts.items() if counts["labels_hidden"]}
    if do_train and "validation" in hidden:
        raise UsageError(f"The validation labels are hidden ({hidden['validation']}), but training picks its best "
                         "step on validation: pass a labelled --validation_file, or leave it out to carve validation "
                         "from the training data (--validation_split_percentage).")
    if do_train and "train" in hidden:
        raise UsageError(f"The train labels are hidden ({hidden['train']}): training needs labels. Pass a labelled "
                         "--train_file, or --no-do_train to predict with the model as loaded.")
    for split, why in hidden.items():
        logger.warning("%s labels are hidden (%s): writing predictions only, no %s metrics.", split, why, split)
    return set(hidden)


SMALL_VALIDATION = 50  # fewer examples pick the best step nearly at random


def warn_if_small_validation(num_examples, args, num_shots=None):
    """Logs a warning when validation, which picks the best step, has fewer than SMALL_VALIDATION
    examples, saying how to get more (with --num_shots, validation is K drawn examples per class)."""
    if num_examples >= SMALL_VALIDATION:
        return
    if args.max_eval_samples is not None and args.max_eval_samples <= num_examples:
        carved = f", or raise --max_eval_samples (now {args.max_eval_samples})"
    elif args.validation_file:
        carved = ""
    elif num_shots:
        carved = f" (with --num_shots {num_shots}, validation is {num_shots} drawn examples per class)"
    else:
        carved = f", or raise --validation_split_percentage (now {args.validation_split_percentage})"
    logger.warning("Validation has only %d examples: the best step is chosen on them, nearly at random with so few. "
                   "Pass a --validation_file of %d or more labelled rows%s.", num_examples, SMALL_VALIDATION, carved)


def list_prompts(args, task):
    """--list_prompts: every usable template (with its answer choices), the ones left out and why, then
    one rendered example per prompt from the first rows of the data (cls: choices, cloze context and
    gold answer; gen: the GLM input and its target). The data not loading is said in one line, not
    raised: the list itself needs no data."""
    templates = load_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, task)
    print(describe_templates(templates))
    left_out = left_out_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, task)
    for reason, names in left_out.items():
        print(f"left out, {reason}: {len(names)} ({', '.join(names)})")
    try:
        raw_datasets = load_raw_datasets(args.dataset_name, args.dataset_config_name, args.train_file,
                                         args.validation_file, args.test_file)
        raw_datasets = adapt_columns(raw_datasets, args.dataset_name)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"\n(No rendered examples: the data could not be loaded. {err})")
        return None
    rows = next(iter(raw_datasets.values()))
    lacking = [f"{prompt_id} ({', '.join(sorted(template_fields(template) - set(rows.column_names)))})"
               for prompt_id, template in enumerate(templates) if template_fields(template) - set(rows.column_names)]
    if lacking:
        print(f"listed but unusable here, reading fields the data lacks: {len(lacking)}: {'; '.join(lacking)}")
    rows = rows.select(range(min(len(rows), 20)))
    for prompt_id, template in enumerate(templates):
        print(f"\n--- {prompt_id}: {template.name}")
        try:
            examples, _ = build_prompted_examples(rows, template, task)
        except ValueError as err:
            print(f"cannot render this data: {err}")
            continue
        if not examples:
            print("(renders nothing for the first rows)")
        elif task == "cls":
            print(f"answer choices: {examples[0]['choices']}\ncloze context:\n{examples[0]['context']}")
            print(f"gold answer: {examples[0]['target']}")
        else:
            print(f"GLM input:\n{examples[0]['context']}\ntarget: {examples[0]['target']}")
    return None


# The levers' text side (run_cls --calibrate, --num_demonstrations, --search_verbalizers)


# The paper's content-free inputs are "N/A", "" and "[MASK]"; in GLM "[MASK]" is the answer slot
# itself, so only the first two are used.
CONTENT_FREE_INPUTS = ("N/A", "")


def shared_choices(examples, flag):
    """The answer choices every example has (a list). Raises UsageError naming `flag` when they differ:
    the lever needs one set of classes."""
    choices = {tuple(e["choices"]) for split in examples.values() for e in split}
    if len(choices) != 1:
        raise UsageError(f"{flag} needs the same answer choices for every example; this prompt gives "
                         f"{len(choices)} different sets")
    return list(next(iter(choices)))


def content_free_contexts(template, row):
    """The cloze contexts of the template with every input field (the fields read before "|||")
    set to each of CONTENT_FREE_INPUTS; the other fields keep `row`'s values. Returns list[str]."""
    inputs = template_fields(template) - answer_fields(template)
    contexts = []
    for text in CONTENT_FREE_INPUTS:
        input_text, _, _ = render_example(template, {**row, **dict.fromkeys(inputs, text)}, hidden_answer=True)
        contexts.append(make_cloze_context(input_text))
    return contexts


def draw_demonstrations(train_labels, k, seed, split, index):
    """Indices of the training examples shown with example `index` of `split`: k per class (fewer when
    a class has fewer), drawn at random with a generator seeded by (seed, split, index), never the
    example itself (split "train"), in random order. Only training examples are ever drawn.

    Args:
        train_labels: the label of each training example (list[int]).
    Returns:
        list[int] of indices into the training examples.
    """
    rng = random.Random(f"{seed}/{split}/{index}")
    by_class = {}
    for i, label in enumerate(train_labels):
        if not (split == "train" and i == index):
            by_class.setdefault(label, []).append(i)
    drawn = [i for label in sorted(by_class) for i in rng.sample(by_class[label], min(k, len(by_class[label])))]
    rng.shuffle(drawn)
    return drawn


def demonstration_text(example):
    """A training example as a demonstration: its cloze context with the answer in place of [MASK]."""
    return example["context"].replace(MASK_TOKEN, example["target"])


def demonstration_ids(tokenizer, examples, k, seed):
    """Per split, per example, the token ids of its drawn demonstrations (`draw_demonstrations`),
    each `" " + demonstration_text` of a training example. Raises UsageError without a train split."""
    if "train" not in examples:
        raise UsageError("--num_demonstrations draws from the training examples: pass --train_file")
    train = examples["train"]
    encoded = [tokenizer(" " + demonstration_text(e), add_special_tokens=False)["input_ids"] for e in train]
    labels = [e["label"] for e in train]
    return {split: [[encoded[i] for i in draw_demonstrations(labels, k, seed, split, index)]
                    for index in range(len(split_examples))]
            for split, split_examples in examples.items()}  # fmt: skip


def searched_template(template, words):
    """The template with `words` as its answer choices, named "<name> (searched label words)"."""
    return dataclasses.replace(template, name=f"{template.name} (searched label words)",
                               answer_choices=" ||| ".join(words), source="label-word search")


def use_label_words(examples, raw_datasets, template, ids, tokenizer, choice_eop):
    """Every example rendered again with the searched template (a prompt may list its choices):
    context, context_ids, choices, target, and choice_ids the searched token ids (closed by eop only
    with --choice_eop on). `raw_datasets`: the rows the examples were rendered from ("row")."""
    spans = [[i, tokenizer.eop_token_id] if choice_eop else [i] for i in ids]
    for split, split_examples in examples.items():
        for example in split_examples:
            hidden = example["label"] is None
            input_text, target, choices = render_example(template, raw_datasets[split][example["row"]], hidden)
            example.update(context=make_cloze_context(input_text), choices=choices, choice_ids=spans,
                           target=None if hidden else target)
            example["context_ids"] = encode_context(tokenizer, example["context"])


def write_template(template, path):
    """Writes `template` to `path` as a prompts/*.yaml file (for --prompts_dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"name": template.name, "jinja": template.jinja, "answer_choices": template.answer_choices,
             "original_task": True}
    path.write_text(yaml.safe_dump({"templates": [entry]}, sort_keys=False, allow_unicode=True), encoding="utf-8")
