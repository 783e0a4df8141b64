"""Specification of run_cls.py: cloze classification fine-tuning, end to end on slices of TREC.

Runs call `run_cls.main(argv)` in-process with glm-tiny (random init) and a BPE trained on the
slice (`--tokenizer_name train`), so each takes seconds on a CPU; only the multi-process test
starts processes (torchrun, gloo). Every run gets a fresh Accelerate state, as a new process would.
"""

import csv
import json
import os
import pickle
import re
import subprocess
import sys
from glm_peft import PEFT_DEFAULT_LEARNING_RATES
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from cli import UsageError, run_script
import run_cls
from accelerate.state import AcceleratorState, GradientState
from conftest import count_tokenizer_calls, hub_unreachable, read_jsonl, run_main, write_csv
from training import TrainingTracker, find_checkpoint

REPO = Path(__file__).resolve().parents[1]
TREC = REPO.parent / "shared" / "data" / "trec"
REAL_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "glm-roberta-large"
needs_trec = pytest.mark.skipif(not (TREC / "train.csv").is_file(), reason="../shared/data/trec not present")

SCHEMA_KEYS = [
    "script", "task", "method", "peft", "model_name_or_path", "dataset", "prompt_id", "prompt_name",
    "learning_rate", "per_device_train_batch_size", "total_train_batch_size", "seed", "metric_for_best_model",
    "epochs", "best_epoch", "validation", "test", "test_labels_hidden", "baselines", "train_time_s", "train_examples_per_s",
    "peak_memory_mb", "trainable_params", "total_params", "trainable_share", "args", "launch", "env", "best_step",
    "few_shot", "carved_validation", "data",
]  # fmt: skip


def run(argv):
    return run_main(run_cls, argv)


@pytest.fixture(scope="module")
def trec(tmp_path_factory):
    """Slices of the real TREC files: the first 48 / 40 training rows and the first 37 test rows."""
    folder = tmp_path_factory.mktemp("trec")
    train = list(csv.DictReader(open(TREC / "train.csv", encoding="utf-8")))
    test = list(csv.DictReader(open(TREC / "test.csv", encoding="utf-8")))
    return {
        "train48": write_csv(folder / "train48.csv", train[:48]),
        "train40": write_csv(folder / "train40.csv", train[:40]),
        "test37": write_csv(folder / "test37.csv", test[:37]),
    }


def tiny(output_dir, train, validation, test, *extra):
    return ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train",
            "--train_file", train, "--validation_file", validation, "--test_file", test, "--output_dir", output_dir,
            "--seed", 0, *extra]  # fmt: skip


# ----------------------------------------------------------------------------- learning


@needs_trec
def test_learns_a_slice_of_trec_and_writes_results_and_predictions(trec, tmp_path):
    out = tmp_path / "run"
    # Validation is the training slice itself: the run must fit what it trains on. (Seed 2: of seeds 0-3,
    # whose best accuracies are 0.42, 0.54, 0.62, 0.54 in 60 steps, the one with room above the bar.)
    record = run(tiny(out, trec["train48"], trec["train48"], trec["test37"], "--learning_rate", 1e-3,
                      "--per_device_train_batch_size", 8, "--max_train_steps", 60, "--eval_steps", 15,
                      "--seed", 2))  # fmt: skip

    losses = [epoch["train_loss"] for epoch in record["epochs"]]
    assert [epoch["step"] for epoch in record["epochs"]] == [15, 30, 45, 60]
    assert losses[-1] < losses[0] - 0.3, losses
    best_accuracy = record["validation"]["accuracy"]
    majority = 12 / 48  # the commonest class of the 48 rows
    assert best_accuracy >= majority + 0.25, record["epochs"]
    assert best_accuracy == max(epoch["validation"]["accuracy"] for epoch in record["epochs"])

    saved = json.loads((out / "results.json").read_text())
    assert list(saved) == SCHEMA_KEYS
    assert (saved["script"], saved["task"], saved["method"], saved["peft"]) == ("run_cls.py", "cls", "glm_cloze", None)
    assert (saved["prompt_id"], saved["prompt_name"], saved["metric_for_best_model"]) == (0, "pick_the_best_descriptor", "accuracy")
    assert saved["trainable_params"] == saved["total_params"] and saved["trainable_share"] == 1.0
    assert saved["train_time_s"] > 0 and saved["train_examples_per_s"] > 0 and saved["peak_memory_mb"] > 0
    assert set(saved["test"]) == {"accuracy", "macro_f1"}
    assert set(saved["baselines"]["majority_class"]) == {"accuracy", "macro_f1"}
    assert saved["data"]["train"]["kept"] == 48 and saved["data"]["test"]["kept"] == 37

    rows = read_jsonl(out / "predictions_test.jsonl")
    assert len(rows) == 37
    choices = ["Description", "Entity", "Abbreviation", "Person", "Quantity", "Location"]
    for row in rows:
        assert set(row) == {"input", "gold", "predicted", "scores", "gold_index", "predicted_index", "choice_tokens"}
        assert row["input"].count("[MASK]") == 1 and list(row["scores"]) == choices
        assert row["predicted"] == max(row["scores"], key=row["scores"].get) and row["gold"] in choices
        assert (choices[row["gold_index"]], choices[row["predicted_index"]]) == (row["gold"], row["predicted"])
        assert len(row["choice_tokens"]) == 6 and min(row["choice_tokens"]) >= 1
    accuracy = sum(row["predicted"] == row["gold"] for row in rows) / len(rows)
    assert accuracy == pytest.approx(saved["test"]["accuracy"])


