"""Specification of training.py: one behaviour per test, expected values worked out by hand."""

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from cli import (
    ArgumentParser,
    UsageError,
    add_data_and_prompt_args,
    add_training_args,
    data_args_problems,
    derived_defaults,
    few_shot_problems,
    offline_unless_hub_answers,
    position_problem,
    run_script,
    training_args_problems,
)
import datasets
import huggingface_hub
import pytest
import torch

from glm_peft import PEFT_FLAGS, add_prefix_encoder, count_parameters, save_trainable_weights
from modeling_glm import GLMForConditionalGeneration
from accelerate.state import AcceleratorState, GradientState

from benchmarks.bench import padding_fraction
from reporting import analysis
import run_cls
from metrics import CLS_METRICS, generation_metrics, higher_is_better
from training import (
    EpochSampler,
    TrainingPlan,
    TrainingTracker,
    clear_previous_run,
    create_lr_scheduler,
    create_optimizer,
    environment_info,
    find_checkpoint,
    results_record,
    safe_name,
    save_checkpoint,
    setup_accelerator,
    write_json_atomic,
    write_jsonl_atomic,
)

from conftest import hub_unreachable, write

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
PROMPTS = REPO / "prompts"



def test_overwrite_output_dir_removes_the_previous_runs_outputs_unless_resuming(tmp_path):
    def previous_run(out):
        for name in ("results.json", "predictions_test.jsonl", "step_3/training_state.json", "epoch_0/model.bin",
                     "best_model/adapter_model.safetensors", "tokenizer/vocab.json", "notes.txt"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            write(out / name, "x")
        return out

    def flags(overwrite, resume=None):
        return argparse.Namespace(overwrite_output_dir=overwrite, resume_from_checkpoint=resume)

    out = previous_run(tmp_path / "a")
    clear_previous_run(flags(True), out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "tokenizer"]

    for name, settings in (("b", flags(True, resume="latest")), ("c", flags(False))):
        out = previous_run(tmp_path / name)
        clear_previous_run(settings, out)
        assert len(list(out.iterdir())) == 7


def test_atomic_writes_leave_no_temp_files_and_keep_the_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"b": 1, "a": [1.5]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5]}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5]}
    write_jsonl_atomic(tmp_path / "p.jsonl", [{"i": 0}, {"i": 1}])
    assert (tmp_path / "p.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "results.json"]


def test_safe_name():
    assert safe_name("../../etc") == "etc"
    assert safe_name("CogComp/trec") == "CogComp_trec"
    assert safe_name("what category? v2.1") == "what_category_v2.1"
    with pytest.raises(ValueError):
        safe_name("/..")


def test_environment_info_has_the_versions():
    info = environment_info()
    assert set(info) == {"python", "torch", "transformers", "accelerate", "datasets", "peft", "promptsource", "git_commit", "git_dirty"}
    assert info["datasets"] == datasets.__version__
    assert info["git_commit"] is None or len(info["git_commit"]) == 40


def test_results_record_schema():
    parser = argparse.ArgumentParser()
    add_data_and_prompt_args(parser, "cls")
    add_training_args(parser, CLS_METRICS)
    args = parser.parse_args(["--output_dir", "out", "--train_file", "t.csv", "--dataset_name", "",
                              "--metric_for_best_model", "accuracy"])
    tracker = TrainingTracker("accuracy")
    tracker.completed_steps, tracker.train_time_s, tracker.train_examples = 10, 2.0, 20
    tracker.record_evaluation(0, {"accuracy": 0.5}, torch.nn.Linear(1, 1))
    plan = TrainingPlan(batches_per_epoch=4, gradient_accumulation_steps=2, max_train_steps=10)
    record = results_record(
        args, "cls", "glm_cloze", script="run_cls.py", prompt_id=1, prompt_name="trec1", total_train_batch_size=32,
        accelerator=argparse.Namespace(mixed_precision="bf16", num_processes=2, device=torch.device("cpu")),
        tracker=tracker, plan=plan, validation={"accuracy": 0.5}, test={"accuracy": 0.4},
        baselines={"majority_class": {"accuracy": 0.2}}, trainable_params=25, total_params=100,
    )
    assert list(record) == [
        "script", "task", "method", "peft", "model_name_or_path", "dataset", "prompt_id", "prompt_name",
        "learning_rate", "per_device_train_batch_size", "total_train_batch_size", "seed", "metric_for_best_model",
        "epochs", "best_epoch", "validation", "test", "test_labels_hidden", "baselines", "train_time_s",
        "train_examples_per_s", "peak_memory_mb", "trainable_params", "total_params", "trainable_share", "args",
        "launch", "env", "best_step", "few_shot", "carved_validation",
    ]
    assert record["few_shot"] is None and record["carved_validation"] is None  # no --num_shots, nothing carved
    assert record["test_labels_hidden"] is False
    assert record["launch"] == {"mixed_precision": "bf16", "num_processes": 2, "device_type": "cpu"}
    assert record["dataset"] == {"train": "t.csv"}
    assert record["trainable_share"] == 0.25 and record["train_examples_per_s"] == 10.0
    assert (record["best_epoch"], record["best_step"], record["epochs"]) == (0, 10, tracker.history)
    assert (record["learning_rate"], record["seed"], record["args"]["output_dir"]) == (1e-5, 42, "out")
    # The length the run had: 10 steps of 2 an epoch (4 batches, 2 per step) are 5 epochs.
    assert (record["args"]["max_train_steps"], record["args"]["num_train_epochs"]) == (10, 5)
    json.dumps(record)


def test_data_and_prompt_args_defaults_per_task():
    cls_args = add_data_and_prompt_args(argparse.ArgumentParser(), "cls").parse_args([])
    gen_args = add_data_and_prompt_args(argparse.ArgumentParser(), "gen").parse_args(["--no-skip_empty", "--max_eval_samples", "5"])
    assert data_args_problems(cls_args, "cls") == [] == data_args_problems(gen_args, "gen")
    assert cls_args.dataset_name is None  # the checks change nothing: derived_defaults gives the default
    vars(cls_args).update(derived_defaults(cls_args, "cls"))
    vars(gen_args).update(derived_defaults(gen_args, "gen"))
    assert (cls_args.dataset_name, cls_args.skip_empty, cls_args.prompts_dir, cls_args.prompt_id) == ("trec", True, "prompts", None)
    assert (gen_args.dataset_name, gen_args.skip_empty, gen_args.max_eval_samples) == ("e2e_nlg_cleaned", False, 5)


def test_local_files_need_a_dataset_name_and_must_exist(tmp_path):
    parser = add_data_and_prompt_args(argparse.ArgumentParser(), "cls")
    data = write(tmp_path / "mine.csv", "text,label\nfine,0\n")
    unnamed = parser.parse_args(["--train_file", str(data), "--test_file", str(tmp_path / "missing.csv")])
    problems = data_args_problems(unnamed, "cls")
    assert problems[0].startswith("Local data files need --dataset_name NAME: the name chooses the prompts")
    assert problems[1:] == [f"--test_file {tmp_path / 'missing.csv'} does not exist"]
    named = parser.parse_args(["--train_file", str(data), "--dataset_name", "reviews", "--max_predict_samples", "3"])
    assert data_args_problems(named, "cls") == [] and (named.dataset_name, named.max_test_samples) == ("reviews", 3)
    assert derived_defaults(named, "cls") == {"dataset_name": "reviews"}


def test_derived_defaults_give_the_draw_seed_and_dataset_without_changing_the_flags():
    args = argparse.Namespace(dataset_name=None, train_file=None, validation_file=None, test_file=None, num_shots=4,
                              shots_seed=None, peft_weights=None)
    assert few_shot_problems(argparse.Namespace(**{**vars(args), "max_train_samples": None}), "cls") == []
    assert derived_defaults(args, "cls") == {"dataset_name": "trec", "shots_seed": 0}
    assert (args.dataset_name, args.shots_seed) == (None, None)
    assert derived_defaults(argparse.Namespace(**{**vars(args), "shots_seed": 3}), "gen") == {
        "dataset_name": "e2e_nlg_cleaned"}


def test_training_args_defaults():
    parser = add_training_args(argparse.ArgumentParser(), CLS_METRICS)
    args = parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "epoch", "--no-do_train"])
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size, args.warmup_ratio) == (1e-5, 0.1, 16, 0.1)
    assert (args.checkpointing_steps, args.do_train, args.eval_steps, args.lr_scheduler_type) == ("epoch", False, None, "linear")
    assert parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "100"]).checkpointing_steps == 100


