"""Specification of run_baseline.py: the baselines run on the data, prompts and metrics of run_cls.py /
run_gen.py, learn, and score answer choices as documented.

End-to-end runs call `run_baseline.main(argv)` in-process with tiny random models (roberta-tiny,
glm-tiny, bart-tiny, t5-tiny) and a BPE trained on the slice (`--tokenizer_name train`), on slices
of ../shared/data (skipped when absent). The scoring rules, inputs and models of each method are
specified in test_baselines.py.
"""

import argparse
import csv
import json
from pathlib import Path

import accelerate
import huggingface_hub.constants
import pytest
import torch
from conftest import read_jsonl, run_main, write_csv

import run_baseline as rb
import run_cls
import run_gen
import run_pretrain
from baselines import load_baseline_tokenizer
from modeling_glm import GLMForConditionalGeneration, GLMForSequenceClassification, UsageError
from data import load_raw_datasets
from metrics import generation_metrics
from templates import build_prompted_examples, group_references, load_templates
from training import TrainingTracker, results_record

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TREC, E2E = SHARED / "data" / "trec", SHARED / "data" / "e2e_nlg_cleaned"
needs_trec = pytest.mark.skipif(not (TREC / "train.csv").is_file(), reason="../shared/data/trec not present")
needs_e2e = pytest.mark.skipif(not (E2E / "train.csv").is_file(), reason="../shared/data/e2e_nlg_cleaned not present")

# run_cls.py's results.json, key for key and in order: results_record's schema, then the key
# run_cls.py adds (data).
ONE_CPU = argparse.Namespace(mixed_precision="no", num_processes=1, device=torch.device("cpu"))
SCHEMA_KEYS = [*results_record(argparse.Namespace(), "cls", "any", script="any", accelerator=ONE_CPU, prompt_id=None,
                               prompt_name=None,
                               total_train_batch_size=1, tracker=TrainingTracker("accuracy"), plan=None,
                               validation=None, test=None, baselines={}, trainable_params=1, total_params=1), "data"]
TREC_CHOICES = ["Description", "Entity", "Abbreviation", "Person", "Quantity", "Location"]


def run(argv):
    return run_main(rb, argv)  # a fresh Accelerate state, as a new process would have it


@pytest.fixture(scope="module")
def trec(tmp_path_factory):
    """The first 48 TREC training rows (train AND validation: a run must fit what it trains on) and
    the first 37 test rows."""
    folder = tmp_path_factory.mktemp("trec")
    train = list(csv.DictReader(open(TREC / "train.csv", encoding="utf-8")))
    test = list(csv.DictReader(open(TREC / "test.csv", encoding="utf-8")))
    return {"train": write_csv(folder / "train48.csv", train[:48]), "test": write_csv(folder / "test37.csv", test[:37]),
            "texts": [row["text"] for row in test[:37]]}


def trec_run(trec, out, method, model, steps, eval_steps):
    return run(["--method", method, "--model_name_or_path", model, "--tokenizer_name", "train",
                "--dataset_name", "trec", "--train_file", trec["train"], "--validation_file", trec["train"],
                "--test_file", trec["test"], "--output_dir", out, "--seed", 0, "--learning_rate", 1e-3,
                "--per_device_train_batch_size", 16, "--max_train_steps", steps, "--eval_steps", eval_steps])


def assert_learned(record, steps, eval_steps):
    """Training loss falls and the best validation (= the 48 training rows) beats the majority class."""
    losses = [epoch["train_loss"] for epoch in record["epochs"]]
    assert [epoch["step"] for epoch in record["epochs"]] == list(range(eval_steps, steps + 1, eval_steps))
    assert losses[-1] < losses[0] - 0.5, losses
    majority = 12 / 48  # the commonest class of the 48 rows
    assert record["validation"]["accuracy"] >= majority + 0.25, record["epochs"]