@needs_trec
def test_each_text_is_tokenized_once_per_split_before_training_not_at_every_batch(trec, tmp_path, monkeypatch):
    """Two epochs, two evaluations and the test: the tokenizer reads each context of the 40 training,
    40 validation and 37 test examples once, and the 6 answer choices once per split."""
    calls = count_tokenizer_calls(monkeypatch)
    record = run(tiny(tmp_path / "run", trec["train40"], trec["train40"], trec["test37"],
                      "--per_device_train_batch_size", 8, "--max_train_steps", 10, "--eval_steps", 5))  # fmt: skip
    assert [epoch["step"] for epoch in record["epochs"]] == [5, 10]
    contexts = [text for text in calls if "[MASK]" in text]
    assert len(contexts) == 40 + 40 + 37 and len(calls) - len(contexts) == 3 * 6


@needs_trec
def test_the_test_split_is_scored_with_the_best_weights_not_the_last(trec, tmp_path, monkeypatch):
    class FirstEvaluationWins(TrainingTracker):
        def record_evaluation(self, epoch, metrics, model):
            if self.history:  # every later evaluation scores 0
                metrics = dict.fromkeys(metrics, 0.0)
            return super().record_evaluation(epoch, metrics, model)

    monkeypatch.setattr(run_cls, "TrainingTracker", FirstEvaluationWins)
    out = tmp_path / "run"
    record = run(tiny(out, trec["train40"], trec["train40"], trec["test37"], "--learning_rate", 1e-3,
                      "--per_device_train_batch_size", 8, "--max_train_steps", 6, "--eval_steps", 2,
                      "--checkpointing_steps", 6, "--save_best_model"))  # fmt: skip
    assert (record["best_epoch"], record["best_step"]) == (0, 2)
    best = load_file(str(out / "best_model" / "model.safetensors"))
    last = load_file(str(out / "step_6" / "model.safetensors"))
    assert not torch.equal(best["glm.word_embeddings.weight"], last["glm.word_embeddings.weight"])
    # The saved best model, evaluated on its own, reproduces the run's test predictions.
    monkeypatch.undo()
    again = run(tiny(tmp_path / "again", trec["train40"], trec["train40"], trec["test37"], "--no-do_train",
                     "--model_name_or_path", out / "best_model", "--tokenizer_name", out / "best_model"))  # fmt: skip
    assert again["test"] == record["test"]
    assert read_jsonl(tmp_path / "again" / "predictions_test.jsonl") == read_jsonl(out / "predictions_test.jsonl")


# ----------------------------------------------------------------------------- processes


@needs_trec
def test_two_cpu_processes_give_the_metrics_and_predictions_of_one(trec, tmp_path):
    tokenizer = REAL_TOKENIZER if REAL_TOKENIZER.is_dir() else "train"
    args = ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name", tokenizer,
            "--train_file", trec["train40"], "--validation_file", trec["test37"], "--test_file", trec["test37"],
            "--no-do_train", "--per_device_eval_batch_size", 4, "--seed", 0]  # fmt: skip
    one = run([*args, "--output_dir", tmp_path / "one"])
    # Accelerate sets up distributed CPU runs only when told to use the CPU (see training.setup_accelerator).
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "run_cls.py"), *map(str, args), "--output_dir", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Num processes: 2" in done.stderr

    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["test"] == pytest.approx(one["test"], abs=1e-12)
    assert two["validation"] == pytest.approx(one["validation"], abs=1e-12)
    rows_one, rows_two = read_jsonl(tmp_path / "one" / "predictions_test.jsonl"), read_jsonl(tmp_path / "two" / "predictions_test.jsonl")
    assert len(rows_one) == len(rows_two) == 37  # 37 = 4 x 2 x 4 + 5: the last round is evened out, then dropped
    for a, b in zip(rows_one, rows_two):
        assert (a["input"], a["gold"], a["predicted"]) == (b["input"], b["gold"], b["predicted"])
        assert list(b["scores"].values()) == pytest.approx(list(a["scores"].values()), abs=1e-4)


# ----------------------------------------------------------------------------- resume and reproducibility


def resume_args(trec, output_dir, *extra):
    # 40 rows in batches of 4 with 2 accumulation steps: 5 optimizer steps an epoch; 12 steps
    # end in the middle of the third epoch. Dropout is on, so RNG restoring matters.
    return tiny(output_dir, trec["train40"], trec["test37"], trec["test37"], "--learning_rate", 1e-3,
                "--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 2, "--group_by_length",
                "--max_train_steps", 12, *extra)  # fmt: skip