def test_a_multi_process_launch_that_accelerate_runs_as_one_is_refused(monkeypatch):
    args = argparse.Namespace(gradient_accumulation_steps=1, seed=0, output_dir="o", with_tracking=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun on CPUs without ACCELERATE_USE_CPU
    try:
        with pytest.raises(UsageError, match="ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2"):
            setup_accelerator(args)
        monkeypatch.setenv("WORLD_SIZE", "1")
        assert setup_accelerator(args).num_processes == 1
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 3)
        self.LayerNorm = torch.nn.LayerNorm(3)
        self.frozen = torch.nn.Linear(2, 2, bias=False)
        self.frozen.weight.requires_grad_(False)


def test_optimizer_groups_skip_decay_for_biases_and_norms():
    model = Tiny()
    optimizer = create_optimizer(model, learning_rate=1e-3, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3  # dense.bias, LayerNorm.weight, LayerNorm.bias
    assert count_parameters(model) == (12 + 3 + 3 + 3, 12 + 3 + 3 + 3 + 4)


class OneProcess:
    """What TrainingTracker.end_step needs of an Accelerator, for one process; keeps what it logs."""

    def __init__(self):
        self.logged = []

    @staticmethod
    def reduce(tensor, reduction):
        return tensor.clone()

    def log(self, values, step):
        self.logged.append((step, values))


class Bar:
    """What end_step needs of a progress bar."""

    def __init__(self):
        self.n, self.postfix = 0, None

    def update(self, n):
        self.n += n

    def set_postfix(self, **postfix):
        self.postfix = postfix


EVERY_THIRD = SimpleNamespace(checkpoint_at=lambda step: f"step_{step}" if step % 3 == 0 else None)


def end_step(tracker, accelerator=None):
    """tracker.end_step with a fake accelerator, bar and plan (checkpoints every third step)."""
    return tracker.end_step(accelerator or OneProcess(), EVERY_THIRD, Bar(), time.perf_counter())


def test_the_step_loss_is_the_mean_of_its_batches_logged_with_the_updates_rate_and_a_non_finite_one_stops_the_step():
    scheduler = SimpleNamespace(get_last_lr=lambda: [0.5])
    tracker, accelerator, bar = TrainingTracker("accuracy", lr_scheduler=scheduler), OneProcess(), Bar()
    tracker.add_batch(torch.tensor(2.0), 4)
    scheduler.get_last_lr = lambda: [0.25]  # moved within a step: the step's first batch read its rate
    tracker.add_batch(torch.tensor(1.0), 4)
    assert tracker.end_step(accelerator, EVERY_THIRD, bar, time.perf_counter()) == (1, None)
    assert accelerator.logged == [(1, {"train/loss": 1.5, "train/learning_rate": 0.5})]
    assert (bar.n, bar.postfix, tracker.completed_steps) == (1, {"loss": "1.500"}, 1)
    tracker.completed_steps = 2
    tracker.add_batch(torch.tensor(4.0), 3)
    assert tracker.end_step(accelerator, EVERY_THIRD, bar, time.perf_counter()) == (3, "step_3")
    assert accelerator.logged[-1] == (3, {"train/loss": 4.0, "train/learning_rate": 0.25})
    assert (tracker.loss_sum, tracker.loss_count, tracker.train_examples) == (7.0, 3, 11)
    assert tracker.train_time_s > 0
    tracker.completed_steps = 6
    tracker.add_batch(torch.tensor(float("nan")), 4)
    with pytest.raises(UsageError, match="at step 7. Try bf16 instead of fp16"):
        end_step(tracker, accelerator)
    assert tracker.completed_steps == 6 and len(accelerator.logged) == 2


@pytest.mark.parametrize("max_train_steps, expected_steps, expected_epochs", [(None, 9, 3), (7, 7, 3), (2, 2, 1)])
def test_the_plan_sizes_the_run_from_sharded_accumulated_batches(max_train_steps, expected_steps, expected_epochs):
    # 10 batches over 2 processes: 5 per process and epoch; 2 per optimizer step: 3 steps an epoch.
    args = argparse.Namespace(max_train_steps=max_train_steps, num_train_epochs=3, gradient_accumulation_steps=2,
                              lr_scheduler_type="linear", warmup_ratio=0.5, eval_steps=None, checkpointing_steps=None)
    plan = TrainingPlan.from_args(args, train_batches=10, num_processes=2)
    assert (plan.batches_per_epoch, plan.steps_per_epoch) == (5, 3)
    assert (plan.max_train_steps, plan.num_train_epochs) == (expected_steps, expected_epochs)
    assert args.max_train_steps == max_train_steps  # the flags stay as given

    # Warmup: ceil(0.5 * steps) optimizer steps, each stepping the scheduler once per process.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = create_lr_scheduler(args, optimizer, plan.max_train_steps, num_processes=2)
    for _ in range(math.ceil(0.5 * expected_steps) * 2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


def test_the_plan_evaluates_checkpoints_and_resumes_at_the_right_steps():
    # 7 batches per epoch, 2 per step: 4 steps an epoch (the last of 1 batch); 10 steps in all.
    plan = TrainingPlan(batches_per_epoch=7, gradient_accumulation_steps=2, max_train_steps=10, checkpointing_steps=3)
    assert [step for step in range(1, 11) if plan.evaluates_at(step)] == [4, 8, 10]
    assert [plan.checkpoint_at(step) for step in (3, 4, 6)] == ["step_3", None, "step_6"]
    each_epoch = TrainingPlan(7, 2, 10, eval_steps=3, checkpointing_steps="epoch")
    assert [step for step in range(1, 11) if each_epoch.evaluates_at(step)] == [3, 6, 9, 10]
    assert [each_epoch.checkpoint_at(step) for step in (4, 6, 8)] == ["epoch_0", None, "epoch_1"]
    assert plan.resume_position(6) == (1, 4)  # 2 steps into epoch 1: skip 4 batches
    assert plan.resume_position(8) == (2, 0)
    assert plan.resume_position(10) == (3, 0) and plan.num_train_epochs == 3  # nothing left


def test_the_epoch_order_depends_on_seed_and_epoch_only_and_groups_lengths():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    sampler = EpochSampler(1000, seed=0, lengths=lengths, batch_size=4)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert order == list(EpochSampler(1000, seed=0, lengths=lengths, batch_size=4))
    assert order != list(EpochSampler(1000, seed=1, lengths=lengths, batch_size=4))
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order
    assert lengths[order[0]] == max(lengths)  # an out-of-memory error shows on the first step
    grouped = [order[i : i + 4] for i in range(0, 1000, 4)]
    shuffled = list(EpochSampler(1000, seed=0))
    assert sorted(shuffled) == list(range(1000)) and shuffled != list(range(1000))
    shuffled = [shuffled[i : i + 4] for i in range(0, 1000, 4)]
    assert padding_fraction(lengths, grouped) < 0.05 < padding_fraction(lengths, shuffled)


@pytest.mark.parametrize("lengths", [None, [(i * 37) % 101 + 1 for i in range(200)]])
def test_no_two_seed_epoch_pairs_share_an_order(lengths):
    # The sweeps' seeds 42, 43, 44 over 3 epochs: seed + epoch gave seed 43's epoch 0 seed 42's epoch 1.
    orders = []
    for seed in (42, 43, 44):
        sampler = EpochSampler(200, seed, lengths, batch_size=4)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            orders.append(tuple(sampler))
    assert len(set(orders)) == 9


def test_padding_fraction_hand_worked():
    # Batches padded to 4 and 3: 8 + 6 = 14 slots for 10 tokens.
    assert padding_fraction([1, 2, 3, 4], [[0, 3], [1, 2]]) == pytest.approx(4 / 14)


def test_training_tracker_keeps_the_best_weights_once_and_round_trips(tmp_path):
    model = torch.nn.Linear(2, 1)
    settings = {"metric_for_best_model": "accuracy", "seed": 1, "num_processes": 1}
    tracker = TrainingTracker("accuracy", settings)
    tracker.add_batch(torch.tensor(2.0), 4)
    tracker.add_batch(torch.tensor(1.0), 4)
    end_step(tracker)
    tracker.completed_steps = 5
    assert tracker.record_evaluation(0, {"accuracy": 0.5}, model)
    best_weight = model.weight.detach().clone()
    (tmp_path / "step_5").mkdir()
    tracker.save(tmp_path / "step_5")
    written = (tmp_path / "best_weights.safetensors").stat().st_mtime_ns
    with torch.no_grad():
        model.weight.add_(1.0)
    tracker.completed_steps = 10
    assert not tracker.record_evaluation(1, {"accuracy": 0.5}, model)  # a tie keeps the earlier one
    assert tracker.history == [
        {"epoch": 0, "step": 5, "train_loss": 1.5, "validation": {"accuracy": 0.5}},
        {"epoch": 1, "step": 10, "train_loss": None, "validation": {"accuracy": 0.5}},
    ]
    (tmp_path / "step_10").mkdir()
    tracker.save(tmp_path / "step_10")  # the same best weights are not written again
    assert (tmp_path / "best_weights.safetensors").stat().st_mtime_ns == written
    assert sorted(p.name for p in (tmp_path / "step_10").iterdir()) == ["training_state.json"]

    loaded = TrainingTracker("accuracy", settings)
    loaded.load(tmp_path / "step_10", max_train_steps=12)
    assert loaded.state_dict() == tracker.state_dict() and loaded.best == tracker.history[0]
    assert loaded.restore_best(model) == {"accuracy": 0.5} and torch.equal(model.weight, best_weight)
    with pytest.raises(ValueError, match=r"other settings \(--num_processes 1 there, 2 here; --seed 1 there, 0 here\): "
                                         "resume with the same flags and number of processes"):
        TrainingTracker("accuracy", {**settings, "num_processes": 2, "seed": 0}).load(tmp_path / "step_10", 12)
    with pytest.raises(ValueError, match="step_10 is 10 steps in, past --max_train_steps 9"):
        TrainingTracker("accuracy", settings).load(tmp_path / "step_10", max_train_steps=9)
    with pytest.raises(UsageError, match="--resume_from_checkpoint .*no training_state.json"):
        find_checkpoint(tmp_path, tmp_path)
    assert find_checkpoint("latest", tmp_path) == tmp_path / "step_10"


@pytest.mark.parametrize("metric, values, best", [("loss", [2.0, 1.5, 1.8], 1), ("perplexity", [9.0, 9.0, 4.0], 2),
                                                   ("token_accuracy", [0.2, 0.5, 0.4], 1)])
def test_the_best_evaluation_follows_the_metrics_direction(metric, values, best):
    tracker, model = TrainingTracker(metric), torch.nn.Linear(2, 1)
    for step, value in enumerate(values):
        tracker.completed_steps = step + 1
        tracker.record_evaluation(0, {metric: value}, model)
    assert tracker.best_index == best
    assert analysis.higher_is_better is higher_is_better and not higher_is_better("loss")


def test_best_weights_replaced_after_a_checkpoint_are_taken_again_from_the_resumed_run(tmp_path):
    model = torch.nn.Linear(2, 1)
    first = TrainingTracker("accuracy")
    first.completed_steps = 2
    first.record_evaluation(0, {"accuracy": 0.5}, model)
    (tmp_path / "step_3").mkdir()
    first.completed_steps = 3
    first.save(tmp_path / "step_3")
    with torch.no_grad():
        model.weight.add_(1.0)
    first.completed_steps = 4
    first.record_evaluation(0, {"accuracy": 0.7}, model)  # a better evaluation after step_3 ...
    (tmp_path / "step_6").mkdir()
    first.save(tmp_path / "step_6")  # ... replaces the best weights of step_3's best (step 2)

    resumed = TrainingTracker("accuracy")
    resumed.load(tmp_path / "step_3", max_train_steps=6)  # step 4 lies ahead: it will be evaluated again
    with pytest.raises(RuntimeError, match=r"best evaluation \(step 2\) were replaced"):
        resumed.restore_best(model)
    resumed.completed_steps = 4
    resumed.record_evaluation(0, {"accuracy": 0.7}, model)
    assert resumed.restore_best(model) == {"accuracy": 0.7}
    with pytest.raises(UsageError, match="holds the weights of step 4, not those of the best evaluation"):
        TrainingTracker("accuracy").load(tmp_path / "step_3", max_train_steps=3)


# ----------------------------------------------------------------------------- mistakes, before any work


def test_a_checks_error_prints_one_line_and_exits_2_a_bug_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_x.py"])

    def a_check_fails(argv):
        safe_name("/..")  # training.py raises: a message written for the user

    with pytest.raises(SystemExit) as stop:
        run_script(a_check_fails, [])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "run_x.py: error: Name '/..' has no characters usable in a file name.\n"
    with pytest.raises(ValueError, match="no characters usable"):  # --debug: the traceback
        run_script(a_check_fails, ["--debug"])

    def a_bug(argv):
        TrainingPlan.from_args(None, 1, 1)  # Python's AttributeError inside our code: a bug, not a check

    with pytest.raises(AttributeError):
        run_script(a_bug, [])

    def an_internal_invariant_fails(argv):
        generation_metrics([], [])  # our own `raise ValueError` of a broken invariant: a bug, not the user's

    with pytest.raises(ValueError, match="Need one prediction per source") as raised:
        run_script(an_internal_invariant_fails, [])
    assert not isinstance(raised.value, UsageError)

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_script(interrupted, [])
    assert stop.value.code == 130 and capsys.readouterr().err == "run_x.py: interrupted\n"


def test_argparse_mistakes_are_one_line_that_points_at_help(capsys):
    parser = add_training_args(ArgumentParser(prog="run_x.py"), CLS_METRICS)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--output_dir", "o", "--learning_rate", "fast"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("run_x.py: error: argument --learning_rate: invalid float value: 'fast' "
                                       "(all flags: run_x.py --help)\n")


def test_help_shows_the_defaults_but_not_unset_ones():
    parser = ArgumentParser(prog="run_x.py", epilog="examples:\n  a\n  b")
    text = add_training_args(parser, CLS_METRICS).format_help()
    flat = " ".join(text.split())
    assert "Train batch size per device. (default: 16)" in flat and "'latest'" in flat and "glm-tiny" in flat
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert text.endswith("examples:\n  a\n  b\n")


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "-1"], "--learning_rate must be > 0, got -1.0"),
    (["--max_grad_norm", "-1"], "--weight_decay and --max_grad_norm must be >= 0"),
    (["--save_total_limit", "2"], "--save_total_limit N keeps N >= 1 checkpoints of --checkpointing_steps"),
    (["--save_total_limit", "0", "--checkpointing_steps", "5"], "--save_total_limit N keeps N >= 1"),
])  # fmt: skip
def test_impossible_training_flags_are_problems_before_any_work(flags, message):
    args = add_training_args(argparse.ArgumentParser(), CLS_METRICS).parse_args(["--output_dir", "o", *flags])
    args.peft_weights = None
    problems = training_args_problems(args)
    assert len(problems) == 1 and problems[0].startswith(message)


