"""Specification of --with_tracking: the live curves the scripts log through Accelerate's trackers.

TensorBoard's event files are read back with its own reader and compared with what the same run
wrote into results.json (tiny runs of glm-tiny, as in test_run_cls.py / test_run_gen.py).
"""

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run_cls
import run_gen
from conftest import run_main, write_csv
from training import start_tracking

TREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec"
needs_trec = pytest.mark.skipif(not (TREC / "train.csv").is_file(), reason="../shared/data/trec not present")


def logged_scalars(output_dir, project):
    """{tag: [(step, value), ...]} as TensorBoard shows the run's scalars (every event file of the folder)."""
    events = EventAccumulator(str(Path(output_dir) / "tensorboard" / project)).Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steps(scalars, tag):
    return [step for step, _ in scalars[tag]]


def values(scalars, tag):
    return [value for _, value in scalars[tag]]


def cls_args(folder, output_dir, *extra):
    return ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train",
            "--train_file", folder / "train.csv", "--validation_file", folder / "train.csv",
            "--test_file", folder / "test.csv", "--output_dir", output_dir, "--seed", 0, "--max_seq_length", 48,
            "--per_device_train_batch_size", 8, "--learning_rate", 1e-3, "--warmup_ratio", 0.1,
            "--max_train_steps", 4, "--eval_steps", 2, "--with_tracking", "--report_to", "tensorboard",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    """A 4-step run_cls run on 24 TREC rows (validation = train) with checkpoints at steps 2 and 4:
    (data folder, output folder, results.json record)."""
    folder = tmp_path_factory.mktemp("trec_tracking")
    with open(TREC / "train.csv", encoding="utf-8") as train, open(TREC / "test.csv", encoding="utf-8") as test:
        write_csv(folder / "train.csv", list(csv.DictReader(train))[:24])
        write_csv(folder / "test.csv", list(csv.DictReader(test))[:12])
    record = run_main(run_cls, cls_args(folder, folder / "run", "--checkpointing_steps", 2))
    return folder, folder / "run", record


@needs_trec
def test_run_cls_logs_each_steps_loss_and_rate_and_the_metrics_results_json_holds(cls_run):
    _, output_dir, record = cls_run
    scalars = logged_scalars(output_dir, "run_cls")

    assert sorted(scalars) == ["test/accuracy", "test/macro_f1", "train/learning_rate", "train/loss",
                               "validation/accuracy", "validation/macro_f1"]  # fmt: skip
    assert steps(scalars, "train/loss") == steps(scalars, "train/learning_rate") == [1, 2, 3, 4]
    # The rate each update used: linear warmup over ceil(0.1 * 4) = 1 step (step 1 at rate 0), then
    # linear decay to 0 over the 3 others (transformers' get_linear_schedule_with_warmup).
    assert values(scalars, "train/learning_rate") == pytest.approx([0.0, 1e-3, 2e-3 / 3, 1e-3 / 3], rel=1e-6)
    # results.json keeps the mean training loss between evaluations (steps 1-2, 3-4); event files hold float32.
    losses = values(scalars, "train/loss")
    assert [epoch["train_loss"] for epoch in record["epochs"]] == pytest.approx(
        [sum(losses[:2]) / 2, sum(losses[2:]) / 2], rel=1e-6)
    assert [epoch["step"] for epoch in record["epochs"]] == [2, 4]
    for metric in ("accuracy", "macro_f1"):
        assert steps(scalars, f"validation/{metric}") == [2, 4] and steps(scalars, f"test/{metric}") == [4]
        assert values(scalars, f"validation/{metric}") == pytest.approx(
            [epoch["validation"][metric] for epoch in record["epochs"]], rel=1e-6)
        assert values(scalars, f"test/{metric}") == pytest.approx([record["test"][metric]], rel=1e-6)


