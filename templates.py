"""Prompts (run_cls, run_gen, run_baseline; run_pretrain's `load_texts`): promptsource's and `prompts/*.yaml`
templates, their sandboxed rendering and answer choices, a split's rows turned into checked prompted examples
(`hidden_labels` decides a split without labels), `load_prompted_splits` (the data preamble every script calls)
and the text side of run_cls's levers."""

import dataclasses
import difflib
import functools
import logging
import math
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Optional

import jinja2.meta
import jinja2.nodes
import jinja2.sandbox
import yaml

from data import (HUB_DATASETS, OFFLINE_DATASETS, ORIGIN_COLUMN, OTHER_TASK_LABEL_COLUMNS, draw_demonstrations,
                  hidden_label_splits, load_raw_datasets, load_splits, promptsource_entries, read_prompt_file,
                  warn_if_small_validation)
from glm_utils import encode_context
from modeling_glm import MASK_TOKEN, UsageError

logger = logging.getLogger(__name__)

TASKS = ("cls", "gen")

# Prompt templates


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One prompt: `jinja` renders "input ||| target", `answer_choices` "a ||| b ||| c" (None for generation);
    `source`: "promptsource" or the path of our YAML file."""

    name: str
    jinja: str
    answer_choices: Optional[str]
    original_task: bool
    source: str


def load_templates(dataset_name, dataset_config_name=None, prompts_dir="prompts", task="cls"):
    """The usable templates of a dataset (the prompt id = index): promptsource 0.2.3's (read, never rendered by its
    unsandboxed code), then `<prompts_dir>/<dataset>.yaml`'s (a relative folder: here, else beside this file),
    each sorted by name. Raises UsageError: malformed YAML, duplicate names, none usable, no promptsource."""
    dataset, candidates, local_path = _candidate_templates(dataset_name, dataset_config_name, prompts_dir)
    usable = [t for t in candidates if _why_left_out(t, task, dataset) is None]
    other = "gen" if task == "cls" else "cls"
    if not usable and any(_why_left_out(t, other, dataset) is None for t in candidates):
        kind = {"cls": ("classification", "they have answer choices", "run_cls.py"),
                "gen": ("generation", "no answer choices", "run_gen.py")}
        raise UsageError(f"The prompts of dataset {dataset!r} are {kind[other][0]} prompts ({kind[other][1]}): "
                         f"{kind[other][2]} is the script for them. For {kind[task][0]}, write a prompt with "
                         f"{'answer_choices' if task == 'cls' else 'no answer_choices'} in {local_path} (format: see "
                         "the comment at the top of prompts/fine_foods.yaml).")
    if not usable:
        known = [*HUB_DATASETS, *OFFLINE_DATASETS, *(path.stem for path in local_path.parent.glob("*.yaml"))]
        typo = difflib.get_close_matches(dataset, known, n=1)
        raise UsageError((f"Did you mean --dataset_name {typo[0]}? " if typo else "")
                         + f"No usable {task} templates for dataset {dataset!r} (config {dataset_config_name!r}): "
                         "promptsource has none with original_task true and "
                         f"{'answer choices' if task == 'cls' else 'no answer choices'}, and {local_path} "
                         f"{'adds none' if local_path.is_file() else 'does not exist'}. Write templates there "
                         "(format: see the comment at the top of prompts/fine_foods.yaml).")
    return usable


def left_out_templates(dataset_name, dataset_config_name=None, prompts_dir="prompts", task="cls"):
    """The templates load_templates leaves out (--list_prompts): {reason in words: [names]}, reasons in a fixed
    order, only those that occur."""
    dataset, candidates, _ = _candidate_templates(dataset_name, dataset_config_name, prompts_dir)
    left_out = {}
    for template in candidates:
        reason = _why_left_out(template, task, dataset)
        if reason is not None:
            left_out.setdefault(reason, []).append(template.name)
    return left_out


def _candidate_templates(dataset_name, dataset_config_name, prompts_dir):
    """(the short dataset name, every template: promptsource's, then ours, each sorted by name; our file's path)."""
    dataset_name = _short_dataset_name(dataset_name)
    prompts_dir = Path(prompts_dir)
    if not (prompts_dir.is_absolute() or prompts_dir.is_dir()):
        prompts_dir = Path(__file__).resolve().parent / prompts_dir
    local_path = prompts_dir / f"{dataset_name}.yaml"
    theirs = [_as_template(e, "promptsource") for e in promptsource_entries(dataset_name, dataset_config_name)]
    ours = [_as_template(e, str(local_path)) for e in read_prompt_file(local_path)] if local_path.is_file() else []
    for template in ours:
        template_fields(template)  # raises on a jinja syntax error, naming the template
    candidates = sorted(theirs, key=lambda t: t.name) + sorted(ours, key=lambda t: t.name)
    duplicates = sorted(name for name, count in Counter(t.name for t in candidates).items() if count > 1)
    if duplicates:
        raise UsageError(f"Duplicate template name(s) {duplicates}: rename the local one(s) in prompts/.")
    return dataset_name, candidates, local_path


def _short_dataset_name(dataset_name):
    """'CogComp/trec' -> 'trec'; other names unchanged."""
    return next((short for short, repo in HUB_DATASETS.items() if repo == dataset_name), dataset_name)


def prompt_file_name(dataset_name):
    """The file of a prompts folder that load_templates reads for a dataset: "<short name>.yaml"."""
    return f"{_short_dataset_name(dataset_name)}.yaml"


def _as_template(entry, source):
    """A PromptTemplate of a source's entry (data.promptsource_entries', data.read_prompt_file's)."""
    choices = entry.get("answer_choices")
    return PromptTemplate(str(entry["name"]), str(entry["jinja"]), None if choices is None else str(choices),
                          bool(entry.get("original_task", True)), source)


