"""Specification of templates.build_prompted_examples: every row of a split rendered and checked, each unusable row named by
its place, hidden labels, references grouped by source. Expected values worked out by hand."""

import argparse
import logging
from pathlib import Path

import datasets
import pytest
from conftest import write

from data import ORIGIN_COLUMN, carve_validation, hidden_label_splits, load_raw_datasets, warn_if_small_validation
from metrics import generation_metrics
from templates import (
    PromptTemplate,
    build_prompted_examples,
    group_references,
    load_templates,
    select_template,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


def template(jinja, answer_choices=None, name="t"):
    return PromptTemplate(name=name, jinja=jinja, answer_choices=answer_choices, original_task=True, source="test")


def test_missing_field_is_named_with_the_available_columns():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    dataset = datasets.Dataset.from_dict({"text": ["q"], "label": [0]})
    with pytest.raises(ValueError, match=r"reads field\(s\) \['label_coarse'\].*available columns: \['label', 'text'\]"):
        build_prompted_examples(dataset, trec1, "cls")


def test_target_outside_the_answer_choices_is_refused_with_its_row():
    yes_no = template("{{q}} ||| {{a}}", answer_choices="yes ||| no")
    rows = [{"q": "one?", "a": "yes"}, {"q": "two?", "a": "maybe"}]
    with pytest.raises(ValueError, match=r"\n  row 1: a 'maybe' is not one of the answer choices \['yes', 'no'\]\n"):
        build_prompted_examples(rows, yes_no, "cls")


def test_label_index_out_of_range_fails_with_its_row():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    with pytest.raises(ValueError, match=r"row 0: label_coarse 6 is outside the 6 answer choices \(0 to 5\)"):
        build_prompted_examples([{"text": "q", "label_coarse": 6, "label_fine": 0}], trec1, "cls")


def test_a_data_error_names_file_line_and_split(tmp_path):
    # Two answer choices; line 8 of validation.csv has label 2.
    (tmp_path / "prompts").mkdir()
    write(tmp_path / "prompts/mine.yaml", 'templates:\n  - name: p\n    jinja: "{{text}} ||| {{answer_choices[label]}}"\n'
                                          '    answer_choices: "no ||| yes"\n')  # fmt: skip
    valid = "text,label\n" + "".join(f"q{i},{i % 2}\n" for i in range(2, 8)) + "q8,2\nq9,1\n"
    raw = load_raw_datasets("mine", train_file=write(tmp_path / "train.csv", "text,label\nt,0\n"),
                            validation_file=write(tmp_path / "validation.csv", valid))  # fmt: skip
    prompt = load_templates("mine", prompts_dir=tmp_path / "prompts")[0]
    with pytest.raises(ValueError) as caught:
        build_prompted_examples(raw["validation"], prompt, "cls")
    assert str(caught.value).splitlines()[:2] == [
        "1 of 8 rows cannot be used with prompt 'p':",
        f"  {tmp_path / 'validation.csv'} line 8 (validation split): label 2 is outside the 2 answer choices (0 to 1)",
    ]


def test_a_data_error_in_a_carved_validation_split_names_the_line_in_train(tmp_path):
    # Row "q<n>" is on line n of train.csv; line 8 has label 2 of 0..1. Wherever the carve
    # puts it, the message names line 8 and that split.
    rows = "".join(f"q{n},{2 if n == 8 else n % 2}\n" for n in range(2, 42))
    train = write(tmp_path / "train.csv", "text,label\n" + rows)
    raw, _ = carve_validation(load_raw_datasets("mine", train_file=train), 25, data_seed=3)
    pick = template("{{text}} ||| {{answer_choices[label]}}", answer_choices="no ||| yes")
    split = next(name for name, dataset in raw.items() if "q8" in dataset["text"])
    with pytest.raises(ValueError, match=rf"\n  {train} line 8 \({split} split\): label 2 is outside the 2 answer"):
        build_prompted_examples(raw[split], pick, "cls")


def test_every_bad_row_is_listed_up_to_ten_then_counted():
    pick = template("{{q}} ||| {{answer_choices[label]}}", answer_choices="no ||| yes")
    rows = [{"q": f"q{i}", "label": 0 if i < 3 else 5} for i in range(15)]
    with pytest.raises(ValueError) as caught:
        build_prompted_examples(rows, pick, "cls")
    lines = str(caught.value).splitlines()
    assert lines[0] == "12 of 15 rows cannot be used with prompt 't':"
    assert lines[1:11] == [f"  row {i}: label 5 is outside the 2 answer choices (0 to 1)" for i in range(3, 13)]
    assert lines[11] == "  ... and 2 more"


def test_word_label_typos_are_all_listed_in_words(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\ngood,positive\nbad,negatve\nfine,postive\n")
    raw = load_raw_datasets("mine", train_file=path, validation_file=path)
    words = template("{{text}} ||| {{label}}", answer_choices="negative ||| positive")
    with pytest.raises(ValueError) as caught:
        build_prompted_examples(raw["train"], words, "cls")
    assert str(caught.value).splitlines()[1:3] == [
        f"  {path} line 3 (train split): label 'negatve' is not one of the answer choices ['negative', 'positive']",
        f"  {path} line 4 (train split): label 'postive' is not one of the answer choices ['negative', 'positive']",
    ]


@pytest.mark.parametrize("labels,choices", [(("1", "", "0"), "no ||| yes"), (("yes", "", "no"), "no ||| yes")])
def test_an_empty_label_is_the_same_for_integer_and_word_labels(tmp_path, caplog, labels, choices):
    rows = "".join(f"q{n},{label}\n" for n, label in enumerate(labels, start=2))
    path = write(tmp_path / "train.csv", "text,label\n" + rows)
    split = load_raw_datasets("mine", train_file=path, validation_file=path)["train"]
    jinja = "{{text}} ||| {{answer_choices[label]}}" if labels[0] == "1" else "{{text}} ||| {{label}}"
    prompt = template(jinja, answer_choices=choices)
    with pytest.raises(ValueError, match=rf"\n  {path} line 3 \(train split\): label is empty\n"):
        build_prompted_examples(split, prompt, "cls", skip_empty=False)
    with caplog.at_level(logging.WARNING, logger="prompted"):
        examples, counts = build_prompted_examples(split, prompt, "cls")
    assert [e["label"] for e in examples] == [1, 0] and counts["empty_field"] == 1
    assert f"  {path} line 3 (train split): label is empty" in caplog.text


def test_test_labels_all_minus_one_are_hidden_never_the_last_choice(tmp_path):
    path = write(tmp_path / "test.csv", "text,label_coarse,label_fine\nWho wrote Hamlet ?,-1,-1\nHow far ?,-1,-1\n")
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    examples, counts = build_prompted_examples(load_raw_datasets("trec", test_file=path)["test"], trec1, "cls")
    assert counts["labels_hidden"] == "every label_coarse is -1"
    assert [(e["label"], e["target"]) for e in examples] == [(None, None), (None, None)]
    assert examples[0]["context"].startswith("Who wrote Hamlet ?\n\nIs this asking about Description,")
    assert examples[0]["context"].endswith("Location? [MASK]")
    assert examples[1]["choices"][-1] == "Location"


def test_test_labels_all_empty_are_hidden(tmp_path):
    path = write(tmp_path / "test.csv", "text,label\nq1,\nq2,\n")
    pick = template("{{text}} ||| {{answer_choices[label]}}", answer_choices="no ||| yes")
    examples, counts = build_prompted_examples(load_raw_datasets("mine", test_file=path)["test"], pick, "cls")
    assert counts["labels_hidden"] == "every label is empty"
    assert [(e["input"], e["label"]) for e in examples] == [("q1", None), ("q2", None)]


def test_a_mix_of_hidden_and_real_labels_names_the_rows(tmp_path):
    path = write(tmp_path / "test.csv", "text,label\nq1,1\nq2,-1\nq3,0\nq4,-1\n")
    pick = template("{{text}} ||| {{answer_choices[label]}}", answer_choices="no ||| yes")
    with pytest.raises(ValueError) as caught:
        build_prompted_examples(load_raw_datasets("mine", test_file=path)["test"], pick, "cls")
    hidden = "label is -1, the mark of a hidden label, but other rows of this split have labels"
    assert str(caught.value).splitlines()[:3] == [
        "2 of 4 rows cannot be used with prompt 't':",
        f"  {path} line 3 (test split): {hidden}",
        f"  {path} line 5 (test split): {hidden}",
    ]


def test_a_missing_label_column_says_how_to_mark_hidden_labels():
    pick = template("{{text}} ||| {{answer_choices[label]}}", answer_choices="no ||| yes")
    with pytest.raises(ValueError, match=r"lacks; available columns: \['text'\].*every cell empty \(or -1"):
        build_prompted_examples([{"text": "q", ORIGIN_COLUMN: "t.csv line 2 (test split)"}], pick, "cls")


def test_generation_references_all_empty_are_hidden():
    rows = [{"mr": "a", "ref": ""}, {"mr": "b", "ref": None}, {"mr": "a", "ref": " "}]
    examples, counts = build_prompted_examples(rows, template("{{mr}} ||| {{ref}}"), "gen", skip_empty=False)
    assert counts["labels_hidden"] == "every ref is empty"
    assert [e["target"] for e in examples] == [None, None, None]
    sources, references = group_references(examples)
    assert (sources, references) == (["a", "b"], [[], []])
    with pytest.raises(ValueError, match="hidden"):
        generation_metrics(["x", "y"], references)


def test_classification_needs_answer_choices():
    with pytest.raises(ValueError, match="no answer choices"):
        build_prompted_examples([{"q": "x"}], template("{{q}} ||| y"), "cls")


def test_an_empty_input_field_is_rendered_and_an_empty_label_is_skipped_and_counted():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    rows = [
        {"text": "Who wrote Hamlet ?", "label_coarse": 3, "label_fine": 4},
        {"text": None, "label_coarse": 0, "label_fine": 0},
        {"text": "Why ?", "label_coarse": None, "label_fine": 0},
    ]
    examples, counts = build_prompted_examples(rows, trec1, "cls")
    assert counts == {"rows": 3, "kept": 2, "not_applicable": 0, "empty_field": 1, "empty_input": 0, "empty_target": 0,
                      "bad_choices": 0, "labels_hidden": None}
    assert examples[0]["label"] == 3 and examples[0]["target"] == "Person"
    assert examples[0]["context"].endswith("Quantity, Location? [MASK]")
    assert examples[1]["context"].startswith("Is this asking about") and examples[1]["target"] == "Description"
    with pytest.raises(ValueError, match=r"1 of 3 rows .*\n  row 2: label_coarse is empty\n.*--skip_eval_rows"):
        build_prompted_examples(rows, trec1, "cls", skip_empty=False, skip_flag="--skip_eval_rows")


def test_empty_target_is_skipped_for_generation():
    examples, counts = build_prompted_examples([{"mr": "a", "ref": "x"}, {"mr": "b", "ref": ""}], template("{{mr}} ||| {{ref}}"), "gen")
    assert [e["target"] for e in examples] == ["x"]
    assert (counts["kept"], counts["empty_field"]) == (1, 1)
    assert examples[0]["choices"] is None and examples[0]["label"] is None


def test_templates_that_render_nothing_are_not_applicable():
    conditional = template("{% if k == 1 %}{{q}} ||| {{answer_choices[0]}}{% endif %}", answer_choices="a ||| b")
    examples, counts = build_prompted_examples([{"k": 1, "q": "x"}, {"k": 2, "q": "y"}], conditional, "cls", skip_empty=False)
    assert len(examples) == 1 and counts["not_applicable"] == 1


@needs_shared
def test_e2e_validation_references_are_grouped_by_source():
    raw = load_raw_datasets("e2e_nlg_cleaned", validation_file=SHARED_DATA / "e2e_nlg_cleaned/validation.csv")
    create = select_template(load_templates("e2e_nlg_cleaned", task="gen"), prompt_name="create_text_for_me")
    examples, counts = build_prompted_examples(raw["validation"], create, "gen")
    sources, references = group_references(examples)
    # 2334 rows, 923 distinct meaning representations; the file opens with 3, 1, 2 references.
    assert counts["kept"] == 2334
    assert len(sources) == 923 and sum(map(len, references)) == 2334
    assert [len(r) for r in references[:3]] == [3, 1, 2]
    assert references[1] == ["Crowne Plaza Hotel has a coffee shop nearby with an average customer rating called Blue Spice."]
    assert sources[0] == (
        "How would we create an appropriate text out of the following data?\n"
        "name[Blue Spice], eatType[coffee shop], customer rating[5 out of 5], near[Crowne Plaza Hotel]"
    )


def test_group_references_keeps_first_appearance_order():
    rows = [{"source_key": "b", "target": "1"}, {"source_key": "a", "target": "2"}, {"source_key": "b", "target": "3"}]
    assert group_references(rows) == (["b", "a"], [["1", "3"], ["2"]])


def test_hidden_labels_give_predictions_only_unless_training_needs_them(caplog):
    counts = {"train": {"labels_hidden": None}, "validation": {"labels_hidden": None},
              "test": {"labels_hidden": "every label is -1"}}
    with caplog.at_level(logging.WARNING, logger="templates"):
        assert hidden_label_splits(counts, do_train=True) == {"test"}
    assert caplog.messages == ["test labels are hidden (every label is -1): writing predictions only, no test metrics."]
    counts["validation"]["labels_hidden"] = "every label is empty"
    with pytest.raises(ValueError, match=r"The validation labels are hidden \(every label is empty\), but training "
                                         "picks its best step on validation: pass a labelled --validation_file"):
        hidden_label_splits(counts, do_train=True)
    assert hidden_label_splits(counts, do_train=False) == {"validation", "test"}


def test_a_small_validation_set_is_warned_about_with_how_to_pass_a_bigger_one(caplog):
    args = argparse.Namespace(validation_file=None, validation_split_percentage=10, max_eval_samples=None)
    with caplog.at_level(logging.WARNING, logger="templates"):
        warn_if_small_validation(50, args)
        warn_if_small_validation(5, args)
        warn_if_small_validation(12, args, num_shots=2)
        warn_if_small_validation(32, argparse.Namespace(**{**vars(args), "max_eval_samples": 32}))
    assert caplog.messages == [
        "Validation has only 5 examples: the best step is chosen on them, nearly at random with so few. Pass a "
        "--validation_file of 50 or more labelled rows, or raise --validation_split_percentage (now 10).",
        "Validation has only 12 examples: the best step is chosen on them, nearly at random with so few. Pass a "
        "--validation_file of 50 or more labelled rows (with --num_shots 2, validation is 2 drawn examples per "
        "class).",
        "Validation has only 32 examples: the best step is chosen on them, nearly at random with so few. Pass a "
        "--validation_file of 50 or more labelled rows, or raise --max_eval_samples (now 32)."]