@needs_trec
def test_a_resumed_run_logs_on_from_its_checkpoint_and_each_step_shows_once(cls_run, tmp_path):
    folder, finished, _ = cls_run
    before = logged_scalars(finished, "run_cls")
    output_dir = tmp_path / "resumed"
    shutil.copytree(finished, output_dir)  # its event files hold steps 1-4; the run goes on from step 2

    run_main(run_cls, cls_args(folder, output_dir, "--checkpointing_steps", 2, "--resume_from_checkpoint", "step_2",
                               "--overwrite_output_dir"))

    after = logged_scalars(output_dir, "run_cls")
    assert len(list((output_dir / "tensorboard" / "run_cls").glob("events.out.tfevents.*"))) == 2
    assert sorted(after) == sorted(before)
    for tag in after:  # steps 3 and 4 again, and nothing of the first run after step 2 left beside them
        assert steps(after, tag) == steps(before, tag), tag
        assert values(after, tag) == pytest.approx(values(before, tag), rel=1e-6), tag  # an exact resume


PAIRS = [("name[Alpha], food[Thai]", "Alpha serves Thai food."), ("name[Bravo], area[riverside]", "Bravo is by the river.")]


def test_run_gen_logs_each_steps_loss_and_the_metrics_results_json_holds(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "toy.yaml").write_text(
        'templates:\n  - name: describe\n    jinja: "Describe: {{mr}} ||| {{text}}"\n', encoding="utf-8")
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"mr": mr, "text": text}) + "\n" for mr, text in PAIRS), encoding="utf-8")
    record = run_main(run_gen, [
        "--dataset_name", "toy", "--prompts_dir", tmp_path / "prompts", "--train_file", data, "--validation_file", data,
        "--test_file", data, "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train", "--seed", 0,
        "--output_dir", tmp_path / "out", "--per_device_train_batch_size", 1, "--max_train_steps", 4,
        "--eval_steps", 2, "--num_beams", 1, "--max_target_length", 8, "--with_tracking", "--report_to", "tensorboard",
    ])  # fmt: skip

    scalars = logged_scalars(tmp_path / "out", "run_gen")
    assert steps(scalars, "train/loss") == steps(scalars, "train/learning_rate") == [1, 2, 3, 4]
    losses = values(scalars, "train/loss")
    assert [epoch["train_loss"] for epoch in record["epochs"]] == pytest.approx(
        [sum(losses[:2]) / 2, sum(losses[2:]) / 2], rel=1e-6)
    assert [epoch["step"] for epoch in record["epochs"]] == [2, 4]
    for metric in ("bleu", "rouge1", "rouge2", "rougeL", "gen_len"):
        assert steps(scalars, f"validation/{metric}") == [2, 4] and steps(scalars, f"test/{metric}") == [4]
        assert values(scalars, f"validation/{metric}") == pytest.approx(
            [epoch["validation"][metric] for epoch in record["epochs"]], rel=1e-6)
        assert values(scalars, f"test/{metric}") == pytest.approx([record["test"][metric]], rel=1e-6)


@pytest.mark.parametrize("report_to, missing, message", [
    ("wandb", ["wandb"], "--with_tracking --report_to wandb: wandb is not installed. pip install wandb"),
    ("all", ["tensorboard", "wandb"], "--with_tracking --report_to all: neither tensorboard nor wandb is installed. "
                                      "pip install tensorboard"),
])  # fmt: skip
def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(report_to, missing, message, tmp_path,
                                                                     monkeypatch, capsys):
    for package in missing:
        monkeypatch.setitem(sys.modules, package, None)  # importlib.util.find_spec then finds no such package
    train = tmp_path / "train.csv"
    train.write_text("not read: the flags are refused first\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        run_main(run_cls, ["--dataset_name", "trec", "--train_file", train, "--output_dir",
                           tmp_path / "run", "--with_tracking", "--report_to", report_to])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.count("\n") == 1 and message in error
    assert not (tmp_path / "run").exists()


def test_the_config_holds_every_flag_as_a_value_tensorboard_takes():
    args = argparse.Namespace(seed=3, learning_rate=1e-5, output_dir="runs/x", with_tracking=True,
                              resume_from_checkpoint=None, lora_target_modules=["query", "value"])
    started = {}
    accelerator = argparse.Namespace(init_trackers=lambda project, config, init_kwargs: started.update(config))
    start_tracking(accelerator, args, "run_x")
    assert started == {"seed": 3, "learning_rate": 1e-5, "output_dir": "runs/x", "with_tracking": True,
                       "resume_from_checkpoint": "None", "lora_target_modules": "['query', 'value']"}