def _why_left_out(template, task, dataset_name):
    """Why a template is no usable `task` prompt, in words; None when it is."""
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
    """Pick one template by id (index in `templates`) or by name; with neither, id 0. Raises UsageError: both
    given, an unknown id or name (listing the valid "id: name" pairs), or an empty list."""
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
    return "\n".join(f"{i}: {t.name} [{t.source}]" + (f" choices: {t.answer_choices}" if t.answer_choices else "")
                     for i, t in enumerate(templates))


# Rendering (sandboxed: templates can read the example, never reach Python internals)

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
_ENV.globals["zip"] = zip
# promptsource's filters; `choice` draws with Python's `random`, which accelerate's set_seed seeds.
_ENV.filters.update(highlight=lambda text: "<span style='color: #F08080'>" + text + "</span>", choice=random.choice,
                    most_frequent=lambda items: statistics.multimode(items) or None)
_SEPARATOR = "|||"
# Stands in for "|||" inside example values while rendering, so only the template's own separator splits input
# from target (as in promptsource).
_PIPE_PLACEHOLDER = "\ue000PIPES\ue000"


@functools.lru_cache(maxsize=256)
def _compile(source, template_name):
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise UsageError(f"Template {template_name!r} has a jinja syntax error: {err}") from err


def template_fields(template):
    """The example fields a template reads (set[str]). Raises UsageError on a jinja syntax error."""
    fields = set()
    for source in filter(None, (template.jinja, template.answer_choices)):
        try:
            fields |= jinja2.meta.find_undeclared_variables(_ENV.parse(source))
        except jinja2.TemplateSyntaxError as err:
            raise UsageError(f"Template {template.name!r} has a jinja syntax error: {err}") from err
    return fields - {"answer_choices"} - set(_ENV.globals)


def choice_fields(template):
    """The fields the answer choices read: none for fixed verbalizers, some when each example has its own."""
    return template_fields(dataclasses.replace(template, jinja=""))


# Filters that read their input as a list (not length, first...: text has those too).
_LIST_FILTERS = {"join", "sort", "unique", "map", "select", "reject"}


def list_fields(template):
    """The fields a template reads as lists: indexed by a number, looped over, or piped into a list filter."""
    found = set()
    for source in filter(None, (template.jinja, template.answer_choices)):
        for node in _ENV.parse(source).find_all((jinja2.nodes.Getitem, jinja2.nodes.Filter, jinja2.nodes.For)):
            if isinstance(node, jinja2.nodes.For):
                target = node.iter
            elif isinstance(node, jinja2.nodes.Filter):
                target = node.node if node.name in _LIST_FILTERS else None
            else:
                numbered = isinstance(node.arg, jinja2.nodes.Const) and isinstance(node.arg.value, int)
                target = node.node if numbered else None
            if isinstance(target, jinja2.nodes.Name):
                found.add(target.name)
    return found & template_fields(template)