def assert_cls_outputs(out, record, method, model, prompt_id):
    saved = json.loads((out / "results.json").read_text())
    assert list(saved) == SCHEMA_KEYS == list(record)
    assert (saved["script"], saved["task"], saved["method"], saved["peft"]) == ("run_baseline.py", "cls", method, None)
    assert (saved["model_name_or_path"], saved["dataset"], saved["prompt_id"]) == (model, "trec", prompt_id)
    assert set(saved["test"]) == set(saved["baselines"]["majority_class"]) == {"accuracy", "macro_f1"}
    assert saved["data"]["train"]["kept"] == 48 and saved["data"]["test"]["kept"] == 37
    assert saved["trainable_params"] == saved["total_params"]
    rows = read_jsonl(out / "predictions_test.jsonl")
    assert len(rows) == 37
    for row in rows:
        assert set(row) == {"input", "gold", "predicted", "scores"} and list(row["scores"]) == TREC_CHOICES
        assert row["predicted"] == max(row["scores"], key=row["scores"].get)
    assert sum(r["predicted"] == r["gold"] for r in rows) / 37 == pytest.approx(saved["test"]["accuracy"])
    return rows


# ----------------------------------------------------------------------------- each method learns


@needs_trec
def test_linear_head_on_roberta_reads_the_raw_text_and_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "linear_head", "roberta-tiny", 40, 10)
    assert_learned(record, 40, 10)
    rows = assert_cls_outputs(tmp_path / "run", record, "linear_head", "roberta-tiny", None)
    # No template: the model read the question itself, and the prompt is recorded as none.
    assert [row["input"] for row in rows] == trec["texts"]
    assert record["prompt_name"] is None and record["args"]["text_column"] is None


@needs_trec
def test_a_process_other_than_the_main_one_finishes_without_writing(trec, tmp_path, monkeypatch):
    # What rank 1 of a 2-process launch does: every step, but no files and no record.
    monkeypatch.setattr(accelerate.Accelerator, "is_main_process", property(lambda self: False))
    assert trec_run(trec, tmp_path / "run", "linear_head", "roberta-tiny", 2, 2) is None
    assert not (tmp_path / "run" / "results.json").exists()


@needs_trec
def test_linear_head_on_glm_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "linear_head", "glm-tiny", 40, 10)
    assert_learned(record, 40, 10)
    assert_cls_outputs(tmp_path / "run", record, "linear_head", "glm-tiny", None)


@needs_trec
def test_mlm_prompt_fills_the_templates_answer_slot_and_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "mlm_prompt", "roberta-tiny", 40, 10)
    assert_learned(record, 40, 10)
    rows = assert_cls_outputs(tmp_path / "run", record, "mlm_prompt", "roberta-tiny", 0)
    assert record["prompt_name"] == "pick_the_best_descriptor"
    assert all(row["input"].startswith("Question: ") and row["input"].endswith("Best Descriptor? [MASK]")
               for row in rows)


@needs_trec
def test_seq2seq_rank_classification_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "seq2seq", "bart-tiny", 50, 25)
    assert_learned(record, 50, 25)
    assert_cls_outputs(tmp_path / "run", record, "seq2seq", "bart-tiny", 0)


@needs_e2e
def test_seq2seq_generation_on_e2e_decodes_each_source_once_against_all_references(tmp_path):
    out = tmp_path / "e2e"
    record = run(["--task", "gen", "--method", "seq2seq", "--model_name_or_path", "t5-tiny", "--tokenizer_name",
                  "train", "--dataset_name", "e2e_nlg_cleaned", "--train_file", E2E / "train.csv", "--validation_file", E2E / "validation.csv",
                  "--test_file", E2E / "test.csv", "--max_train_samples", 96, "--max_eval_samples", 8,
                  "--max_test_samples", 12, "--output_dir", out, "--learning_rate", 1e-3,
                  "--per_device_train_batch_size", 8, "--max_train_steps", 20, "--eval_steps", 10,
                  "--num_beams", 2, "--max_target_length", 24])
    losses = [epoch["train_loss"] for epoch in record["epochs"]]
    assert losses[-1] < losses[0] - 1.0, losses
    assert list(json.loads((out / "results.json").read_text())) == SCHEMA_KEYS
    assert (record["task"], record["method"], record["dataset"], record["prompt_id"]) == ("gen", "seq2seq",
                                                                                          "e2e_nlg_cleaned", 0)
    assert set(record["test"]) == set(record["baselines"]["most_frequent_reference"]) == {
        "bleu", "rouge1", "rouge2", "rougeL", "gen_len"}
    raw = load_raw_datasets("e2e_nlg_cleaned", test_file=E2E / "test.csv")
    template = load_templates("e2e_nlg_cleaned", task="gen")[0]
    examples, _ = build_prompted_examples(raw["test"].select(range(12)), template, "gen")
    sources, references = group_references(examples)
    rows = read_jsonl(out / "generations_test.jsonl")
    assert [r["source"] for r in rows] == sources and [r["references"] for r in rows] == references
    assert all(row["prediction"] for row in rows)
    assert generation_metrics([r["prediction"] for r in rows], references) == pytest.approx(record["test"])


