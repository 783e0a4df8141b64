"""Specification of data.py: one behaviour per test, expected values worked out by hand."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
from conftest import write

from data import (
    ORIGIN_COLUMN,
    TREC_COARSE_LABELS,
    TREC_FINE_LABELS,
    TREC_HUB_COARSE_LABELS,
    TREC_HUB_FINE_LABELS,
    adapt_columns,
    apply_max_samples,
    carve_validation,
    load_local_file,
    load_raw_datasets,
    resolve_dataset_name,
    sample_few_shot,
)
from templates import (
    load_templates,
    render_example,
    select_template,
)

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
PROMPTS = REPO / "prompts"



@needs_shared
def test_trec_local_files_carve_a_deterministic_disjoint_validation_split():
    files = {"train_file": SHARED_DATA / "trec/train.csv", "test_file": SHARED_DATA / "trec/test.csv"}
    loaded = load_raw_datasets("trec", **files)
    first, record = carve_validation(loaded, 10, data_seed=42)
    again, _ = carve_validation(loaded, 10, data_seed=42)
    other_seed, _ = carve_validation(loaded, 10, data_seed=7)

    assert list(first) == ["train", "validation", "test"]
    # 10% of 5444 rows is 544.4: datasets rounds the test share up.
    assert (len(first["train"]), len(first["validation"]), len(first["test"])) == (4899, 545, 499)
    assert first["validation"]["text"] == again["validation"]["text"]
    assert first["validation"]["text"] != other_seed["validation"]["text"]
    full = load_local_file(SHARED_DATA / "trec/train.csv")
    assert record["validation_split_percentage"] == 10 and record["data_seed"] == 42
    assert first["validation"]["text"] == [full[row]["text"] for row in record["validation_rows"]]
    assert Counter(first["train"]["text"]) + Counter(first["validation"]["text"]) == Counter(full["text"])
    assert first["train"][0].keys() == {"text", "label_coarse", "label_fine", ORIGIN_COLUMN}
    # Each carved row still names its line in train.csv (the file has no quoted line breaks:
    # data row i is on line i + 2), and the split it ended up in.
    path = SHARED_DATA / "trec/train.csv"
    for row in first["validation"].select(range(50)):
        line = int(row[ORIGIN_COLUMN].removeprefix(f"{path} line ").removesuffix(" (validation split)"))
        assert full[line - 2]["text"] == row["text"]


@needs_shared
def test_local_trec_csv_is_already_in_the_promptsource_encoding():
    raw = datasets.DatasetDict({"test": load_local_file(SHARED_DATA / "trec/test.csv")})
    assert adapt_columns(raw, "trec") is raw
    assert raw["test"].column_names == ["text", "label_coarse", "label_fine", ORIGIN_COLUMN]
    # "How far is it from Denver to Aspen ?" NUM, "What country is Modesto , California in ?"
    # LOC, "Who was Galileo ?" HUM: ids 4, 5, 3 in the order DESC, ENTY, ABBR, HUM, NUM, LOC.
    assert raw["test"]["label_coarse"][:3] == [4, 5, 3]


def test_apply_max_samples_keeps_the_first_rows():
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [5, 6, 7]})})
    sliced = apply_max_samples(raw, max_train_samples=2, max_test_samples=1)
    assert sliced["train"]["x"] == [5, 6]
    assert list(sliced) == ["train"]


def test_malformed_csv_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "bad.csv", 'text,label\n"fine, quoted",0\nthree,fields,here\n')
    with pytest.raises(ValueError, match=r"bad\.csv, line 3 \(data row 2\): 3 fields where the header has 2"):
        load_local_file(path)


def test_csv_integer_columns_become_ints_and_empty_cells_stay_strings(tmp_path):
    dataset = load_local_file(write(tmp_path / "ok.csv", "text,label\nhi,1\n,0\n"))
    assert dataset["label"] == [1, 0]
    assert dataset["text"] == ["hi", ""]


def test_an_empty_cell_in_an_integer_column_is_a_missing_value_not_text(tmp_path):
    dataset = load_local_file(write(tmp_path / "ok.csv", "text,label,note\nNA,1,x\nNone,,-3\nnull,-1,\n"))
    assert dataset["label"] == [1, None, -1]
    # Words pandas would read as missing stay words; a column with any non-integer stays text.
    assert dataset["text"] == ["NA", "None", "null"]
    assert dataset["note"] == ["x", "-3", ""]


def test_local_files_give_typed_columns_and_every_key_of_any_record(tmp_path):
    for name, text in (("a.csv", "x,y\n1,b\n"), ("a.jsonl", '{"x": 1, "y": "b"}\n')):
        dataset = load_local_file(write(tmp_path / name, text))
        assert (dataset["x"], dataset["y"], dataset.features["x"].dtype) == ([1], ["b"], "int64")
    # A key only a later record has is a column too (None where a record lacks it).
    dataset = load_local_file(write(tmp_path / "b.jsonl", '{"x": 1}\n{"x": 2, "z": [1, 2]}\n'))
    assert dataset.column_names == ["x", "z", ORIGIN_COLUMN] and dataset["z"] == [None, [1, 2]]


def test_each_csv_row_keeps_the_line_it_starts_on(tmp_path):
    path = write(tmp_path / "rows.csv", 'text,label\n"two\nlines",0\n\nlast\u2028word,1\n')
    dataset = load_local_file(path)
    assert dataset["text"] == ["two\nlines", "last\u2028word"]  # U+2028 ends no csv line
    assert dataset[ORIGIN_COLUMN] == [f"{path} line 2", f"{path} line 5"]


def test_each_json_record_keeps_its_line_or_item(tmp_path):
    lines = write(tmp_path / "rows.jsonl", '{"a": 1,\n "b": "x"}\n\n{"a": 2, "b": "y"}\n')
    items = write(tmp_path / "rows.json", '[{"a": 1}, {"a": 2}]')
    assert load_local_file(lines)[ORIGIN_COLUMN] == [f"{lines} line 1", f"{lines} line 4"]
    assert load_local_file(items)[ORIGIN_COLUMN] == [f"{items} item 1", f"{items} item 2"]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a", "label": 0}\n\n{"text": "b", "label": }\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3 column 24: Expecting value"):
        load_local_file(path)


def test_a_json_record_without_a_key_has_none_there(tmp_path):
    dataset = load_local_file(write(tmp_path / "rows.json", '[{"text": "a", "label": 0}, {"text": "b"}]'))
    assert dataset["label"] == [0, None]


def test_a_json_field_mixing_text_and_other_kinds_names_the_field_and_line(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"mr": "name[A]", "n": 1}\n{"mr": null, "n": 2.5}\n{"mr": {"name": "B"}, "n": 3}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 3: field 'mr' is object .* but text in line 1"):
        load_local_file(path)


def test_a_json_record_that_is_no_object_is_refused_with_its_line(tmp_path):
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 2: expected a JSON object \(one per record\), got list"):
        load_local_file(write(tmp_path / "rows.jsonl", '{"a": 1}\n[1, 2]\n'))


def test_json_file_with_one_object_per_line_is_read(tmp_path):
    dataset = load_local_file(write(tmp_path / "rows.json", '{"a": 1}\n{"a": 2}\n'))
    assert dataset["a"] == [1, 2]


def test_a_csv_header_needs_distinct_names(tmp_path):
    for header in ("a,a", "a,b,"):
        with pytest.raises(ValueError, match=r"header \[.*\] must give every column its own non-empty name"):
            load_local_file(write(tmp_path / "h.csv", f"{header}\n" + ",".join("1" * len(header.split(","))) + "\n"))


def test_a_file_name_is_not_a_pattern(tmp_path):
    write(tmp_path / "train_old.csv", "a\n1\n")
    assert load_local_file(write(tmp_path / "train*.csv", "a\n2\n"))["a"] == [2]
    assert load_local_file(write(tmp_path / "odd[1].csv", "a\n3\n"))["a"] == [3]


def test_a_file_without_records_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"head\.csv holds no records"):
        load_local_file(write(tmp_path / "head.csv", "text,label\n"))


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'\.tsv'.*\.csv, \.json, \.jsonl"):
        load_local_file(write(tmp_path / "data.tsv", "a\tb\n"))


def test_every_split_names_the_file_line_and_split_of_its_rows(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\n" + "".join(f"q{i},0\n" for i in range(2, 22)))
    raw = load_raw_datasets("mine", train_file=train, test_file=write(tmp_path / "test.csv", "text,label\nt,1\n"))
    raw, _ = carve_validation(raw, 10, data_seed=42)
    assert raw["test"][ORIGIN_COLUMN] == [f"{tmp_path / 'test.csv'} line 2 (test split)"]
    # 10% of 20 rows carved at random: row "q<n>" is on line n wherever it ends up.
    for split in ("train", "validation"):
        assert [origin for origin in raw[split][ORIGIN_COLUMN]] == [
            f"{train} line {text[1:]} ({split} split)" for text in raw[split]["text"]
        ]


def test_the_default_dataset_applies_only_without_local_files():
    assert resolve_dataset_name(None, "cls") == "trec"
    assert resolve_dataset_name(None, "gen") == "e2e_nlg_cleaned"
    assert resolve_dataset_name("reviews", "cls", train_file="mine.csv") == "reviews"
    with pytest.raises(ValueError, match=r"Local data files need --dataset_name NAME.*prompts/NAME\.yaml"):
        resolve_dataset_name(None, "cls", train_file="mine.csv")


def test_no_source_at_all_is_refused():
    with pytest.raises(ValueError, match="--dataset_name"):
        load_raw_datasets()


def test_offline_hub_failure_says_what_to_use_instead(monkeypatch):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, so run a fresh interpreter.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = subprocess.run(
        [sys.executable, "-c", "import data; data.load_raw_datasets('trec')"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("modeling_glm.UsageError: The hub dataset CogComp/trec (revision refs/convert/parquet) "
                                "could not be loaded")
    for hint in ("--train_file/--validation_file/--test_file", "--dataset_name fine_foods",
                 "--dataset_name wildlife_strikes / hhs_breaches",
                 "--model_name_or_path glm-tiny;", "roberta-tiny, t5-tiny, bart-tiny) and --tokenizer_name train",
                 "HF_HUB_OFFLINE is set"):  # fmt: skip
        assert hint in last_line


def test_fine_foods_offline_dataset():
    raw, _ = carve_validation(load_raw_datasets("fine_foods"), 10, data_seed=42)
    assert {split: len(ds) for split, ds in raw.items()} == {"train": 3600, "validation": 400, "test": 1000}
    assert raw["test"].features["label"].names == ["great", "other"]
    assert raw["test"].column_names == ["review", "label", ORIGIN_COLUMN]
    assert raw["test"][ORIGIN_COLUMN][:2] == ["fine_foods test[0] (test split)", "fine_foods test[1] (test split)"]
    # 658 of the 1000 test reviews gave 5 stars ("great" = label 0).
    assert raw["test"]["label"].count(0) == 658
    assert not any("<br" in review for review in raw["train"]["review"])


def test_hhs_breaches_offline_dataset_has_only_described_rows_and_a_fixed_split():
    raw = load_raw_datasets("hhs_breaches")
    again = load_raw_datasets("hhs_breaches")
    # 209 of the 1151 reports have a description: 80/10/10 -> 167/21/21.
    assert {split: len(ds) for split, ds in raw.items()} == {"train": 167, "validation": 21, "test": 21}
    assert raw["test"]["description"] == again["test"]["description"]
    descriptions = [d for ds in raw.values() for d in ds["description"]]
    assert all(len(d.split()) > 20 and "\x1a" not in d and "\\" not in d for d in descriptions)
    row = raw["train"][0]
    assert row["first_sentence"] == ("An unencrypted laptop computer containing the electronic protected health "
                                     "information (ePHI) of 625 individuals was stolen from the covered entity's (CE) "
                                     "mobile dental van.")
    assert all(d.startswith(f) for d, f in zip(raw["train"]["description"], raw["train"]["first_sentence"]))
    assert "between Dr. Andrew F. Brooker's business associate" in raw["train"][3]["first_sentence"]
    assert row["source"].startswith(f"entity_name[{row['entity_name']}], entity_type[{row['entity_type']}], state[")
    assert row["business_associate"] in ("yes", "no")


def test_wildlife_strikes_offline_dataset_has_three_references_per_record_and_a_fixed_split():
    raw = load_raw_datasets("wildlife_strikes")
    # 16,406 distinct usable records of the 19,302 FAA reports: 500 test, 100 validation, the rest train.
    assert {split: len(ds) for split, ds in raw.items()} == {"train": 3 * 15806, "validation": 300, "test": 1500}
    test = raw["test"]
    assert test["mr"] == load_raw_datasets("wildlife_strikes")["test"]["mr"]
    assert len(set(test["mr"])) == 500 and not set(test["mr"]) & set(raw["train"]["mr"])
    assert test[0]["mr"] == ("operator[EXPRESSJET (CONTINENTAL EXPRS)], aircraft[ATR-42], phase[climb], "
                             "height[500 feet], light[dawn], state[TX], species[medium bird], struck[one]")
    assert test[:3]["text"] == [
        "EXPRESSJET (CONTINENTAL EXPRS) ATR-42 struck medium bird (one) during climb at 500 feet at dawn in TX.",
        "During climb in TX, medium bird hit EXPRESSJET (CONTINENTAL EXPRS) ATR-42 at 500 feet at dawn: one struck.",
        "A strike with medium bird (one) was reported by EXPRESSJET (CONTINENTAL EXPRS) ATR-42 during climb at 500 "
        "feet at dawn in TX."]
    # An unknown optional field is left out of the record and of its texts.
    row = raw["train"][0]
    assert row["height"] == "" and "height[" not in row["mr"] and " feet" not in row["text"]
    assert row["text"] == "UPS AIRLINES B-757-200 struck small bird (2 to 10) during approach by day in VA."


def hub_trec(coarse_names, fine_names, rows):
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "coarse_label": datasets.ClassLabel(names=coarse_names),
            "fine_label": datasets.ClassLabel(names=fine_names),
        }
    )
    columns = {"text": [r[0] for r in rows], "coarse_label": [r[1] for r in rows], "fine_label": [r[2] for r in rows]}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns, features=features)})


def test_trec_hub_labels_are_mapped_by_name_to_the_promptsource_encoding():
    # The hub copy's ids: DESC=2 DESC:manner=26 (the card's example row), ABBR=0 ABBR:abb=0,
    # HUM=3 HUM:desc=31, NUM=5 NUM:other=43, LOC=4 LOC:other=35.
    rows = [("How did serfdom develop in and then leave Russia ?", 2, 26), ("a", 0, 0), ("b", 3, 31), ("c", 5, 43), ("d", 4, 35)]
    hub = hub_trec(TREC_HUB_COARSE_LABELS, TREC_HUB_FINE_LABELS, rows)
    adapted = adapt_columns(hub, "trec")["train"]
    assert adapted.column_names == ["text", "label_coarse", "label_fine"]
    # promptsource: coarse DESC=0 ABBR=2 HUM=3 NUM=4 LOC=5; fine manner=0 abb=34 desc=12 other=14.
    assert adapted["label_coarse"] == [0, 2, 3, 4, 5]
    assert adapted["label_fine"] == [0, 34, 12, 14, 14]
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    assert render_example(trec1, adapted[0])[1] == "Description"


def test_trec_hub_labels_in_another_order_are_refused():
    promptsource_order = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
    hub = hub_trec(promptsource_order, TREC_HUB_FINE_LABELS, [("q", 0, 0)])
    with pytest.raises(ValueError, match=r"'coarse_label' has label names \['DESC', 'ENTY'"):
        adapt_columns(hub, "trec")


def test_trec_hub_fine_label_mismatch_is_refused():
    renamed = [name.replace("HUM:ind", "HUM:individual") for name in TREC_HUB_FINE_LABELS]
    with pytest.raises(ValueError, match="'fine_label'"):
        adapt_columns(hub_trec(TREC_HUB_COARSE_LABELS, renamed, [("q", 0, 0)]), "trec")


@needs_shared
def test_trec_label_constants_match_the_shared_labels_json():
    names = json.loads((SHARED_DATA / "trec/labels.json").read_text())
    assert TREC_COARSE_LABELS == names["label_coarse"]
    assert TREC_FINE_LABELS == names["label_fine"]
    assert len(TREC_HUB_FINE_LABELS) == 50
    assert {name.split(":")[1] for name in TREC_HUB_FINE_LABELS} == set(names["label_fine"])


# ----------------------------------------------------------------------------- few-shot draws


def labelled_rows(labels):
    """A DatasetDict whose train split has one row per label (text "row i"), and a test split."""
    origins = [f"f.csv line {i + 2} (train split)" for i in range(len(labels))]
    train = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(labels))], "label": labels,
                                        ORIGIN_COLUMN: origins})
    return datasets.DatasetDict({"train": train, "test": train.select(range(2))})


# Classes a: 10 rows, b: 7, c: 3; two rows without a label.
LABELS = ["a", "b", "c", "a", "b", "a", None, "a", "b", "c", "a", "b", "a", "a", "b", "", "a", "c", "b", "a", "b", "a"]


def test_few_shot_draws_k_rows_per_class_and_a_disjoint_validation_of_k_more():
    drawn, record = sample_few_shot(labelled_rows(LABELS), {"label"}, 4, seed=0)

    assert Counter(drawn["train"]["label"]) == {"a": 4, "b": 4, "c": 3}  # c has only 3 rows: all of them, warned
    assert Counter(drawn["validation"]["label"]) == {"a": 4, "b": 3}  # what the classes have left
    assert record["per_class"] == {"train": {"a": 4, "b": 4, "c": 3}, "validation": {"a": 4, "b": 3, "c": 0}}
    assert record["short_classes"] == ["b", "c"] and (record["num_shots"], record["shots_seed"]) == (4, 0)
    assert not set(drawn["train"]["text"]) & set(drawn["validation"]["text"])
    assert drawn["train"]["text"] == [f"row {i}" for i in record["train_rows"]]  # the file's order
    assert record["train_rows"] == sorted(record["train_rows"])
    assert all(origin.endswith(" (validation split)") for origin in drawn["validation"][ORIGIN_COLUMN])
    assert list(drawn) == ["train", "validation", "test"] and len(drawn["test"]) == 2


def test_few_shot_draws_depend_on_the_seed_only():
    first, again, other = (sample_few_shot(labelled_rows(LABELS), {"label"}, 2, seed)[0] for seed in (5, 5, 6))

    assert first["train"]["text"] == again["train"]["text"]
    assert first["validation"]["text"] == again["validation"]["text"]
    assert first["train"]["text"] != other["train"]["text"]


def test_few_shot_keeps_a_given_validation_split_as_it_is():
    raw = labelled_rows(LABELS)
    raw["validation"] = raw["train"].select(range(3))
    drawn, record = sample_few_shot(raw, {"label"}, 2, seed=0, draw_validation=False)

    assert drawn["validation"]["text"] == ["row 0", "row 1", "row 2"]
    assert set(record["per_class"]) == {"train"} and "validation_rows" not in record


def test_a_source_with_validation_is_not_carved(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\nx,0\ny,1\n")
    raw = load_raw_datasets("t", train_file=path, validation_file=path)
    assert carve_validation(raw, 10, data_seed=0) == (raw, None)