class Killed(Exception):
    pass


@needs_trec
def test_a_killed_run_resumed_from_its_last_checkpoint_ends_like_an_uninterrupted_one(trec, tmp_path, monkeypatch):
    full = run(resume_args(trec, tmp_path / "full"))
    same_seed = run(resume_args(trec, tmp_path / "same_seed"))
    assert same_seed["epochs"] == full["epochs"] and same_seed["test"] == full["test"]
    assert [epoch["step"] for epoch in full["epochs"]] == [5, 10, 12]

    # The run dies in step 8; its last checkpoint is step_6 (epoch 1, 2 batches in).
    real_end_step = TrainingTracker.end_step

    def dies_in_step_8(tracker, *args):
        if tracker.completed_steps + 1 == 8:
            raise Killed
        return real_end_step(tracker, *args)

    monkeypatch.setattr(TrainingTracker, "end_step", dies_in_step_8)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        run(resume_args(trec, killed, "--checkpointing_steps", 3))
    monkeypatch.undo()
    assert sorted(path.name for path in killed.glob("step_*")) == ["step_3", "step_6"]
    # The best weights are stored once, beside the checkpoints, not in each of them.
    assert [path.name for path in killed.rglob("best_weights.safetensors")] == ["best_weights.safetensors"]
    assert (killed / "best_weights.safetensors").is_file()
    assert find_checkpoint("latest", killed) == killed / "step_6"
    assert not (killed / "results.json").exists()

    resumed = run(resume_args(trec, killed, "--checkpointing_steps", 3, "--resume_from_checkpoint", "latest"))
    assert resumed["epochs"] == full["epochs"]  # the same validation metrics and train losses, exactly
    assert (resumed["test"], resumed["best_epoch"], resumed["best_step"]) == (full["test"], full["best_epoch"], full["best_step"])
    assert read_jsonl(killed / "predictions_test.jsonl") == read_jsonl(tmp_path / "full" / "predictions_test.jsonl")


@needs_trec
def test_a_short_run_continued_to_the_full_length_ends_like_the_full_run(trec, tmp_path):
    # --max_train_steps 5 then resuming to 12: identical only with a schedule that does not
    # depend on the run length (a linear decay over 5 steps is another schedule than over 12).
    constant = ("--lr_scheduler_type", "constant", "--warmup_ratio", 0, "--checkpointing_steps", 5)
    full = run(resume_args(trec, tmp_path / "full", *constant))
    short_args = resume_args(trec, tmp_path / "short", *constant)
    short_args[short_args.index("--max_train_steps") + 1] = 5
    short = run(short_args)
    assert [epoch["step"] for epoch in short["epochs"]] == [5]
    resumed = run(resume_args(trec, tmp_path / "short", *constant, "--resume_from_checkpoint", tmp_path / "short" / "step_5",
                              "--overwrite_output_dir"))  # fmt: skip
    assert resumed["epochs"] == full["epochs"]
    assert resumed["test"] == full["test"]


@needs_trec
def test_zero_shot_by_flag_or_by_zero_epochs_is_the_same_evaluation(trec, tmp_path):
    no_train = run(tiny(tmp_path / "a", trec["train40"], trec["test37"], trec["test37"], "--no-do_train"))
    zero_epochs = run(tiny(tmp_path / "b", trec["train40"], trec["test37"], trec["test37"], "--num_train_epochs", 0))
    assert no_train["epochs"] == zero_epochs["epochs"] == [] and no_train["best_epoch"] is None
    assert no_train["test"] == zero_epochs["test"] and no_train["validation"] == zero_epochs["validation"]
    assert no_train["train_time_s"] == 0.0


@needs_trec
def test_the_validation_carve_follows_data_seed_alone_and_is_recorded(trec, tmp_path):
    def carve(name, *flags):
        argv = ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train",
                "--train_file", trec["train40"], "--test_file", trec["test37"], "--output_dir", tmp_path / name,
                "--validation_split_percentage", 25, "--no-do_train", *flags]  # fmt: skip
        return run(argv)["carved_validation"]

    seed_1, seed_2, data_seed_7 = carve("a", "--seed", 1), carve("b", "--seed", 2), carve("c", "--data_seed", 7)
    assert seed_1 == seed_2 == {"validation_split_percentage": 25, "data_seed": 42,
                                "validation_rows": seed_1["validation_rows"]}
    assert len(seed_1["validation_rows"]) == 10 and data_seed_7["validation_rows"] != seed_1["validation_rows"]


# ----------------------------------------------------------------------------- numerical faults


