"""Specification of task_utils: one behaviour per test, expected values worked out by hand."""

import argparse
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import jinja2.sandbox
import pytest
import torch

import glm_utils
import task_utils as tu

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
PROMPTS = REPO / "prompts"


def template(jinja, answer_choices=None, name="t"):
    return tu.PromptTemplate(name=name, jinja=jinja, answer_choices=answer_choices, original_task=True, source="test")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- data


@needs_shared
def test_trec_local_files_carve_a_deterministic_disjoint_validation_split():
    files = {"train_file": SHARED_DATA / "trec/train.csv", "test_file": SHARED_DATA / "trec/test.csv"}
    first = tu.load_raw_datasets("trec", **files)
    again = tu.load_raw_datasets("trec", **files)
    other_seed = tu.load_raw_datasets("trec", seed=7, **files)

    assert list(first) == ["train", "validation", "test"]
    # 10% of 5444 rows is 544.4: datasets rounds the test share up.
    assert (len(first["train"]), len(first["validation"]), len(first["test"])) == (4899, 545, 499)
    assert first["validation"]["text"] == again["validation"]["text"]
    assert first["validation"]["text"] != other_seed["validation"]["text"]
    full = tu.load_local_file(SHARED_DATA / "trec/train.csv")
    assert Counter(first["train"]["text"]) + Counter(first["validation"]["text"]) == Counter(full["text"])
    assert first["train"][0].keys() == {"text", "label_coarse", "label_fine"}


@needs_shared
def test_local_trec_csv_is_already_in_the_promptsource_encoding():
    raw = datasets.DatasetDict({"test": tu.load_local_file(SHARED_DATA / "trec/test.csv")})
    assert tu.adapt_columns(raw, "trec") is raw
    assert raw["test"].column_names == ["text", "label_coarse", "label_fine"]
    # "How far is it from Denver to Aspen ?" NUM, "What country is Modesto , California in ?"
    # LOC, "Who was Galileo ?" HUM: ids 4, 5, 3 in the order DESC, ENTY, ABBR, HUM, NUM, LOC.
    assert raw["test"]["label_coarse"][:3] == [4, 5, 3]


def test_apply_max_samples_keeps_the_first_rows():
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [5, 6, 7]})})
    sliced = tu.apply_max_samples(raw, max_train_samples=2, max_test_samples=1)
    assert sliced["train"]["x"] == [5, 6]
    assert list(sliced) == ["train"]


def test_malformed_csv_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "bad.csv", 'text,label\n"fine, quoted",0\nthree,fields,here\n')
    with pytest.raises(ValueError, match=r"bad\.csv, line 3 \(data row 2\): 3 fields where the header has 2"):
        tu.load_local_file(path)


def test_csv_integer_columns_become_ints_and_empty_cells_stay_strings(tmp_path):
    dataset = tu.load_local_file(write(tmp_path / "ok.csv", "text,label\nhi,1\n,0\n"))
    assert dataset["label"] == [1, 0]
    assert dataset["text"] == ["hi", ""]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a", "label": 0}\n\n{"text": "b", "label": }\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3"):
        tu.load_local_file(path)


def test_json_records_need_the_same_keys(tmp_path):
    path = write(tmp_path / "rows.json", '[{"text": "a", "label": 0}, {"text": "b"}]')
    with pytest.raises(ValueError, match=r"item 2: keys \['text'\] differ"):
        tu.load_local_file(path)


def test_a_json_field_mixing_text_and_other_kinds_names_the_field_and_line(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"mr": "name[A]", "n": 1}\n{"mr": null, "n": 2.5}\n{"mr": {"name": "B"}, "n": 3}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 3: field 'mr' is object .* but text in line 1"):
        tu.load_local_file(path)


def test_json_file_with_one_object_per_line_is_read(tmp_path):
    dataset = tu.load_local_file(write(tmp_path / "rows.json", '{"a": 1}\n{"a": 2}\n'))
    assert dataset["a"] == [1, 2]


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'\.tsv'.*\.csv, \.json, \.jsonl"):
        tu.load_local_file(write(tmp_path / "data.tsv", "a\tb\n"))