# ----------------------------------------------------------------------------- models, tokenizers, flags


@pytest.mark.parametrize("flags, message", [
    (["--method", "linear_head", "--peft", "ptuning_v2"], "incompatible with the baselines"),
    (["--task", "gen", "--method", "linear_head"], "does cls only"),
    (["--task", "gen", "--method", "mlm_prompt"], "does cls only"),
    ([], "--method is required"),
    (["--method", "seq2seq", "--do_sample", "--num_beams", "4"],
     "--do_sample samples one sequence: pass --num_beams 1 with it"),
    (["--method", "mlm_prompt", "--text_column", "text"], "--text_column is for --method linear_head"),
    (["--task", "gen", "--method", "seq2seq", "--num_shots", "8"], "--num_shots draws K examples per class: "
                                                                  "classification only"),
])  # fmt: skip
def test_incompatible_flags_fail_at_parsing(flags, message, capsys):
    with pytest.raises(SystemExit):
        rb.parse_args([*flags, "--output_dir", "unused"])
    assert message in capsys.readouterr().err


def test_a_hub_model_offline_fails_before_any_work_naming_the_tiny_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match="roberta-large.*roberta-tiny\\|t5-tiny\\|bart-tiny\\|glm-tiny.*--tokenizer_name"):
        run(["--method", "linear_head", "--output_dir", tmp_path / "never"])  # default model: roberta-large
    assert not (tmp_path / "never").exists()
    with pytest.raises(UsageError, match="tokenizer 't5-large'.*t5-tiny"):
        load_baseline_tokenizer(rb.parse_args(["--method", "seq2seq", "--output_dir", "x"]), "t5", [], tmp_path)


def test_a_tiny_model_without_a_tokenizer_says_which_to_pass(capsys):
    with pytest.raises(SystemExit):
        rb.parse_args(["--method", "seq2seq", "--model_name_or_path", "bart-tiny", "--output_dir", "x"])
    assert "bart-tiny has no tokenizer: pass --tokenizer_name train" in capsys.readouterr().err


