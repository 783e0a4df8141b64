"""Prompt templates: promptsource and `prompts/*.yaml`, rendered in a jinja sandbox.

`load_templates` lists the usable templates of a dataset, `select_template` picks one by id or
name, `render_example` renders one example into (input, target, answer choices), and
`make_cloze_context` / `make_mlm_context` put GLM's `[MASK]` (or a masked LM's masks) where the
answer goes. `template_fields`, `answer_fields` and `check_template_fields` tell which dataset
fields a template reads. Turning a whole split into prompted examples, with its row checks, is
prompted.py's.
"""

import functools
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

from data import HUB_DATASETS, ORIGIN_COLUMN, OTHER_TASK_LABEL_COLUMNS
from modeling_glm import UsageError

# The GLM answer slot in a prompt, and where templates put it (see make_cloze_context).
GLM_MASK = "[MASK]"

TASKS = ("cls", "gen")

# Prompt templates
# ---------------------------------------------------------------------------------------


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

    Sources: promptsource 0.2.3's templates for (dataset_name, dataset_config_name) (only
    their fields are read; promptsource's own unsandboxed rendering is never used), then
    every template in `<prompts_dir>/<dataset_name>.yaml` (see prompts/*.yaml for the
    format). A relative `prompts_dir` is looked up in the working directory, then next to
    this file.

    Usable: original_task true, and for task "cls" with answer_choices, for "gen" without.
    For "cls", templates that read a label column of another task
    (OTHER_TASK_LABEL_COLUMNS, e.g. trec's `label_fine`) are left out. Order: promptsource
    templates sorted by name, then local ones sorted by name.

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
        raise UsageError(
            f"The prompts of dataset {dataset!r} are {kind[other_task][0]} prompts ({kind[other_task][1]}): "
            f"{script[other_task]} is the script for them. For {kind[task][0]}, write a prompt with "
            f"{'answer_choices' if task == 'cls' else 'no answer_choices'} in {local_path} (format: see the comment "
            "at the top of prompts/fine_foods.yaml)."
        )
    if not usable:
        raise UsageError(
            f"No usable {task} templates for dataset {dataset!r} (config "
            f"{dataset_config_name!r}): promptsource has none with original_task true and "
            f"{'answer choices' if task == 'cls' else 'no answer choices'}, and {local_path} "
            f"{'adds none' if local_path.is_file() else 'does not exist'}. Write templates there "
            "(format: see the comment at the top of prompts/fine_foods.yaml)."
        )
    return usable


def left_out_templates(dataset_name, dataset_config_name=None, prompts_dir="prompts", task="cls"):
    """The templates of a dataset that load_templates leaves out, by reason (what --list_prompts
    says under the usable ones).

    Returns:
        dict {reason in words: [template names]}, reasons in a fixed order, only those that occur.
    """
    check_task(task)
    candidates, _ = _candidate_templates(dataset_name, dataset_config_name, prompts_dir)
    left_out = {}
    for template in candidates:
        reason = _why_left_out(template, task, _short_dataset_name(dataset_name))
        if reason is not None:
            left_out.setdefault(reason, []).append(template.name)
    return left_out


def _candidate_templates(dataset_name, dataset_config_name, prompts_dir):
    """Every template of the dataset, usable or not: (promptsource's then the local file's, the
    local file's path)."""
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
            raise UsageError(
                "promptsource is not installed; install it with: "
                "pip install --no-deps --ignore-requires-python promptsource==0.2.3"
            ) from err
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
    """Pick one template by id (index in `templates`) or by name.

    With neither given, the first template (id 0) is used; for trec that is
    pick_the_best_descriptor (see load_templates for the order).

    Raises:
        UsageError: both given, an unknown id or name (the message lists the valid
            "id: name" pairs), or an empty list.
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


# ---------------------------------------------------------------------------------------
# Rendering (sandboxed: templates can read the example, never reach Python internals)
# ---------------------------------------------------------------------------------------


def _highlight(text):
    """promptsource's `highlight` filter: wrap text in a coloured HTML span."""
    return "<span style='color: #F08080'>" + text + "</span>"


def _choice(choices):
    """promptsource's `choice` filter: one element at random (Python's `random`, so
    accelerate's set_seed makes it reproducible)."""
    return random.choice(choices)


def _most_frequent(items):
    """promptsource's `most_frequent` filter: every item with the highest count, in first
    appearance order; None for an empty input."""
    if not items:
        return None
    counts = Counter(items)
    top = max(counts.values())
    return [item for item, count in counts.items() if count == top]


def _make_environment():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.globals["zip"] = zip
    env.filters.update(highlight=_highlight, choice=_choice, most_frequent=_most_frequent)
    return env


_ENV = _make_environment()
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


# Filters that read their input as a list.
_LIST_FILTERS = {"join", "sort", "unique", "map", "select", "reject"}  # not length, first...: text has those too


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
    """Check before training that the dataset has every field the template reads.

    Raises:
        UsageError: names the missing field(s) and the available columns; when only answer
            fields are missing (a test file without labels), says how to mark hidden labels.
    """
    missing = sorted(template_fields(template) - set(column_names))
    if missing:
        columns = sorted(set(column_names) - {ORIGIN_COLUMN})
        unlabelled = (
            " A file whose labels are hidden still needs the column, with every cell empty (or -1 for "
            "integer labels)."
            if set(missing) <= answer_fields(template) else ""
        )
        raise UsageError(
            f"Template {template.name!r} ({template.source}) reads field(s) {missing} that the "
            f"dataset lacks; available columns: {columns}. Choose another prompt "
            f"(--list_prompts), or rename the columns of your files to match.{unlabelled}"
        )


def answer_fields(template):
    """The fields the answer (the part after "|||") reads, e.g. {"label_coarse"} for
    "{{text}} ||| {{answer_choices[label_coarse]}}": the fields read after the first "|||"
    of the template's text, in the order jinja parses it.

    Returns:
        set[str], a subset of template_fields(template).
    """
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
        raise UsageError(
            f"Template {template_name!r} was refused by the sandbox ({err}): templates may only "
            "read the example's fields; rewrite it or choose another prompt."
        ) from err
    except (jinja2.TemplateError, TypeError, KeyError, IndexError, ValueError) as err:
        raise UsageError(
            f"Template {template_name!r} failed to render: {err}. Check that the fields have the "
            "types the template expects."
        ) from err


def _split_parts(rendered):
    return [part.replace(_PIPE_PLACEHOLDER, _SEPARATOR).strip() for part in rendered.split(_SEPARATOR)]


def render_example(template, example, hidden_answer=False):
    """Render one example with a template, in a sandbox.

    The answer choices jinja is rendered with the example and split on "|||"; the template
    is rendered with the example plus `answer_choices` and split on "|||" into input and
    target; every piece is stripped. "|||" inside example values never splits anything.
    `answer_choices[i]` needs a whole number i in 0..len-1 (never wrapped from the end).
    With `hidden_answer` (a row whose label is hidden) any `answer_choices[i]` gives "": only
    the prompt is used.

    Args:
        template: PromptTemplate. example: dict of field -> value. hidden_answer: bool.
    Returns:
        (input_text: str, target_text: str or None when the template has no "|||" part,
        answer_choices: list[str] or None). A template that renders to nothing for this
        example (promptsource's conditional templates) gives ("", None, choices).
    Raises:
        LabelError (a ValueError): answer_choices indexed with a negative, too large or
            non-integer value.
        UsageError: the sandbox refused the template (e.g. access to `__class__`), a field
            is missing or unusable, the example has a key `answer_choices`, or the output
            has more than one "|||".
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


def make_cloze_context(input_text, mask_token=GLM_MASK):
    """The GLM cloze context of a rendered prompt: the prompt with exactly one mask token.

    Exactly one `mask_token` in the text: kept where the template put it. None: " " +
    mask_token is appended, because promptsource templates put the target right after the
    prompt, so the blank the model fills is at the end. Two or more: ValueError, since GLM
    cloze scoring fills one blank.

    Returns:
        str. Raises: UsageError for two or more mask tokens.
    """
    count = input_text.count(mask_token)
    if count == 0:
        return f"{input_text} {mask_token}"
    if count == 1:
        return input_text
    raise UsageError(
        f"The prompt has {count} {mask_token} tokens; a cloze prompt needs at most one answer slot. "
        f"Prompt: {input_text!r}"
    )


def make_mlm_context(input_text, mask_token, n):
    """A PET-style masked-LM context: the answer slot replaced by `n` mask tokens.

    The slot is placed as in make_cloze_context (the template's "[MASK]", else the end).
    For RoBERTa pass mask_token="<mask>" and n = the verbalizer's token count.

    Returns:
        str. Raises: ValueError for n < 1 or two or more "[MASK]" in the prompt.
    """
    if n < 1:
        raise ValueError(f"n (mask tokens for the answer slot) must be >= 1, got {n}.")
    return make_cloze_context(input_text).replace(GLM_MASK, mask_token * n)