def test_no_source_at_all_is_refused():
    with pytest.raises(ValueError, match="--dataset_name"):
        tu.load_raw_datasets()


def test_offline_hub_failure_says_what_to_use_instead(monkeypatch):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, so run a fresh interpreter.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = subprocess.run(
        [sys.executable, "-c", "import task_utils; task_utils.load_raw_datasets('trec')"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("RuntimeError: The hub dataset CogComp/trec (revision refs/convert/parquet) could not be loaded")
    for hint in ("--train_file/--validation_file/--test_file", "--dataset_name fine_foods", "--dataset_name hhs_breaches",
                 "--model_name_or_path glm-tiny;", "roberta-tiny, t5-tiny, bart-tiny) and --tokenizer_name train",
                 "HF_HUB_OFFLINE is set"):  # fmt: skip
        assert hint in last_line


def test_fine_foods_offline_dataset():
    raw = tu.load_raw_datasets("fine_foods")
    assert {split: len(ds) for split, ds in raw.items()} == {"train": 3600, "validation": 400, "test": 1000}
    assert raw["test"].features["label"].names == ["great", "other"]
    assert raw["test"].column_names == ["review", "label"]
    # 658 of the 1000 test reviews gave 5 stars ("great" = label 0).
    assert raw["test"]["label"].count(0) == 658
    assert not any("<br" in review for review in raw["train"]["review"])


def test_hhs_breaches_offline_dataset_has_only_described_rows_and_a_fixed_split():
    raw = tu.load_raw_datasets("hhs_breaches", seed=123)  # --seed never moves this split
    again = tu.load_raw_datasets("hhs_breaches")
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


# ----------------------------------------------------------------------------- adapters


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
    hub = hub_trec(tu.TREC_HUB_COARSE_LABELS, tu.TREC_HUB_FINE_LABELS, rows)
    adapted = tu.adapt_columns(hub, "trec")["train"]
    assert adapted.column_names == ["text", "label_coarse", "label_fine"]
    # promptsource: coarse DESC=0 ABBR=2 HUM=3 NUM=4 LOC=5; fine manner=0 abb=34 desc=12 other=14.
    assert adapted["label_coarse"] == [0, 2, 3, 4, 5]
    assert adapted["label_fine"] == [0, 34, 12, 14, 14]
    trec1 = tu.select_template(tu.load_templates("trec", task="cls"), prompt_name="trec1")
    assert tu.render_example(trec1, adapted[0])[1] == "Description"


def test_trec_hub_labels_in_another_order_are_refused():
    promptsource_order = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
    hub = hub_trec(promptsource_order, tu.TREC_HUB_FINE_LABELS, [("q", 0, 0)])
    with pytest.raises(ValueError, match=r"'coarse_label' has label names \['DESC', 'ENTY'"):
        tu.adapt_columns(hub, "trec")


def test_trec_hub_fine_label_mismatch_is_refused():
    renamed = [name.replace("HUM:ind", "HUM:individual") for name in tu.TREC_HUB_FINE_LABELS]
    with pytest.raises(ValueError, match="'fine_label'"):
        tu.adapt_columns(hub_trec(tu.TREC_HUB_COARSE_LABELS, renamed, [("q", 0, 0)]), "trec")


@needs_shared
def test_trec_label_constants_match_the_shared_labels_json():
    names = json.loads((SHARED_DATA / "trec/labels.json").read_text())
    assert tu.TREC_COARSE_LABELS == names["label_coarse"]
    assert tu.TREC_FINE_LABELS == names["label_fine"]
    assert len(tu.TREC_HUB_FINE_LABELS) == 50
    assert {name.split(":")[1] for name in tu.TREC_HUB_FINE_LABELS} == set(names["label_fine"])


# ----------------------------------------------------------------------------- templates


def test_trec_usable_classification_templates_are_the_coarse_promptsource_ones():
    names = [t.name for t in tu.load_templates("trec", task="cls")]
    assert names == ["pick_the_best_descriptor", "trec1", "trec2", "what_category_best_describe", "which_category_best_describes"]


def test_e2e_usable_generation_templates():
    names = [t.name for t in tu.load_templates("e2e_nlg_cleaned", task="gen")]
    assert names == ["coherent_text", "create_text_for_me", "generate_gramatically_correct_text", "generate_text_restaurant"]


def test_local_yaml_templates_for_the_offline_datasets():
    foods = tu.load_templates("fine_foods", prompts_dir=PROMPTS, task="cls")
    breaches = tu.load_templates("hhs_breaches", prompts_dir=PROMPTS, task="gen")
    assert [t.name for t in foods] == ["five_stars_question", "overall_verdict", "product_was_mask"]
    assert [t.name for t in breaches] == ["breach_fields", "summarize_breach_record", "what_happened"]
    assert {t.source for t in foods} == {str(PROMPTS / "fine_foods.yaml")}


def test_local_templates_come_after_promptsource_ones(tmp_path):
    write(tmp_path / "trec.yaml", 'templates:\n  - name: a_local\n    jinja: "{{text}} ||| {{answer_choices[label_coarse]}}"\n    answer_choices: "x ||| y"\n')
    templates = tu.load_templates("trec", prompts_dir=tmp_path, task="cls")
    assert [t.name for t in templates][-2:] == ["which_category_best_describes", "a_local"]


def test_local_yaml_with_an_unknown_key_is_refused(tmp_path):
    write(tmp_path / "mine.yaml", "templates:\n  - name: a\n    jinja: 'x ||| y'\n    answer_choice: 'p ||| q'\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['answer_choice'\]"):
        tu.load_templates("mine", prompts_dir=tmp_path, task="cls")


def test_no_usable_template_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="No usable gen templates for dataset 'trec'"):
        tu.load_templates("trec", prompts_dir=tmp_path, task="gen")


def test_select_template_by_default_id_and_name():
    templates = tu.load_templates("trec", task="cls")
    assert tu.select_template(templates).name == "pick_the_best_descriptor"
    assert tu.select_template(templates, prompt_id=2).name == "trec2"
    assert tu.select_template(templates, prompt_name="trec1").name == "trec1"
    with pytest.raises(ValueError, match="Unknown --prompt_id 5; valid prompts:\n0: pick_the_best_descriptor"):
        tu.select_template(templates, prompt_id=5)
    with pytest.raises(ValueError, match=r"(?s)Unknown --prompt_name 'nope'.*4: which_category_best_describes"):
        tu.select_template(templates, prompt_name="nope")


# ----------------------------------------------------------------------------- rendering


def test_trec1_renders_the_exact_prompt_and_target():
    trec1 = tu.select_template(tu.load_templates("trec", task="cls"), prompt_name="trec1")
    example = {"text": "How did serfdom develop in and then leave Russia ?", "label_coarse": 0, "label_fine": 0}
    input_text, target, choices = tu.render_example(trec1, example)
    assert input_text == (
        "How did serfdom develop in and then leave Russia ?\n\n"
        "Is this asking about Description, Entity, Abbreviation, Person, Quantity, Location?"
    )
    assert target == "Description"
    assert choices == ["Description", "Entity", "Abbreviation", "Person", "Quantity", "Location"]


def test_separator_inside_a_field_does_not_split():
    input_text, target, _ = tu.render_example(template("Q: {{q}} ||| {{a}}"), {"q": "a ||| b", "a": "c"})
    assert (input_text, target) == ("Q: a ||| b", "c")


def test_promptsource_filters_are_available():
    rendered = tu.render_example(template("{{ words | most_frequent | join(',') }} ||| {{ [w] | choice }}"), {"words": ["b", "a", "b", "a", "c"], "w": "z"})
    assert rendered[:2] == ("b,a", "z")


def test_sandbox_refuses_python_internals():
    evil = template("{{ ''.__class__.__mro__ }} ||| x", name="evil")
    with pytest.raises(ValueError, match="Template 'evil' was refused by the sandbox") as caught:
        tu.render_example(evil, {})
    assert isinstance(caught.value.__cause__, jinja2.sandbox.SecurityError)


def test_cloze_context_rules():
    assert tu.make_cloze_context("Is it good?") == "Is it good? [MASK]"
    assert tu.make_cloze_context("It was [MASK]. Great film.") == "It was [MASK]. Great film."
    with pytest.raises(ValueError, match="2 \\[MASK\\] tokens"):
        tu.make_cloze_context("[MASK] and [MASK]")


def test_mlm_context_puts_n_mask_tokens_in_the_slot():
    assert tu.make_mlm_context("Is it good?", "<mask>", 2) == "Is it good? <mask><mask>"
    assert tu.make_mlm_context("It was [MASK].", "<mask>", 1) == "It was <mask>."
    with pytest.raises(ValueError, match=">= 1"):
        tu.make_mlm_context("x", "<mask>", 0)


# ----------------------------------------------------------------------------- prompted examples


def test_missing_field_is_named_with_the_available_columns():
    trec1 = tu.select_template(tu.load_templates("trec", task="cls"), prompt_name="trec1")
    dataset = datasets.Dataset.from_dict({"text": ["q"], "label": [0]})
    with pytest.raises(ValueError, match=r"reads field\(s\) \['label_coarse'\].*available columns: \['label', 'text'\]"):
        tu.build_prompted_examples(dataset, trec1, "cls")


def test_target_outside_the_answer_choices_is_refused_with_its_row():
    yes_no = template("{{q}} ||| {{a}}", answer_choices="yes ||| no")
    rows = [{"q": "one?", "a": "yes"}, {"q": "two?", "a": "maybe"}]
    with pytest.raises(ValueError, match=r"Row 1: target 'maybe' .* answer choices \['yes', 'no'\]"):
        tu.build_prompted_examples(rows, yes_no, "cls")


def test_label_index_out_of_range_fails_with_its_row():
    trec1 = tu.select_template(tu.load_templates("trec", task="cls"), prompt_name="trec1")
    with pytest.raises(ValueError, match="Row 0: Template 'trec1' failed to render"):
        tu.build_prompted_examples([{"text": "q", "label_coarse": 6, "label_fine": 0}], trec1, "cls")


def test_classification_needs_answer_choices():
    with pytest.raises(ValueError, match="no answer choices"):
        tu.build_prompted_examples([{"q": "x"}], template("{{q}} ||| y"), "cls")


def test_empty_rows_are_skipped_and_counted():
    trec1 = tu.select_template(tu.load_templates("trec", task="cls"), prompt_name="trec1")
    rows = [
        {"text": "Who wrote Hamlet ?", "label_coarse": 3, "label_fine": 4},
        {"text": "   ", "label_coarse": 0, "label_fine": 0},
        {"text": None, "label_coarse": 0, "label_fine": 0},
    ]
    examples, counts = tu.build_prompted_examples(rows, trec1, "cls")
    assert counts == {"rows": 3, "kept": 1, "not_applicable": 0, "empty_field": 2, "empty_input": 0, "empty_target": 0}
    assert examples[0]["label"] == 3 and examples[0]["target"] == "Person"
    assert examples[0]["context"].endswith("Quantity, Location? [MASK]")
    with pytest.raises(ValueError, match="Row 1: empty field"):
        tu.build_prompted_examples(rows, trec1, "cls", skip_empty=False)


def test_empty_target_is_skipped_for_generation():
    examples, counts = tu.build_prompted_examples([{"mr": "a", "ref": "x"}, {"mr": "b", "ref": ""}], template("{{mr}} ||| {{ref}}"), "gen")
    assert [e["target"] for e in examples] == ["x"]
    assert (counts["kept"], counts["empty_field"]) == (1, 1)
    assert examples[0]["choices"] is None and examples[0]["label"] is None


def test_templates_that_render_nothing_are_not_applicable():
    conditional = template("{% if k == 1 %}{{q}} ||| {{answer_choices[0]}}{% endif %}", answer_choices="a ||| b")
    examples, counts = tu.build_prompted_examples([{"k": 1, "q": "x"}, {"k": 2, "q": "y"}], conditional, "cls", skip_empty=False)
    assert len(examples) == 1 and counts["not_applicable"] == 1


@needs_shared
def test_e2e_validation_references_are_grouped_by_source():
    raw = tu.load_raw_datasets("e2e_nlg_cleaned", validation_file=SHARED_DATA / "e2e_nlg_cleaned/validation.csv")
    create = tu.select_template(tu.load_templates("e2e_nlg_cleaned", task="gen"), prompt_name="create_text_for_me")
    examples, counts = tu.build_prompted_examples(raw["validation"], create, "gen")
    sources, references = tu.group_references(examples)
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
    assert tu.group_references(rows) == (["b", "a"], [["1", "3"], ["2"]])


# ----------------------------------------------------------------------------- metrics


def test_classification_metrics_hand_worked():
    # Per-class F1: class 0 = 1, class 1 = 2/3 (P 1/2, R 1), class 2 = 2/3 (P 1, R 1/2).
    assert tu.classification_metrics([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx({"accuracy": 0.75, "macro_f1": 7 / 9})
    # With num_classes=2 the never-seen class 1 counts as F1 0.
    assert tu.classification_metrics([0, 0], [0, 0], num_classes=2) == {"accuracy": 1.0, "macro_f1": 0.5}


def test_majority_class_baseline():
    # Train majority is 2; eval labels [2, 0, 2, 1]: accuracy 1/2, F1 of class 2 = 2/3, others 0.
    result = tu.majority_class_baseline([2, 2, 0, 1, 2], [2, 0, 2, 1], num_classes=3)
    assert result == pytest.approx({"accuracy": 0.5, "macro_f1": 2 / 9})


def test_bleu_and_rouge_hand_worked():
    result = tu.generation_metrics(["the cat sat on the mat"], [["the cat sat on a mat"]])
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    assert result["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert result["rouge1"] == pytest.approx(100 * 5 / 6)
    assert result["rouge2"] == pytest.approx(60.0)
    assert result["rougeL"] == pytest.approx(100 * 5 / 6)
    assert result["gen_len"] == 6.0


def test_bleu_uses_every_reference_and_variable_reference_counts():
    predictions = ["the cat sat on the mat", "a dog runs in"]
    references = [["the cat sat on the mat", "x"], ["a dog runs in the park today ."]]
    result = tu.generation_metrics(predictions, references)
    # Every n-gram matches; closest reference lengths 6 and 8 against 10 output tokens:
    # brevity penalty exp(1 - 14/10). Padding the missing reference with "" instead of None
    # would make the empty string the "closest" reference of source 2 and give 100.
    assert result["bleu"] == pytest.approx(100 * math.exp(-0.4))
    # ROUGE-1 of source 2: P 4/4, R 4/7 -> F 8/11; ROUGE-2: P 3/3, R 3/6 -> F 2/3.
    assert result["rouge1"] == pytest.approx(100 * (1 + 8 / 11) / 2)
    assert result["rouge2"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["gen_len"] == 5.0


def test_prediction_equal_to_one_reference_scores_100():
    result = tu.generation_metrics(["a dog runs in the park"], [["a cat", "a dog runs in the park", "the dog ran"]])
    assert result["bleu"] == pytest.approx(100.0)
    assert result["rougeL"] == pytest.approx(100.0)


def test_most_frequent_reference_baseline():
    result = tu.most_frequent_reference_baseline(["x y z w", "a b c d", "a b c d"], [["a b c d"], ["a b c d", "q"]])
    assert result["bleu"] == pytest.approx(100.0)
    assert result["gen_len"] == 4.0


# ----------------------------------------------------------------------------- IO


def test_prepare_output_dir_refuses_to_overwrite_results(tmp_path):
    out = tu.prepare_output_dir(tmp_path / "run" / "a")
    assert out.is_dir()
    write(out / "results.json", "{}")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        tu.prepare_output_dir(out)
    assert tu.prepare_output_dir(out, overwrite_output_dir=True) == out


def test_overwrite_output_dir_removes_the_previous_runs_outputs_unless_resuming(tmp_path):
    def previous_run(out):
        for name in ("results.json", "predictions_test.jsonl", "step_3/training_state.json", "epoch_0/model.bin",
                     "best_model/adapter.safetensors", "tokenizer/vocab.json", "notes.txt"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            write(out / name, "x")
        return out

    def flags(overwrite, resume=None):
        return argparse.Namespace(overwrite_output_dir=overwrite, resume_from_checkpoint=resume)

    out = previous_run(tmp_path / "a")
    tu.clear_previous_run(flags(True), out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "tokenizer"]

    for name, settings in (("b", flags(True, resume="latest")), ("c", flags(False))):
        out = previous_run(tmp_path / name)
        tu.clear_previous_run(settings, out)
        assert len(list(out.iterdir())) == 7


def test_atomic_writes_leave_no_temp_files_and_keep_the_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    tu.write_json_atomic(path, {"b": 1, "a": [1.5]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5]}
    with pytest.raises(TypeError):
        tu.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5]}
    tu.write_jsonl_atomic(tmp_path / "p.jsonl", [{"i": 0}, {"i": 1}])
    assert (tmp_path / "p.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "results.json"]


def test_safe_name():
    assert tu.safe_name("../../etc") == "etc"
    assert tu.safe_name("CogComp/trec") == "CogComp_trec"
    assert tu.safe_name("what category? v2.1") == "what_category_v2.1"
    with pytest.raises(ValueError):
        tu.safe_name("/..")


def test_environment_info_has_the_versions():
    info = tu.environment_info()
    assert set(info) == {"python", "torch", "transformers", "accelerate", "datasets", "peft", "promptsource", "git_commit", "git_dirty"}
    assert info["datasets"] == datasets.__version__
    assert info["git_commit"] is None or len(info["git_commit"]) == 40


def test_results_record_schema():
    parser = argparse.ArgumentParser()
    tu.add_data_and_prompt_args(parser, "cls")
    tu.add_training_args(parser)
    args = parser.parse_args(["--output_dir", "out", "--train_file", "t.csv", "--dataset_name", ""])
    record = tu.results_record(
        args, "cls", "glm_cloze", script="run_cls.py", prompt_id=1, prompt_name="trec1", total_train_batch_size=32,
        epochs=[{"epoch": 0, "step": 10, "train_loss": 1.0, "validation": {"accuracy": 0.5}}], best_epoch=0,
        validation={"accuracy": 0.5}, test={"accuracy": 0.4}, baselines={"majority_class": {"accuracy": 0.2}},
        train_time_s=1.0, train_examples_per_s=10.0, peak_memory_mb=None, trainable_params=25, total_params=100,
        metric_for_best_model="accuracy",
    )  # fmt: skip
    assert list(record) == [
        "script", "task", "method", "peft", "model_name_or_path", "dataset", "prompt_id", "prompt_name",
        "learning_rate", "per_device_train_batch_size", "total_train_batch_size", "seed", "metric_for_best_model",
        "epochs", "best_epoch", "validation", "test", "baselines", "train_time_s", "train_examples_per_s",
        "peak_memory_mb", "trainable_params", "total_params", "trainable_share", "args", "env",
    ]  # fmt: skip
    assert record["dataset"] == {"train": "t.csv"}
    assert record["trainable_share"] == 0.25
    assert (record["learning_rate"], record["seed"], record["args"]["output_dir"]) == (1e-5, 42, "out")
    json.dumps(record)
    with pytest.raises(ValueError, match="peft"):
        tu.results_record(args, "cls", "glm_cloze", **{**_record_kwargs(), "peft": "adapter"})


def _record_kwargs():
    return dict(
        script="s", prompt_id=0, prompt_name="p", total_train_batch_size=1, epochs=[], best_epoch=None, validation={},
        test=None, baselines={}, train_time_s=0.0, train_examples_per_s=0.0, peak_memory_mb=None, trainable_params=1,
        total_params=1,
    )  # fmt: skip


# ----------------------------------------------------------------------------- arguments


def test_data_and_prompt_args_defaults_per_task():
    cls_args = tu.add_data_and_prompt_args(argparse.ArgumentParser(), "cls").parse_args([])
    gen_args = tu.add_data_and_prompt_args(argparse.ArgumentParser(), "gen").parse_args(["--no-skip_empty", "--max_eval_samples", "5"])
    assert (cls_args.dataset_name, cls_args.skip_empty, cls_args.prompts_dir, cls_args.prompt_id) == ("trec", True, "prompts", None)
    assert (gen_args.dataset_name, gen_args.skip_empty, gen_args.max_eval_samples) == ("e2e_nlg_cleaned", False, 5)


def test_training_args_defaults_and_overrides():
    parser = tu.add_training_args(argparse.ArgumentParser(), {"learning_rate": 5e-3})
    args = parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "epoch", "--no-do_train"])
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size, args.warmup_ratio) == (5e-3, 0.1, 16, 0.1)
    assert (args.checkpointing_steps, args.do_train, args.eval_steps, args.lr_scheduler_type) == ("epoch", False, None, "linear")
    assert parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "100"]).checkpointing_steps == 100
    with pytest.raises(ValueError, match="unknown default"):
        tu.add_training_args(argparse.ArgumentParser(), {"learning_rte": 1.0})


