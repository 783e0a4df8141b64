"""Specification of training.py: one behaviour per test, expected values worked out by hand."""

import argparse
import json
import math
from pathlib import Path

import datasets
import pytest
import torch

from glm_peft import count_parameters
from training import (
    add_data_and_prompt_args,
    add_training_args,
    check_finite,
    clear_previous_run,
    create_lr_scheduler,
    create_optimizer,
    environment_info,
    length_grouped_indices,
    padding_fraction,
    prepare_output_dir,
    results_record,
    safe_name,
    write_json_atomic,
    write_jsonl_atomic,
)

from conftest import write

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
PROMPTS = REPO / "prompts"



def test_prepare_output_dir_refuses_to_overwrite_results(tmp_path):
    out = prepare_output_dir(tmp_path / "run" / "a")
    assert out.is_dir()
    write(out / "results.json", "{}")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, overwrite_output_dir=True) == out


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
    add_training_args(parser)
    args = parser.parse_args(["--output_dir", "out", "--train_file", "t.csv", "--dataset_name", ""])
    record = results_record(
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
        results_record(args, "cls", "glm_cloze", **{**_record_kwargs(), "peft": "adapter"})


def _record_kwargs():
    return dict(
        script="s", prompt_id=0, prompt_name="p", total_train_batch_size=1, epochs=[], best_epoch=None, validation={},
        test=None, baselines={}, train_time_s=0.0, train_examples_per_s=0.0, peak_memory_mb=None, trainable_params=1,
        total_params=1,
    )  # fmt: skip


def test_data_and_prompt_args_defaults_per_task():
    cls_args = add_data_and_prompt_args(argparse.ArgumentParser(), "cls").parse_args([])
    gen_args = add_data_and_prompt_args(argparse.ArgumentParser(), "gen").parse_args(["--no-skip_empty", "--max_eval_samples", "5"])
    assert (cls_args.dataset_name, cls_args.skip_empty, cls_args.prompts_dir, cls_args.prompt_id) == ("trec", True, "prompts", None)
    assert (gen_args.dataset_name, gen_args.skip_empty, gen_args.max_eval_samples) == ("e2e_nlg_cleaned", False, 5)


def test_training_args_defaults_and_overrides():
    parser = add_training_args(argparse.ArgumentParser(), {"learning_rate": 5e-3})
    args = parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "epoch", "--no-do_train"])
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size, args.warmup_ratio) == (5e-3, 0.1, 16, 0.1)
    assert (args.checkpointing_steps, args.do_train, args.eval_steps, args.lr_scheduler_type) == ("epoch", False, None, "linear")
    assert parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "100"]).checkpointing_steps == 100
    with pytest.raises(ValueError, match="unknown default"):
        add_training_args(argparse.ArgumentParser(), {"learning_rte": 1.0})


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


def test_check_finite():
    check_finite(torch.tensor(0.5), step=3)
    with pytest.raises(FloatingPointError, match="at step 7. Try bf16 instead of fp16"):
        check_finite(torch.tensor(float("nan")), step=7)


@pytest.mark.parametrize("max_train_steps, expected_steps, expected_epochs", [(None, 9, 3), (7, 7, 3), (2, 2, 1)])
def test_create_lr_scheduler_sizes_the_run_from_sharded_accumulated_batches(max_train_steps, expected_steps,
                                                                             expected_epochs):
    # 10 batches over 2 processes: 5 per process and epoch; 2 per optimizer step: 3 steps an epoch.
    args = argparse.Namespace(max_train_steps=max_train_steps, num_train_epochs=3, gradient_accumulation_steps=2,
                              lr_scheduler_type="linear", warmup_ratio=0.5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    scheduler, batches_per_epoch = create_lr_scheduler(args, optimizer, train_batches=10, num_processes=2)

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
    order = length_grouped_indices(lengths, batch_size=4, seed=0)
    assert sorted(order) == list(range(1000))
    assert order == length_grouped_indices(lengths, batch_size=4, seed=0)
    assert order != length_grouped_indices(lengths, batch_size=4, seed=1)
    assert lengths[order[0]] == max(lengths)
    megabatch = order[:200]  # 50 batches of 4, sorted longest first
    assert [lengths[i] for i in megabatch] == sorted((lengths[i] for i in megabatch), reverse=True)
    grouped = [order[i : i + 4] for i in range(0, 1000, 4)]
    shuffled = [list(range(1000))[i : i + 4] for i in range(0, 1000, 4)]
    assert padding_fraction(lengths, grouped) < 0.05 < padding_fraction(lengths, shuffled)


def test_padding_fraction_hand_worked():
    # Batches padded to 4 and 3: 8 + 6 = 14 slots for 10 tokens.
    assert padding_fraction([1, 2, 3, 4], [[0, 3], [1, 2]]) == pytest.approx(4 / 14)