def test_a_finished_run_in_output_dir_is_a_problem_unless_overwritten(tmp_path):
    write(tmp_path / "results.json", "{}")
    parser = add_training_args(argparse.ArgumentParser(), CLS_METRICS)
    args = parser.parse_args(["--output_dir", str(tmp_path)])
    args.peft_weights = None
    assert training_args_problems(args) == [
        f"{tmp_path / 'results.json'} exists: a finished run is there. Pass --overwrite_output_dir to replace it, or "
        "choose another --output_dir"]
    args.overwrite_output_dir = True
    assert training_args_problems(args) == []


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_dir_that_is_or_lies_in_a_file_is_a_problem_before_any_work(tmp_path, inside, capsys):
    file = write(tmp_path / "notes.txt", "mine")
    output_dir = file / "run" if inside else file
    with pytest.raises(SystemExit) as stop:
        run_cls.parse_args(["--output_dir", str(output_dir), "--model_name_or_path", "glm-tiny",
                            "--tokenizer_name", "train", "--dataset_name", "trec", "--train_file", str(file)])
    assert stop.value.code == 2
    assert f"--output_dir {output_dir}: {file} is a file, not a folder" in capsys.readouterr().err
    assert file.read_text() == "mine"


def test_length_flags_past_the_position_table_are_refused_with_what_fits():
    assert position_problem("max_seq_length", 512, 512, "glm-tiny") is None
    assert position_problem("max_seq_length", 800, 512, "BAAI/glm-roberta-large", cut="contexts are cut") == (
        "--max_seq_length 800 is longer than the 512 positions of BAAI/glm-roberta-large; use at most 512 "
        "(contexts are cut)")
    assert position_problem("max_target_length", 511, 512, "glm-tiny", extra=1) is None
    assert position_problem("max_target_length", 512, 512, "glm-tiny", extra=1) == (
        "--max_target_length 512 is longer than the 512 positions of glm-tiny; use at most 511")