def answer_fields(template):
    """The fields read after the template's first "|||" (the label's), a subset of template_fields."""
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
    """The answer choices as a template reads them: a label must be a whole number in 0..len-1 (a list would read
    -1, the mark of a hidden label, as the last choice; jinja would make a text label undefined). For a row whose
    label is `hidden` any index gives "" (only the prompt is used)."""

    def __init__(self, choices, hidden):
        super().__init__(choices)
        self.hidden = hidden

    def __getitem__(self, index):
        if isinstance(index, slice):
            return super().__getitem__(index)
        if self.hidden:
            return ""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise LabelError(index, len(self))
        return super().__getitem__(index)


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
    """Render one example (a dict) in the sandbox: (input_text, target_text or None without "|||", answer_choices:
    list[str] or None), each stripped; "|||" inside example values never splits; `hidden_answer`: any
    `answer_choices[i]` gives "". Raises LabelError (a ValueError) for a label that is no index of the choices;
    UsageError where the sandbox refuses the template, a field is missing or unusable, the example has a key
    `answer_choices`, or the output has more than one "|||"."""
    if "answer_choices" in example:
        raise UsageError("The example has a field named 'answer_choices', which templates reserve; rename it.")
    protected = {key: value.replace(_SEPARATOR, _PIPE_PLACEHOLDER) if isinstance(value, str) else value
                 for key, value in example.items()}
    choices = None
    if template.answer_choices is not None:
        choices = _split_parts(_render(template.answer_choices, template.name, protected))
    context = {**protected, "answer_choices": None if choices is None else _AnswerChoices(choices, hidden_answer)}
    parts = _split_parts(_render(template.jinja, template.name, context))
    if len(parts) > 2:
        raise UsageError(f"Template {template.name!r} rendered {len(parts) - 1} '|||' separators; it needs one.")
    return parts[0], parts[1] if len(parts) == 2 else None, choices


def make_cloze_context(input_text, mask_token=MASK_TOKEN):
    """The GLM cloze context of a rendered prompt: one `mask_token`, kept where the template put it, else appended
    (promptsource puts the target right after the prompt). Raises UsageError for two or more (one blank)."""
    count = input_text.count(mask_token)
    if count == 0:
        return f"{input_text} {mask_token}"
    if count == 1:
        return input_text
    raise UsageError(f"The prompt has {count} {mask_token} tokens; a cloze prompt needs at most one answer slot. "
                     f"Prompt: {input_text!r}")


def make_mlm_context(input_text, mask_token, n):
    """A PET-style masked-LM context: the answer slot (as in make_cloze_context) replaced by `n` mask tokens (e.g.
    RoBERTa's "<mask>" times the verbalizer's token count). Raises ValueError for n < 1 or two "[MASK]"."""
    if n < 1:
        raise ValueError(f"n (mask tokens for the answer slot) must be >= 1, got {n}.")
    return make_cloze_context(input_text).replace(MASK_TOKEN, mask_token * n)


# Prompted examples: every row of a split rendered and checked

# How benchmarks (GLUE, QASC, ...) mark a test label they do not publish; the scripts' batches mark an example
# without label the same way.
HIDDEN_LABEL = -1


def _is_empty_field(value):
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_hidden_mark(value):
    return isinstance(value, int) and not isinstance(value, bool) and value == HIDDEN_LABEL