# ----------------------------------------------------------------------------- training helpers


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 3)
        self.LayerNorm = torch.nn.LayerNorm(3)
        self.frozen = torch.nn.Linear(2, 2, bias=False)
        self.frozen.weight.requires_grad_(False)


def test_optimizer_groups_skip_decay_for_biases_and_norms():
    model = Tiny()
    optimizer = tu.create_optimizer(model, learning_rate=1e-3, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3  # dense.bias, LayerNorm.weight, LayerNorm.bias
    assert glm_utils.count_parameters(model) == (12 + 3 + 3 + 3, 12 + 3 + 3 + 3 + 4)


def test_check_finite():
    tu.check_finite(torch.tensor(0.5), step=3)
    with pytest.raises(FloatingPointError, match="at step 7. Try bf16 instead of fp16"):
        tu.check_finite(torch.tensor(float("nan")), step=7)


@pytest.mark.parametrize("max_train_steps, expected_steps, expected_epochs", [(None, 9, 3), (7, 7, 3), (2, 2, 1)])
def test_create_lr_scheduler_sizes_the_run_from_sharded_accumulated_batches(max_train_steps, expected_steps,
                                                                             expected_epochs):
    # 10 batches over 2 processes: 5 per process and epoch; 2 per optimizer step: 3 steps an epoch.
    args = argparse.Namespace(max_train_steps=max_train_steps, num_train_epochs=3, gradient_accumulation_steps=2,
                              lr_scheduler_type="linear", warmup_ratio=0.5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    scheduler, batches_per_epoch = tu.create_lr_scheduler(args, optimizer, train_batches=10, num_processes=2)

    assert batches_per_epoch == 5
    assert (args.max_train_steps, args.num_train_epochs) == (expected_steps, expected_epochs)
    # Warmup: ceil(0.5 * steps) optimizer steps, each stepping the scheduler once per process.
    warmup = math.ceil(0.5 * expected_steps) * 2
    for _ in range(warmup):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


def test_length_grouped_indices():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    order = tu.length_grouped_indices(lengths, batch_size=4, seed=0)
    assert sorted(order) == list(range(1000))
    assert order == tu.length_grouped_indices(lengths, batch_size=4, seed=0)
    assert order != tu.length_grouped_indices(lengths, batch_size=4, seed=1)
    assert lengths[order[0]] == max(lengths)
    megabatch = order[:200]  # 50 batches of 4, sorted longest first
    assert [lengths[i] for i in megabatch] == sorted((lengths[i] for i in megabatch), reverse=True)
    grouped = [order[i : i + 4] for i in range(0, 1000, 4)]
    shuffled = [list(range(1000))[i : i + 4] for i in range(0, 1000, 4)]
    assert tu.padding_fraction(lengths, grouped) < 0.05 < tu.padding_fraction(lengths, shuffled)


def test_padding_fraction_hand_worked():
    # Batches padded to 4 and 3: 8 + 6 = 14 slots for 10 tokens.
    assert tu.padding_fraction([1, 2, 3, 4], [[0, 3], [1, 2]]) == pytest.approx(4 / 14)