def test_a_hub_that_does_not_answer_is_asked_once_then_the_libraries_work_offline(monkeypatch):
    asked = hub_unreachable(monkeypatch)
    local = argparse.Namespace(model_name_or_path="glm-tiny", tokenizer_name="train", dataset_name="fine_foods",
                               train_file=None, validation_file=None, test_file=None)
    assert offline_unless_hub_answers(local) is False and asked == []  # nothing to ask the hub for
    files = argparse.Namespace(**{**vars(local), "dataset_name": "some/hub_name", "train_file": "a.csv"})
    assert offline_unless_hub_answers(files) is False and asked == []  # the name only names the task
    hub = argparse.Namespace(**{**vars(local), "model_name_or_path": "BAAI/glm-roberta-large"})
    assert offline_unless_hub_answers(hub) is True and len(asked) == 1
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert offline_unless_hub_answers(hub) is True and len(asked) == 1  # offline now: not asked again


class Saver:
    """What save_checkpoint needs of an Accelerator, for one process (the state: one file)."""

    is_main_process = True

    @staticmethod
    def save_state(folder):
        Path(folder).mkdir()
        write(Path(folder) / "model.safetensors", "")


def test_save_total_limit_keeps_the_newest_checkpoints_and_the_best_ones(tmp_path):
    model = torch.nn.Linear(2, 1)
    tracker = TrainingTracker("accuracy")
    for step, accuracy in ((2, 0.9), (4, 0.5), (6, 0.6), (8, 0.7)):
        tracker.completed_steps = step
        tracker.record_evaluation(0, {"accuracy": accuracy}, model)
        save_checkpoint(Saver(), tracker, tmp_path / f"step_{step}", save_total_limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_weights.safetensors", "step_2", "step_6", "step_8"]
    assert find_checkpoint("latest", tmp_path) == tmp_path / "step_8"


def test_results_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {})
        write_jsonl_atomic(tmp_path / "predictions_test.jsonl", [{}])
    finally:
        os.umask(umask)
    assert [oct(p.stat().st_mode & 0o777) for p in sorted(tmp_path.iterdir())] == ["0o644", "0o644"]