def test_glm_linear_head_puts_a_new_head_on_the_checkpoints_body_and_round_trips(tmp_path):
    torch.manual_seed(0)
    GLMForConditionalGeneration.from_pretrained("glm-tiny", vocab_size=300).save_pretrained(tmp_path / "lm")
    lm = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "lm"))
    model = GLMForSequenceClassification.from_pretrained(str(tmp_path / "lm"), num_labels=3).eval()
    for name, value in lm.glm.state_dict().items():
        assert torch.equal(model.glm.state_dict()[name], value), name
    ids = torch.tensor([[0, 11, 12, 13, 2], [0, 14, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    logits = model(ids, mask, labels=torch.tensor([0, 2])).logits
    # The head reads <s> only, and padding changes nothing.
    torch.testing.assert_close(model(ids[1:, :3]).logits, logits[1:])
    model.save_pretrained(tmp_path / "cls")
    again = GLMForSequenceClassification.from_pretrained(str(tmp_path / "cls")).eval()
    torch.testing.assert_close(again(ids, mask).logits, logits)
    with pytest.raises(ValueError, match="3-class head, not 4"):
        GLMForSequenceClassification.from_pretrained(str(tmp_path / "cls"), num_labels=4)


def test_list_prompts_needs_no_method_and_lists_the_tasks_prompts(capsys):
    assert rb.main(["--task", "gen", "--dataset_name", "e2e_nlg_cleaned", "--list_prompts"]) is None
    assert capsys.readouterr().out.splitlines()[0] == "0: coherent_text [promptsource]"


# ----------------------------------------------------------------------------- positions, hidden labels


def test_a_length_past_the_models_positions_is_refused_before_the_data(tmp_path):
    with pytest.raises(ValueError) as error:
        run(["--method", "linear_head", "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train",
             "--dataset_name", "fine_foods", "--max_seq_length", 600, "--output_dir", tmp_path / "never"])
    assert str(error.value) == "--max_seq_length 600 is longer than the 512 positions of glm-tiny; use at most 512"
    assert not (tmp_path / "never").exists()


def test_hidden_test_labels_give_predictions_only(tmp_path):
    rows = [{"text": f"{'great tasty' if i % 2 else 'awful bland'} {i}", "label_coarse": i % 6, "label_fine": 0}
            for i in range(12)]
    train = write_csv(tmp_path / "train.csv", rows)
    hidden = write_csv(tmp_path / "test.csv", [{**row, "label_coarse": -1} for row in rows[:5]])
    record = run(["--method", "linear_head", "--model_name_or_path", "roberta-tiny", "--tokenizer_name", "train",
                  "--dataset_name", "trec", "--train_file", train, "--validation_file", train, "--test_file", hidden,
                  "--max_train_steps", 1, "--output_dir", tmp_path / "run"])
    assert (record["test"], record["test_labels_hidden"], record["baselines"]) == (None, True, {})
    rows = read_jsonl(tmp_path / "run" / "predictions_test.jsonl")
    assert len(rows) == 5 and all(row["gold"] is None and row["predicted"] in TREC_CHOICES for row in rows)


def test_hidden_train_labels_evaluate_untrained_without_a_trivial_baseline(tmp_path, capsys):
    rows = [{"text": f"{'great tasty' if i % 2 else 'awful bland'} {i}", "label_coarse": i % 6, "label_fine": 0}
            for i in range(12)]
    hidden = write_csv(tmp_path / "train.csv", [{**row, "label_coarse": -1} for row in rows])
    test = write_csv(tmp_path / "test.csv", rows[:5])
    record = run(["--method", "linear_head", "--model_name_or_path", "roberta-tiny", "--tokenizer_name", "train",
                  "--dataset_name", "trec", "--train_file", hidden, "--test_file", test, "--no-do_train",
                  "--output_dir", tmp_path / "run"])
    assert record["baselines"] == {} and 0 <= record["test"]["accuracy"] <= 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        f"linear_head [roberta-tiny] test accuracy {record['test']['accuracy']:.4f}; best epoch None; results in ")


def test_run_gen_and_run_pretrain_have_no_num_shots(capsys):
    for script in (run_gen, run_pretrain):
        with pytest.raises(SystemExit):
            script.parse_args(["--num_shots", "8", "--output_dir", "unused"])
        assert "unrecognized arguments: --num_shots 8" in capsys.readouterr().err


@needs_trec
def test_few_shot_cloze_and_linear_head_train_and_validate_on_the_same_rows(trec, tmp_path):
    def few_shot(script, out, *flags):
        return run_main(script, ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name",
                                 "train", "--train_file", trec["train"], "--test_file", trec["test"], "--num_shots", 2,
                                 "--shots_seed", 7, "--max_train_steps", 1, "--max_test_samples", 4,
                                 "--output_dir", tmp_path / out, *flags])  # fmt: skip

    cloze = few_shot(run_cls, "cloze", "--seed", 3, "--prompt_id", 1)
    head = few_shot(rb, "head", "--method", "linear_head", "--seed", 5)  # another training seed, the same draw

    assert cloze["few_shot"]["train_rows"] == head["few_shot"]["train_rows"]
    assert cloze["few_shot"]["validation_rows"] == head["few_shot"]["validation_rows"]
    # The 48 rows hold 12, 11, 2, 11, 8, 4 of the classes 0-5 (label_coarse, read here without data.py):
    # 2 of each for train, 2 more for validation but none of class 2 (ABBR), which had only 2.
    labels = [row["label_coarse"] for row in csv.DictReader(open(trec["train"], encoding="utf-8"))]
    for record in (cloze, head):
        train, validation = record["few_shot"]["train_rows"], record["few_shot"]["validation_rows"]
        assert not set(train) & set(validation)
        assert sorted(labels[i] for i in train) == ["0", "0", "1", "1", "2", "2", "3", "3", "4", "4", "5", "5"]
        assert sorted(labels[i] for i in validation) == ["0", "0", "1", "1", "3", "3", "4", "4", "5", "5"]
        assert record["few_shot"]["short_classes"] == ["2"]
        assert (record["data"]["train"]["kept"], record["data"]["validation"]["kept"]) == (12, 10)
        assert (record["args"]["num_shots"], record["args"]["shots_seed"]) == (2, 7)
    assert json.loads((tmp_path / "cloze" / "results.json").read_text())["few_shot"] == cloze["few_shot"]