@needs_trec
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(trec, tmp_path, monkeypatch):
    real_score = run_cls.score_choices
    training_batches = []

    def nan_at_step_3(model, batch, length_normalize=False):
        scores = real_score(model, batch, length_normalize)
        if model.training:
            training_batches.append(1)
            if len(training_batches) == 3:
                return scores * float("nan")
        return scores

    monkeypatch.setattr(run_cls, "score_choices", nan_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=r"Non-finite loss \(nan\) at step 3.*bf16 instead of fp16.*--learning_rate"):
        run(tiny(out, trec["train40"], trec["test37"], trec["test37"], "--max_train_steps", 5, "--checkpointing_steps", 1))
    assert sorted(path.name for path in out.glob("step_*")) == ["step_1", "step_2"]
    assert not (out / "results.json").exists()
    weights = load_file(str(out / "step_2" / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert find_checkpoint("latest", out) == out / "step_2"


# ----------------------------------------------------------------------------- bad input


@needs_trec
def test_unknown_prompt_id_lists_the_valid_ones_and_overwrites_nothing(trec, tmp_path):
    previous = tmp_path / "o"
    for name in ("results.json", "step_5/training_state.json", "best_model/model.safetensors"):
        (previous / name).parent.mkdir(parents=True, exist_ok=True)
        (previous / name).write_text("{}")
    with pytest.raises(ValueError, match=r"Unknown --prompt_id 9; valid prompts:\n0: pick_the_best_descriptor") as error:
        run(tiny(previous, trec["train40"], trec["test37"], trec["test37"], "--prompt_id", 9, "--overwrite_output_dir"))
    assert "4: which_category_best_describes" in str(error.value)
    # --overwrite_output_dir removes the previous run only once every check has passed.
    assert all((previous / name).exists() for name in ("results.json", "step_5", "best_model"))


def test_a_template_field_missing_from_the_data_is_named(tmp_path):
    renamed = write_csv(tmp_path / "renamed.csv", [{"question": "Who?", "label_coarse": 3, "label_fine": 4}])
    with pytest.raises(ValueError, match=r"reads field\(s\) \['text'\].*available columns: \['label_coarse', 'label_fine', 'question'\]"):
        run(tiny(tmp_path / "o", renamed, renamed, renamed))


def test_a_label_outside_the_answer_choices_is_refused_with_its_row(tmp_path):
    rows = [{"text": "Who?", "label_coarse": 3, "label_fine": 4}, {"text": "What?", "label_coarse": 9, "label_fine": 4}]
    bad = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError, match=r"bad\.csv line 3 \(train split\): label_coarse 9 is outside the 6 answer choices \(0 to 5\)"):
        run(tiny(tmp_path / "o", bad, bad, bad))
    assert not (tmp_path / "o").exists()  # a failed run leaves no empty folder


def review_prompts(tmp_path, name, jinja):
    """A prompts/ folder with one local template for a "reviews" dataset (choices good ||| bad)."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "reviews.yaml").write_text(f"templates:\n  - name: {name}\n    jinja: \"{jinja}\"\n"
                                          "    answer_choices: good ||| bad\n")
    return prompts


def test_a_target_outside_a_local_templates_choices_is_refused(tmp_path):
    prompts = review_prompts(tmp_path, "good_or_bad", "{{ review }} All in all, it was [MASK]. ||| {{ verdict }}")
    data = write_csv(tmp_path / "reviews.csv", [{"review": "Tasty.", "verdict": "good"}, {"review": "Meh.", "verdict": "so-so"}])
    with pytest.raises(ValueError, match=r"reviews\.csv line 3 \(train split\): verdict 'so-so' is not one of the answer choices \['good', 'bad'\]"):
        run(tiny(tmp_path / "o", data, data, data, "--dataset_name", "reviews", "--prompts_dir", prompts))


def test_a_local_template_with_two_masks_is_refused(tmp_path):
    prompts = review_prompts(tmp_path, "two_blanks", "{{ review }} It was [MASK], really [MASK]. ||| {{ verdict }}")
    data = write_csv(tmp_path / "reviews.csv", [{"review": "Tasty.", "verdict": "good"}])
    with pytest.raises(ValueError, match=r"reviews\.csv line 2 \(train split\): Template 'two_blanks': The prompt has 2 \[MASK\] tokens; a cloze prompt needs at most one"):
        run(tiny(tmp_path / "o", data, data, data, "--dataset_name", "reviews", "--prompts_dir", prompts))


def test_answer_choices_longer_than_max_seq_length_stop_the_run_before_training_naming_the_example(tmp_path):
    train = reviews_csv(tmp_path / "train.csv", [0, 1] * 4)
    with pytest.raises(ValueError, match=r"^train example 0 \(data row 0\): its answer choices take \d+ tokens: "
                                         r"raise --max_seq_length above \d+$"):
        run(own_data(tmp_path, train, train, train, "--max_seq_length", 4))  # two choices: 2 tokens at least
    assert not (tmp_path / "run" / "results.json").exists()


@needs_trec
def test_an_empty_text_is_rendered_and_an_unrenderable_test_row_is_refused_or_skipped_on_request(trec, tmp_path, capsys):
    rows = list(csv.DictReader(open(trec["test37"], encoding="utf-8")))[:6]
    rows[1]["text"] = "   "
    data = write_csv(tmp_path / "blank.csv", rows)
    record = run(tiny(tmp_path / "blank", trec["train40"], data, data, "--no-do_train"))
    assert record["data"]["test"]["kept"] == 6 and len(read_jsonl(tmp_path / "blank" / "predictions_test.jsonl")) == 6

    rows[1]["label_coarse"] = ""
    data = write_csv(tmp_path / "no_label.csv", rows)
    with pytest.raises(ValueError, match=r"prompt 'pick_the_best_descriptor':\n  .*no_label\.csv line 3 \(validation "
                                         r"split\): label_coarse is empty\n[\s\S]*--skip_eval_rows"):
        run(tiny(tmp_path / "strict", trec["train40"], data, data, "--no-do_train"))
    assert not (tmp_path / "strict").exists()
    record = run(tiny(tmp_path / "skip", trec["train40"], data, data, "--no-do_train", "--skip_eval_rows"))
    assert (record["data"]["test"]["empty_field"], record["data"]["test"]["kept"], record["data"]["test"]["rows"]) == \
        (1, 5, 6)
    assert len(read_jsonl(tmp_path / "skip" / "predictions_test.jsonl")) == 5
    assert "(macro-F1" in (line := capsys.readouterr().out.splitlines()[-1]) and "on 5 of 6 test rows)" in line


class Payload:
    """Unpickling this would create a file: a stand-in for code hidden in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@needs_trec
def test_a_checkpoint_with_a_pickled_payload_is_refused_on_resume(trec, tmp_path):
    out = tmp_path / "run"
    run(tiny(out, trec["train40"], trec["test37"], trec["test37"], "--max_train_steps", 1, "--checkpointing_steps", 1))
    marker = tmp_path / "payload_ran"
    torch.save({"state": {}, "param_groups": Payload(marker)}, out / "step_1" / "optimizer.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run(tiny(out, trec["train40"], trec["test37"], trec["test37"], "--max_train_steps", 2,
                 "--resume_from_checkpoint", "latest", "--overwrite_output_dir"))  # fmt: skip
    assert not marker.exists()