def test_weights_files_get_the_permissions_of_the_results_files(tmp_path):
    tracker, model = TrainingTracker("accuracy"), GLMForConditionalGeneration.from_pretrained("glm-tiny", vocab_size=64)
    tracker.record_evaluation(0, {"accuracy": 0.5}, torch.nn.Linear(1, 1))
    (tmp_path / "step_1").mkdir()
    umask = os.umask(0o022)
    try:
        tracker.save(tmp_path / "step_1")
        model.save_pretrained(tmp_path / "best_model")
        flags = argparse.Namespace(**{**dict.fromkeys(PEFT_FLAGS), "peft": "ptuning_v2", "pre_seq_len": 2},
                                   model_name_or_path="glm-tiny", seed=0)
        save_trainable_weights(add_prefix_encoder(model, 2), tmp_path / "adapter", flags)
    finally:
        os.umask(umask)
    written = [tmp_path / "best_weights.safetensors", tmp_path / "best_model" / "model.safetensors",
               tmp_path / "adapter" / "prefix_encoder.safetensors"]
    assert [oct(path.stat().st_mode & 0o777) for path in written] == ["0o644"] * 3  # safetensors alone: 0o600


def test_rouge_scores_do_not_log_a_line_each(caplog):
    args = argparse.Namespace(gradient_accumulation_steps=1, seed=0, output_dir="o", with_tracking=False)
    try:
        setup_accelerator(args)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    caplog.set_level(logging.INFO)
    generation_metrics(["a cat"], [["a cat sat"]])
    assert not [record for record in caplog.records if "Using default tokenizer" in record.getMessage()]