def build_prompted_examples(dataset, template, task, skip_empty=True, skip_flag="--skip_empty"):
    """Render every row of a split (a datasets.Dataset or list of dicts) into the examples scripts train on. In a
    split whose labels are hidden (hidden_labels) "target" and "label" are None. Rows with an empty answer field,
    input or target, or a bad per-row answer choice are skipped with one warning when `skip_empty`, else errors
    pointing to `skip_flag`; the error lists the first 10 unusable rows by place (ORIGIN_COLUMN, else "row i").

    Returns:
        (examples, counts). examples: dicts with "context" (make_cloze_context), "input", "target", "choices"
        (None for gen), "label" (target's index in choices), "source_key" (the input), "row" (index of the dataset
        row), "origin", "index" (among the examples). counts: "rows", "kept", "not_applicable" (rendered nothing),
        "empty_field", "empty_input", "empty_target", "bad_choices", "labels_hidden" (None, or why).
    Raises:
        UsageError: a "cls" template without answer choices, a missing column, no "|||", bad fixed answer choices,
            text in a list field (a CSV cell), a template that fails to render, or unusable rows.
    """
    if task == "cls" and template.answer_choices is None:
        raise UsageError(f"Template {template.name!r} has no answer choices, so it cannot be used for "
                         "classification; choose a prompt listed by --list_prompts.")
    column_names = dataset.column_names if hasattr(dataset, "column_names") else list(dataset[0] if dataset else {})
    missing = sorted(template_fields(template) - set(column_names))
    if missing:
        unlabelled = (" A file whose labels are hidden still needs the column, with every cell empty (or -1 for "
                      "integer labels)." if set(missing) <= answer_fields(template) else "")
        raise UsageError(f"Template {template.name!r} ({template.source}) reads field(s) {missing} that the dataset "
                         f"lacks; available columns: {sorted(set(column_names) - {ORIGIN_COLUMN})}. Choose another "
                         f"prompt (--list_prompts), or rename the columns of your files to match.{unlabelled}")
    for field in sorted(list_fields(template)):  # a CSV cell holds text, never a list
        value = next((row[field] for row in dataset if not _is_empty_field(row[field])), None)
        if isinstance(value, str):
            raise UsageError(f"Template {template.name!r} reads {field!r} as a list, but the data holds text there "
                             f"({value[:30]!r}...): list fields need a JSON Lines file (.jsonl, the field a JSON "
                             "list), not CSV")
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
            examples.append({**prompted, "row": row, "origin": origin, "index": len(examples)})
        elif kind == "not_applicable":
            counts[kind] += 1
        elif kind != "label" and skip_empty:
            counts[kind] += 1
            skipped.append(f"{origin}: {cause}")
        else:
            problems.append(f"{origin}: {cause}")
    counts["kept"] = len(examples)
    if problems:
        advice = ("Integer labels index the answer choices from 0; word labels must be one of them. Fix these rows "
                  "in the file (a test file whose labels are hidden has -1 or an empty label on every row), or "
                  "choose another prompt (--list_prompts)." if task == "cls" else
                  "Fix these rows in the file, or choose another prompt (--list_prompts).")
        raise UsageError(f"{len(problems)} of {counts['rows']} rows cannot be used with prompt {template.name!r}:\n"
                         f"{_list_rows(problems)}\n{advice}"
                         + ("" if skip_empty else f" Rows that cannot be rendered can be skipped with {skip_flag}."))
    if skipped:
        logger.warning("Prompt %r: skipped %d row(s) that cannot be rendered (counts: %s):\n%s",
                       template.name, len(skipped), counts, _list_rows(skipped))
    return examples, counts


def _list_rows(lines, listed=10):
    more = [f"  ... and {len(lines) - listed} more"] if len(lines) > listed else []
    return "\n".join([f"  {line}" for line in lines[:listed]] + more)


def hidden_labels(dataset, answers, task):
    """None when the split has a label; else why its labels are hidden ("every label is -1")."""
    if not answers or not len(dataset):
        return None
    marks = set()
    for field in answers:
        for value in (row[field] for row in dataset):
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
    prompted = {"context": context, "input": input_text, "target": None if hidden else target,
                "choices": choices if task == "cls" else None, "label": label, "source_key": input_text}
    return prompted, None, None


def group_references(examples):
    """Generation examples (build_prompted_examples') grouped by "source_key": (the distinct keys in order of first
    appearance, references_list[i] the targets of key i in order; [] when hidden)."""
    grouped = {}
    for example in examples:
        references = grouped.setdefault(example["source_key"], [])
        if example["target"] is not None:
            references.append(example["target"])
    return list(grouped), list(grouped.values())


# A run's prompted splits (run_cls, run_gen, run_baseline)


@dataclasses.dataclass(frozen=True)
class PromptedSplits:
    """What a script trains and evaluates on: the prompt, the rows (load_splits'), per split the examples and
    counts of build_prompted_examples, the hidden splits, the few-shot and carve records."""

    template: PromptTemplate
    prompt_id: int
    rows: object
    examples: dict
    counts: dict
    hidden: set
    few_shot: Optional[dict]
    carved: Optional[dict]


def load_prompted_splits(args, task, do_train, zero_shot=False):
    """The data flags -> PromptedSplits: the prompt (chosen before the data is read), the rows (load_splits, few-shot
    by the prompt's answer fields), every split rendered and checked. `zero_shot`: the script also evaluates an
    untrained model (run_cls), so needs train and validation only with `do_train`. Raises UsageError for missing
    splits, a split the prompt leaves empty, hidden labels that training needs, and as the functions it calls."""
    templates = load_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, task)
    template = select_template(templates, args.prompt_id, args.prompt_name)
    raw_datasets, few_shot, carved = load_splits(args, answer_fields(template))
    if (do_train or not zero_shot) and not {"train", "validation"} <= set(raw_datasets):
        raise UsageError(f"Need train and validation splits, got {list(raw_datasets)}: pass --train_file (validation "
                         "is carved from it)" + (", or --no-do_train to evaluate zero-shot." if zero_shot else "."))
    examples, counts = {}, {}
    for split, dataset in raw_datasets.items():
        evaluated = split != "train" and hasattr(args, "skip_eval_rows")  # the script's own flag for them
        skip, flag = (args.skip_eval_rows, "--skip_eval_rows") if evaluated else (args.skip_empty, "--skip_empty")
        examples[split], counts[split] = build_prompted_examples(dataset, template, task, skip, flag)
        if not examples[split]:
            raise UsageError(f"Prompt {template.name!r} leaves no {split} example ({counts[split]}).")
    hidden = hidden_label_splits(counts, do_train)
    if do_train:
        warn_if_small_validation(len(examples["validation"]), args, getattr(args, "num_shots", None))
    return PromptedSplits(template, templates.index(template), raw_datasets, examples, counts, hidden, few_shot, carved)