def test_the_last_line_says_when_the_model_does_no_better_than_the_majority_class(tmp_path, capsys):
    rows = [{"text": f"Who wrote book {i} ?", "label_coarse": 3, "label_fine": 0} for i in range(12)]
    data = write_csv(tmp_path / "all_human.csv", rows)  # every label is the majority class: 1.0 to beat
    run(tiny(tmp_path / "run", data, data, data, "--no-do_train"))
    assert "vs majority class 1.0000 (no better than always answering it)" in capsys.readouterr().out
    data = write_csv(tmp_path / "mixed.csv", [{**row, "label_coarse": i % 6} for i, row in enumerate(rows)])
    run(tiny(tmp_path / "run2", data, data, data, "--no-do_train"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    accuracy, majority = (float(last.split(f"{name} ")[1].split()[0]) for name in ("test accuracy", "majority class"))
    assert ("no better than" in last) == (accuracy <= majority)


@needs_trec
def test_an_existing_finished_run_is_not_overwritten(trec, tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        run(tiny(out, trec["train40"], trec["test37"], trec["test37"]))
    assert "results.json exists: a finished run is there. Pass --overwrite_output_dir" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


@needs_trec
def test_an_unfinished_runs_checkpoints_are_not_trained_over(trec, tmp_path, capsys):
    out = tmp_path / "killed"
    (out / "step_1").mkdir(parents=True)
    (out / "step_1" / "training_state.json").write_text("{}")
    with pytest.raises(SystemExit):
        run(tiny(out, trec["train40"], trec["test37"], trec["test37"]))
    assert "holds the checkpoints of an unfinished run: pass --resume_from_checkpoint latest" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["step_1"]


@needs_trec
def test_resuming_without_a_checkpoint_says_how_to_get_one_before_any_work(trec, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tiny(tmp_path / "o", trec["train40"], trec["test37"], trec["test37"], "--resume_from_checkpoint", "latest"))
    assert re.search("no checkpoint in .*--checkpointing_steps", capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@needs_trec
def test_resuming_from_the_last_steps_checkpoint_trains_no_further_and_other_settings_are_refused(trec, tmp_path,
                                                                                                 capsys):
    out = tmp_path / "run"
    full = run(resume_args(trec, out, "--checkpointing_steps", 3))  # step_12 is the last step's checkpoint
    (out / "results.json").unlink()  # as if the run had died while testing

    resumed = run(resume_args(trec, out, "--checkpointing_steps", 3, "--resume_from_checkpoint", "latest"))
    assert resumed["epochs"] == full["epochs"] and resumed["test"] == full["test"]

    # Other settings are refused before any work (nothing in the run's folder changes).
    (out / "results.json").unlink()
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    with pytest.raises(SystemExit):
        run(resume_args(trec, out, "--checkpointing_steps", 3, "--resume_from_checkpoint", "latest",
                        "--learning_rate", 3e-3, "--seed", 1))  # fmt: skip
    error = capsys.readouterr().err
    assert "other settings (--learning_rate 0.001 there, 0.003 here; --seed 0 there, 1 here)" in error
    assert "or start over without --resume_from_checkpoint, in an empty --output_dir or with --overwrite_output_dir" in error
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    # A checkpoint past the steps asked for is refused (a bare folder name is looked for in --output_dir).
    with pytest.raises(ValueError, match="step_12 is 12 steps in, past --max_train_steps 9"):
        run(resume_args(trec, out, "--checkpointing_steps", 3, "--resume_from_checkpoint", "step_12",
                        "--max_train_steps", 9))  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--metric_for_best_model", "bleu"], "argument --metric_for_best_model: invalid choice: 'bleu'"),
        (["--no-do_train", "--resume_from_checkpoint", "latest"], "--resume_from_checkpoint continues training"),
        (["--max_seq_length", "2"], "--max_seq_length must be >= 4"),
        (["--no-do_train", "--peft_weights", "nowhere"], "--peft_weights: nowhere has no glm_peft.json"),
        (["--num_train_epochs", "1", "--peft_weights", "nowhere"], "evaluates saved PEFT weights without training"),
        (["--max_train_steps", "0", "--resume_from_checkpoint", "latest"], "--resume_from_checkpoint continues training"),
        (["--learning_rate", "-1"], "--learning_rate must be > 0, got -1.0"),
        (["--train_file", "x.csv"], "Local data files need --dataset_name NAME"),
        (["--model_name_or_path", "glm-tiny"], "glm-tiny has no tokenizer: pass --tokenizer_name train"),
        (["--num_shots", "0"], "--num_shots must be >= 1 (examples per class), got 0"),
        (["--shots_seed", "3"], "--shots_seed seeds the draw of --num_shots: pass --num_shots K too"),
        (["--num_shots", "8", "--max_train_samples", "100"], "--num_shots chooses the training rows"),
        (["--num_shots", "8", "--dataset_name", "trec", "--test_file", "README.md"],
         "--num_shots draws from the training data: pass --train_file"),
        (["--peft", "lora", "--lora_r", "0"], "--pre_seq_len, --prefix_hidden_size and --lora_r must be >= 1"),
        (["--peft", "ptuning_v2", "--pre_seq_len", "0"], "--pre_seq_len, --prefix_hidden_size and --lora_r must be"),
        (["--peft", "lora", "--lora_dropout", "2"], "--lora_dropout must be in [0, 1), got 2.0"),
    ],
)
def test_incompatible_or_impossible_flags_fail_at_parsing(flags, message, capsys):
    with pytest.raises(SystemExit):
        run_cls.parse_args(["--output_dir", "o", *flags])
    assert message in capsys.readouterr().err


def test_help_starts_with_a_short_usage_and_the_description_and_says_the_learning_rate_default(capsys):
    with pytest.raises(SystemExit):
        run_cls.parse_args(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"usage: {os.path.basename(sys.argv[0])} [options]"  # argparse's prog: sys.argv[0]
    assert lines[1:3] == ["", "Fine-tune GLM for classification as a cloze question."]
    flat = " ".join(" ".join(lines).split())
    assert "it depends on the method: 1e-5 with full fine-tuning, 5e-4 with --peft lora, 5e-3 with --peft ptuning_v2" \
        in flat


def test_output_dir_is_required_except_for_listing_prompts(capsys):
    with pytest.raises(SystemExit):
        run_cls.parse_args([])
    assert "--output_dir" in capsys.readouterr().err
    assert run_cls.parse_args(["--list_prompts"]).list_prompts


@needs_trec
def test_list_prompts_shows_each_prompt_with_its_choices_and_a_rendered_cloze(trec, capsys):
    assert run_cls.main(["--list_prompts", "--dataset_name", "trec", "--train_file", str(trec["train40"])]) is None
    out = capsys.readouterr().out
    assert out.startswith("0: pick_the_best_descriptor [promptsource] choices: Description ||| Entity")
    assert out.count("answer choices: ['Description', 'Entity', 'Abbreviation', 'Person', 'Quantity', 'Location']") == 5
    assert "Best Descriptor? [MASK]" in out and "--- 4: which_category_best_describes" in out



def test_list_prompts_of_a_hub_dataset_asks_the_hub_once_when_offline(monkeypatch, capsys):
    asked = hub_unreachable(monkeypatch)
    assert run_cls.main(["--list_prompts", "--dataset_name", "trec"]) is None
    out = capsys.readouterr().out
    assert len(asked) == 1 and datasets.config.HF_HUB_OFFLINE is True  # no retries: offline after one question
    assert out.startswith("0: pick_the_best_descriptor") and "(No rendered examples: the data could not be loaded." in out


# ----------------------------------------------------------------------------- PEFT


@needs_trec
def test_lora_trains_only_its_adapters_and_saves_only_them(trec, tmp_path):
    out = tmp_path / "lora"
    record = run(tiny(out, trec["train40"], trec["test37"], trec["test37"], "--peft", "lora", "--max_train_steps", 2,
                      "--save_best_model"))  # fmt: skip
    assert record["peft"] == "lora" and record["learning_rate"] == PEFT_DEFAULT_LEARNING_RATES["lora"]
    assert 0 < record["trainable_share"] < 0.5
    saved = load_file(str(out / "best_model" / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    assert sum(value.numel() for value in saved.values()) == record["trainable_params"]
    # peft's own loader reads the folder and scores the choices as our loader does (any base model).
    from peft import PeftModel

    from glm_peft import load_trainable_weights
    from glm_utils import multiple_choice_inputs_from_text, score_choices
    from modeling_glm import GLMForConditionalGeneration
    from tokenization_glm import load_tokenizer

    tokenizer = load_tokenizer(str(out / "best_model"))

    def base():
        torch.manual_seed(0)
        return GLMForConditionalGeneration.from_pretrained("glm-tiny", vocab_size=len(tokenizer)).eval()

    batch = multiple_choice_inputs_from_text(tokenizer, ["What is the capital of France ? [MASK]"],
                                             [["location", "number", "person"]])
    ours = score_choices(load_trainable_weights(base(), out / "best_model").eval(), batch)
    assert torch.equal(score_choices(PeftModel.from_pretrained(base(), out / "best_model").eval(), batch), ours)


@needs_trec
def test_saved_ptuning_weights_evaluated_with_peft_weights_score_the_test_set_as_the_run_did(trec, tmp_path, capsys):
    trained = tmp_path / "trained"
    first = run(tiny(trained, trec["train40"], trec["test37"], trec["test37"], "--peft", "ptuning_v2",
                     "--pre_seq_len", 4, "--max_train_steps", 3, "--save_best_model"))  # fmt: skip
    best_model = trained / "best_model"
    # The saved method and settings come from best_model: no --peft / --pre_seq_len here.
    evaluated = tmp_path / "evaluated"
    second = run(tiny(evaluated, trec["train40"], trec["test37"], trec["test37"], "--tokenizer_name", best_model,
                      "--peft_weights", best_model, "--no-do_train"))  # fmt: skip

    assert (second["peft"], second["args"]["pre_seq_len"]) == ("ptuning_v2", 4)
    assert second["trainable_params"] == first["trainable_params"]
    assert second["test"] == first["test"]
    assert read_jsonl(evaluated / "predictions_test.jsonl") == read_jsonl(trained / "predictions_test.jsonl")

    # Weights that do not fit the run are refused at parsing, before any work.
    capsys.readouterr()
    for flags, message in [
        (["--no-do_train", "--peft", "lora"], "holds ptuning_v2 weights, not lora: drop --peft"),
        (["--no-do_train", "--seed", 1], "trained on glm-tiny initialised with --seed 0: pass --seed 0"),
        ([], "--peft_weights evaluates saved PEFT weights without training: add --no-do_train"),
    ]:
        with pytest.raises(SystemExit):
            run(tiny(tmp_path / "refused", trec["train40"], trec["test37"], trec["test37"], "--tokenizer_name",
                     best_model, "--peft_weights", best_model, *flags))  # fmt: skip
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    # Evaluating into the training run's own folder would replace its results.
    with pytest.raises(SystemExit):
        run(tiny(trained, trec["train40"], trec["test37"], trec["test37"], "--tokenizer_name", best_model,
                 "--peft_weights", best_model, "--no-do_train", "--overwrite_output_dir"))  # fmt: skip
    assert "lies inside --output_dir" in capsys.readouterr().err and (trained / "results.json").exists()


# ----------------------------------------------------------------------------- your own data: hidden labels, lengths


GOOD, BAD = "tasty lovely fresh great", "stale bland awful soggy"


def reviews_csv(path, labels, words=2):
    """A csv of reviews (column review) with the given labels (0 good, 1 bad, -1 hidden): each
    review repeats its class's words `words` times."""
    rows = [{"review": " ".join([BAD if label == 1 else GOOD] * words) + f" #{i}", "label": label}
            for i, label in enumerate(labels)]
    return write_csv(path, rows)


def own_data(tmp_path, train, validation, test, *extra):
    """run_cls.py on reviews csv files with a local template "{{review}} It was [MASK]. ||| good / bad"."""
    prompts = tmp_path / "prompts"
    if not prompts.exists():
        review_prompts(tmp_path, "it_was", "{{ review }} It was [MASK]. ||| {{ answer_choices[label] }}")
    return ["--dataset_name", "reviews", "--prompts_dir", prompts, "--model_name_or_path", "glm-tiny",
            "--tokenizer_name", "train", "--train_file", train, "--validation_file", validation, "--test_file", test,
            "--output_dir", tmp_path / "run", "--seed", 0, "--per_device_train_batch_size", 4, "--max_train_steps", 2,
            *extra]  # fmt: skip


def test_hidden_test_labels_give_predictions_only_with_one_warning(tmp_path, caplog):
    train = reviews_csv(tmp_path / "train.csv", [0, 1] * 8)
    hidden = reviews_csv(tmp_path / "test.csv", [-1] * 6)
    with caplog.at_level("WARNING"):
        record = run(own_data(tmp_path, train, train, hidden))
    assert [m for m in caplog.messages if "hidden" in m] == [
        "test labels are hidden (every label is -1): writing predictions only, no test metrics."]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (saved["test"], saved["test_labels_hidden"], saved["baselines"]) == (None, True, {})
    assert set(saved["validation"]) == {"accuracy", "macro_f1"} and saved == json.loads(json.dumps(record))
    rows = read_jsonl(tmp_path / "run" / "predictions_test.jsonl")
    assert len(rows) == 6 and all(row["gold"] is None and row["predicted"] in ("good", "bad") for row in rows)
    # -1 never became the last choice: the rendered inputs hold no answer.
    assert all(row["input"].endswith("It was [MASK].") for row in rows)


def test_a_mix_of_hidden_and_real_test_labels_is_refused_naming_the_rows(tmp_path):
    train = reviews_csv(tmp_path / "train.csv", [0, 1] * 4)
    mixed = reviews_csv(tmp_path / "test.csv", [0, -1, 1, -1])
    with pytest.raises(ValueError, match=r"2 of 4 rows cannot be used.*\n  .*test\.csv line 3 \(test split\): label is "
                                         r"-1, the mark of a hidden label, but other rows of this split have labels\n"
                                         r"  .*test\.csv line 5 \(test split\)"):
        run(own_data(tmp_path, train, train, mixed))
    assert not (tmp_path / "run").exists()


def test_hidden_validation_labels_refuse_training_and_say_what_to_pass(tmp_path):
    train = reviews_csv(tmp_path / "train.csv", [0, 1] * 4)
    hidden = reviews_csv(tmp_path / "validation.csv", [-1] * 4)
    with pytest.raises(ValueError, match=r"The validation labels are hidden \(every label is -1\), but training picks "
                                         r"its best step on validation: pass a labelled --validation_file, or leave it "
                                         r"out to carve validation from the training data"):
        run(own_data(tmp_path, train, hidden, train))
    assert not (tmp_path / "run").exists()


def test_a_small_validation_set_is_warned_about(tmp_path, caplog):
    train = reviews_csv(tmp_path / "train.csv", [0, 1] * 4)
    with caplog.at_level("WARNING"):
        run(own_data(tmp_path, train, train, train, "--max_train_steps", 1))
    assert [m for m in caplog.messages if m.startswith("Validation has only 8 examples")]


def test_a_context_cut_at_exactly_the_position_limit_trains(tmp_path):
    long = reviews_csv(tmp_path / "long.csv", [0, 1] * 2, words=200)  # 800 words: past 512 tokens
    record = run(own_data(tmp_path, long, long, long, "--max_seq_length", 512, "--per_device_train_batch_size", 2,
                          "--max_train_steps", 1))
    assert record["data"]["train"]["cut_contexts"] == 4 and record["epochs"][0]["step"] == 1


def test_a_length_flag_past_the_position_table_fails_at_once_with_one_line(tmp_path):
    not_csv = tmp_path / "train.csv"
    not_csv.write_text('text,label\n"unclosed,0\n')  # never read: the lengths are checked first
    command = [sys.executable, str(REPO / "run_cls.py"), "--model_name_or_path", "glm-tiny", "--tokenizer_name",
               "train", "--dataset_name", "trec", "--train_file", str(not_csv), "--max_seq_length", "513",
               "--output_dir", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == ("run_cls.py: error: --max_seq_length 513 is longer than the 512 positions "
                                            "of glm-tiny; use at most 512 (contexts are cut around their [MASK])")
    assert not (tmp_path / "run").exists()


def interrupt_at_training_batch(monkeypatch, number):
    """Ctrl-C (a KeyboardInterrupt) in the forward pass of the `number`-th training batch."""
    real_score, batches = run_cls.score_choices, []

    def score(model, batch, length_normalize=False):
        if model.training:
            batches.append(1)
            if len(batches) == number:
                raise KeyboardInterrupt
        return real_score(model, batch, length_normalize)

    monkeypatch.setattr(run_cls, "score_choices", score)


def run_command(argv):
    """run_cls.py as a command (cli.run_script), in a fresh Accelerate state."""
    try:
        return run_script(run_cls.main, [str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.mark.parametrize("checkpoints, message", [
    (["--checkpointing_steps", 2], "Interrupted at step 3/5; the last checkpoint is {out}/step_2. Resume with the same "
                                   "command and --resume_from_checkpoint latest.\n"),
    ([], "Interrupted at step 3/5; no checkpoint was written: add --checkpointing_steps N (or epoch) to be able to "
         "resume.\n"),
])  # fmt: skip
def test_ctrl_c_in_training_says_how_to_resume_and_exits_130(checkpoints, message, tmp_path, monkeypatch, capsys):
    train = reviews_csv(tmp_path / "train.csv", [0, 1] * 4)
    interrupt_at_training_batch(monkeypatch, 3)
    with pytest.raises(SystemExit) as stop:
        run_command(own_data(tmp_path, train, train, train, "--max_train_steps", 5, *checkpoints))
    assert stop.value.code == 130
    assert capsys.readouterr().err.endswith(message.format(out=tmp_path / "run"))