def load_texts(args):
    """run_pretrain's data: ({"train": [str], "validation": [str]}, the carve's record or None), the texts of
    load_splits' rows: the --text_column, else the input the selected prompt renders; blank ones left out.
    Raises UsageError for no train or validation rows, or a --text_column the data lacks."""
    raw_datasets, _, carved = load_splits(args)
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
    return {split: [text for text in (render_example(template, row)[0] for row in dataset) if text.strip()]
            for split, dataset in raw_datasets.items()}, carved


def list_prompts(args, task):
    """--list_prompts: the usable templates, those left out and why, then one example per prompt rendered from the
    first rows of the data (data that does not load is said in one line, not raised)."""
    templates = load_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, task)
    print(describe_templates(templates))
    left_out = left_out_templates(args.dataset_name, args.dataset_config_name, args.prompts_dir, task)
    for reason, names in left_out.items():
        print(f"left out, {reason}: {len(names)} ({', '.join(names)})")
    try:
        raw_datasets = load_raw_datasets(args.dataset_name, args.dataset_config_name, args.train_file,
                                         args.validation_file, args.test_file)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"\n(No rendered examples: the data could not be loaded. {err})")
        return
    rows = next(iter(raw_datasets.values()))
    missing = [sorted(template_fields(template) - set(rows.column_names)) for template in templates]
    lacking = [f"{prompt_id} ({', '.join(fields)})" for prompt_id, fields in enumerate(missing) if fields]
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


# The levers' text side (run_cls --calibrate, --num_demonstrations, --search_verbalizers)

# The paper's content-free inputs are "N/A", "" and "[MASK]"; in GLM "[MASK]" is the answer slot itself.
CONTENT_FREE_INPUTS = ("N/A", "")


def shared_choices(examples, flag):
    """The answer choices every example has. Raises UsageError naming `flag` when they differ."""
    choices = {tuple(e["choices"]) for split in examples.values() for e in split}
    if len(choices) != 1:
        raise UsageError(f"{flag} needs the same answer choices for every example; this prompt gives "
                         f"{len(choices)} different sets")
    return list(next(iter(choices)))


def content_free_contexts(template, row):
    """The cloze contexts of the template with every input field (read before "|||") set to each of
    CONTENT_FREE_INPUTS, the other fields as in `row`. Returns list[str]."""
    inputs = template_fields(template) - answer_fields(template)
    return [make_cloze_context(render_example(template, {**row, **dict.fromkeys(inputs, text)}, hidden_answer=True)[0])
            for text in CONTENT_FREE_INPUTS]


def demonstration_ids(tokenizer, examples, k, seed):
    """Per split, per example, the token ids of its demonstrations (data.draw_demonstrations), each " " + a
    training example's cloze context with its answer in place of [MASK]. Raises UsageError without a train split."""
    if "train" not in examples:
        raise UsageError("--num_demonstrations draws from the training examples: pass --train_file")
    train = examples["train"]
    encoded = [tokenizer(" " + e["context"].replace(MASK_TOKEN, e["target"]), add_special_tokens=False)["input_ids"]
               for e in train]
    rows_by_class = {}
    for row, example in enumerate(train):
        rows_by_class.setdefault(example["label"], []).append(row)
    return {split: [[encoded[i] for i in draw_demonstrations(rows_by_class, k, seed, split, index)]
                    for index in range(len(split_examples))]
            for split, split_examples in examples.items()}  # fmt: skip


def searched_template(template, words):
    """The template with `words` as its answer choices, named "<name> (searched label words)"."""
    return dataclasses.replace(template, name=f"{template.name} (searched label words)",
                               answer_choices=" ||| ".join(words), source="label-word search")


def use_label_words(examples, raw_datasets, template, ids, tokenizer, choice_eop):
    """Every example rendered again from its row with the searched template: context, context_ids, choices,
    target, and choice_ids the searched token ids (closed by eop only with --choice_eop)."""
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
