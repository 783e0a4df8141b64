"""Specification of run_gen.py: runs of main() in-process on tiny data, one behaviour each.

Every run uses `glm-tiny` (random init) with `--tokenizer_name train` (a BPE trained on the
training texts: a small vocabulary, so a step takes milliseconds on a CPU).
"""

import csv
import json
import logging
import re
from glm_peft import PEFT_DEFAULT_LEARNING_RATES
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

from cli import run_script
from conftest import count_tokenizer_calls
import run_gen
from training import TrainingTracker

E2E = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e_nlg_cleaned"

PAIRS = [
    ("name[Alpha], food[Thai]", "Alpha serves Thai food."),
    ("name[Bravo], area[riverside]", "Bravo is by the riverside."),
    ("name[Crown], priceRange[cheap]", "The Crown is cheap."),
    ("name[Delta], familyFriendly[yes]", "Delta welcomes families."),
]
TOY_TEMPLATE = 'templates:\n  - name: describe\n    jinja: "Describe: {{mr}} ||| {{text}}"\n'


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def toy_args(tmp_path, rows=None, template=TOY_TEMPLATE, output="out"):
    """Flags for a run on the toy pairs (train = validation = test), template from tmp_path."""
    rows = rows or [{"mr": mr, "text": text} for mr, text in PAIRS]
    (tmp_path / "prompts").mkdir(exist_ok=True)
    (tmp_path / "prompts" / "toy.yaml").write_text(template, encoding="utf-8")
    data = write_jsonl(tmp_path / "toy.jsonl", rows)
    return ["--dataset_name", "toy", "--prompts_dir", str(tmp_path / "prompts"), "--train_file", data,
            "--validation_file", data, "--test_file", data, "--model_name_or_path", "glm-tiny",
            "--tokenizer_name", "train", "--output_dir", str(tmp_path / output), "--seed", "0"]


def read_results(output_dir):
    results = json.loads((Path(output_dir) / "results.json").read_text())
    generations = [json.loads(line) for line in (Path(output_dir) / "generations_test.jsonl").read_text().splitlines()]
    return results, generations


def test_overfits_a_handful_of_pairs_and_then_generates_them_exactly(tmp_path):
    # 90 steps: at 60, seed 0 still wrote one of the four wrong (seeds 1 and 2 had all four).
    run_gen.main(toy_args(tmp_path) + [
        "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--warmup_ratio", "0",
        "--max_train_steps", "90", "--eval_steps", "30", "--label_smoothing", "0", "--num_beams", "1"])

    results, generations = read_results(tmp_path / "out")
    assert [g["prediction"] for g in generations] == [text for _, text in PAIRS]
    assert [g["references"] for g in generations] == [[text] for _, text in PAIRS]
    assert [g["source"] for g in generations] == [f"Describe: {mr}" for mr, _ in PAIRS]
    assert results["test"]["bleu"] == pytest.approx(100.0)


@pytest.mark.skipif(not E2E.is_dir(), reason="../shared/data/e2e_nlg_cleaned not present")
def test_e2e_slice_trains_scores_and_writes_one_generation_per_distinct_test_source(tmp_path):
    output = tmp_path / "e2e"
    run_gen.main([
        "--dataset_name", "e2e_nlg_cleaned", "--train_file", str(E2E / "train.csv"),
        "--validation_file", str(E2E / "validation.csv"), "--test_file", str(E2E / "test.csv"),
        "--max_train_samples", "96", "--max_eval_samples", "12", "--max_test_samples", "20",
        "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train", "--output_dir", str(output),
        "--learning_rate", "1e-3", "--per_device_train_batch_size", "8", "--max_train_steps", "24",
        "--eval_steps", "8", "--num_beams", "2", "--max_target_length", "24", "--group_by_length"])

    results, generations = read_results(output)
    with open(E2E / "test.csv", newline="", encoding="utf-8") as f:
        test_rows = list(csv.DictReader(f))[:20]
    sources = list(dict.fromkeys(row["meaning_representation"] for row in test_rows))
    assert len(generations) == len(sources) < 20  # several references per source
    assert all(source in g["source"] for source, g in zip(sources, generations))
    assert sum(len(g["references"]) for g in generations) == 20
    assert {"script", "task", "method", "peft", "epochs", "best_epoch", "validation", "test", "baselines",
            "train_time_s", "trainable_params", "total_params", "args", "env", "data"} <= set(results)
    assert (results["script"], results["task"], results["method"], results["peft"]) == ("run_gen.py", "gen", "glm_gen", None)
    assert set(results["test"]) == {"bleu", "rouge1", "rouge2", "rougeL", "gen_len"}
    assert set(results["baselines"]["most_frequent_reference"]) == set(results["test"])
    assert [e["step"] for e in results["epochs"]] == [8, 16, 24]
    assert results["epochs"][-1]["train_loss"] < results["epochs"][0]["train_loss"] - 1.0
    best = max(results["epochs"], key=lambda e: e["validation"]["bleu"])
    assert results["validation"] == best["validation"]
    assert results["data"]["train"]["kept"] == 96


def test_a_template_that_renders_an_empty_target_is_counted_and_skipped(tmp_path, caplog):
    template = ('templates:\n  - name: describe\n    jinja: "Describe: {{mr}} ||| '
                '{% if keep == \'yes\' %}{{text}}{% endif %}"\n')
    rows = [{"mr": mr, "text": text, "keep": "no" if i == 1 else "yes"} for i, (mr, text) in enumerate(PAIRS)]
    with caplog.at_level(logging.WARNING):
        run_gen.main(toy_args(tmp_path, rows, template) + ["--max_train_steps", "2", "--num_beams", "1"])

    results, generations = read_results(tmp_path / "out")
    assert results["data"]["train"]["empty_target"] == 1
    assert results["data"]["train"]["kept"] == 3
    assert len(generations) == 3 and all("Bravo" not in g["source"] for g in generations)
    assert "skipped 1 row(s)" in caplog.text


def test_an_empty_target_with_no_skip_empty_stops_before_training_and_names_the_row(tmp_path):
    rows = [{"mr": mr, "text": "  " if i == 2 else text} for i, (mr, text) in enumerate(PAIRS)]
    with pytest.raises(ValueError, match=r"toy\.jsonl line 3 \(train split\): text is empty"):
        run_gen.main(toy_args(tmp_path, rows) + ["--no-skip_empty"])
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_field_that_is_not_text_in_some_rows_stops_before_training_and_names_the_line(tmp_path):
    rows = [{"mr": mr, "text": 7 if i == 2 else text} for i, (mr, text) in enumerate(PAIRS)]
    with pytest.raises(ValueError, match=r"toy\.jsonl, line 3: field 'text' is number \(7\) but text in line 1"):
        run_gen.main(toy_args(tmp_path, rows))


def test_each_text_is_tokenized_once_per_split_before_training_not_at_every_batch(tmp_path, monkeypatch):
    """Four epochs with an evaluation each, then the test: the tokenizer reads each of the 4 prompts once
    per split (train, validation, test) and each of the 4 training targets once."""
    calls = count_tokenizer_calls(monkeypatch)
    run_gen.main(toy_args(tmp_path) + ["--max_train_steps", "4", "--num_beams", "1"])
    results, _ = read_results(tmp_path / "out")
    assert len(results["epochs"]) == 4
    assert sorted(calls) == sorted([f"Describe: {mr} [MASK]" for mr, _ in PAIRS] * 3 + [f" {text}" for _, text in PAIRS])


def test_targets_longer_than_max_target_length_are_cut_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        run_gen.main(toy_args(tmp_path) + ["--max_target_length", "3", "--max_train_steps", "2", "--num_beams", "1"])

    results, generations = read_results(tmp_path / "out")
    assert results["data"]["train"]["long_targets"] == 4  # every toy target has more than 3 tokens
    assert "4 of 4 training targets are longer than --max_target_length 3" in caplog.text
    assert all(g["prediction"].count(" ") <= 2 for g in generations)  # at most 3 tokens generated


def test_an_existing_results_json_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text('{"finished": true}')
    with pytest.raises(SystemExit):
        run_gen.main(toy_args(tmp_path))
    assert "results.json exists: a finished run is there. Pass --overwrite_output_dir" in capsys.readouterr().err
    assert (tmp_path / "out" / "results.json").read_text() == '{"finished": true}'


def test_a_run_resumed_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path):
    common = ["--per_device_train_batch_size", "2", "--learning_rate", "3e-3", "--max_train_steps", "6",
              "--eval_steps", "2", "--num_beams", "1", "--checkpointing_steps", "3"]
    run_gen.main(toy_args(tmp_path, output="full") + common)
    run_gen.main(toy_args(tmp_path, output="resumed") + common
                 + ["--resume_from_checkpoint", str(tmp_path / "full" / "step_3")])

    full, full_generations = read_results(tmp_path / "full")
    resumed, resumed_generations = read_results(tmp_path / "resumed")
    assert resumed_generations == full_generations
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]
    assert [e["step"] for e in resumed["epochs"]] == [2, 4, 6]
    for a, b in zip(resumed["epochs"], full["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["validation"] == b["validation"]


@pytest.mark.parametrize("method, weights", [("lora", ".lora_"), ("ptuning_v2", "prefix_encoder.")])
def test_peft_trains_only_its_weights_and_saves_only_them(tmp_path, method, weights):
    run_gen.main(toy_args(tmp_path) + ["--peft", method, "--max_train_steps", "2", "--num_beams", "1",
                                       "--max_target_length", "8", "--save_best_model"])

    results, _ = read_results(tmp_path / "out")
    assert results["peft"] == method and results["learning_rate"] == PEFT_DEFAULT_LEARNING_RATES[method]
    assert 0 < results["trainable_params"] < results["total_params"] / 10
    from safetensors.torch import load_file

    weights_file = {"lora": "adapter_model.safetensors", "ptuning_v2": "prefix_encoder.safetensors"}[method]
    saved = load_file(str(tmp_path / "out" / "best_model" / weights_file))
    assert saved and all(weights in name for name in saved)


@pytest.mark.parametrize("flags, message", [
    (["--do_sample", "--num_beams", "4"], "--do_sample samples one sequence"),
    (["--metric_for_best_model", "accuracy"], "argument --metric_for_best_model: invalid choice: 'accuracy'"),
    (["--min_target_length", "80"], "--min_target_length must lie in"),
])
def test_incompatible_flags_fail_at_once_with_the_reason(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        run_gen.parse_args(["--output_dir", str(tmp_path)] + flags)
    assert message in capsys.readouterr().err


def test_list_prompts_prints_the_generation_prompts_without_an_output_dir(capsys):
    run_gen.main(["--list_prompts"])
    listed = capsys.readouterr().out
    assert "0: coherent_text [promptsource]" in listed
    assert "generate_text_restaurant" in listed


def test_no_training_by_flag_or_by_zero_epochs_is_the_same_evaluation_of_the_model_as_loaded(tmp_path):
    common = ["--num_beams", "1", "--max_target_length", "8"]
    run_gen.main(toy_args(tmp_path, output="flag") + common + ["--no-do_train"])
    run_gen.main(toy_args(tmp_path, output="zero") + common + ["--num_train_epochs", "0"])

    flag, flag_generations = read_results(tmp_path / "flag")
    zero, zero_generations = read_results(tmp_path / "zero")
    assert flag["epochs"] == zero["epochs"] == [] and flag["best_epoch"] is None
    assert flag["test"] == zero["test"] and flag_generations == zero_generations
    assert flag["args"]["max_train_steps"] is None  # nothing was sized for a run that did not train


def test_a_test_split_without_references_gets_generations_only(tmp_path, caplog):
    args = toy_args(tmp_path)
    hidden = write_jsonl(tmp_path / "hidden.jsonl", [{"mr": mr, "text": ""} for mr, _ in PAIRS])
    args[args.index("--test_file") + 1] = hidden
    with caplog.at_level(logging.WARNING):
        run_gen.main(args + ["--max_train_steps", "2", "--num_beams", "1", "--max_target_length", "4"])
    assert [m for m in caplog.messages if "hidden" in m] == [
        "test labels are hidden (every text is empty): writing predictions only, no test metrics."]
    results, generations = read_results(tmp_path / "out")
    assert (results["test"], results["test_labels_hidden"], results["baselines"]) == (None, True, {})
    assert set(results["validation"]) == {"bleu", "rouge1", "rouge2", "rougeL", "gen_len"}
    assert [g["source"] for g in generations] == [f"Describe: {mr}" for mr, _ in PAIRS]
    assert all(g["references"] == [] and isinstance(g["prediction"], str) for g in generations)


def test_a_validation_split_without_references_refuses_training(tmp_path):
    args = toy_args(tmp_path)
    args[args.index("--validation_file") + 1] = write_jsonl(tmp_path / "hidden.jsonl",
                                                            [{"mr": mr, "text": None} for mr, _ in PAIRS])
    with pytest.raises(ValueError, match="The validation labels are hidden .*pass a labelled --validation_file"):
        run_gen.main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--max_source_length", "600"], "--max_source_length 600 is longer than the 512 positions of glm-tiny; use at "
                                     "most 512 (prompts are cut around their [MASK])"),
    (["--max_target_length", "512"], "--max_target_length 512 is longer than the 512 positions of glm-tiny; use at "
                                     "most 511 (a span's block positions run from its sop to its eop)"),
])  # fmt: skip
def test_length_flags_past_the_position_table_are_refused_before_the_data(tmp_path, flags, message):
    args = toy_args(tmp_path)
    (tmp_path / "toy.jsonl").write_text("{not json", encoding="utf-8")  # never read: lengths come first
    with pytest.raises(ValueError) as error:
        run_gen.main(args + flags)
    assert str(error.value) == message


def test_ctrl_c_in_training_says_how_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    real_add_batch = TrainingTracker.add_batch

    def interrupted_in_step_2(tracker, loss, examples):
        if tracker.completed_steps == 1:
            raise KeyboardInterrupt
        real_add_batch(tracker, loss, examples)

    monkeypatch.setattr(TrainingTracker, "add_batch", interrupted_in_step_2)
    with pytest.raises(SystemExit) as stop:
        try:
            run_script(run_gen.main, toy_args(tmp_path) + ["--max_train_steps", "3", "--checkpointing_steps", "1",
                                                            "--per_device_train_batch_size", "2", "--num_beams", "1"])
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
    assert stop.value.code == 130
    assert capsys.readouterr().err.endswith(f"Interrupted at step 2/3; the last checkpoint is {tmp_path / 'out'}/step_1. "
                                            "Resume with the same command and --resume_from_checkpoint latest.\n")


def test_the_run_ends_with_baselines_output_statistics_and_three_samples_next_to_their_references(tmp_path, capsys):
    run_gen.main(toy_args(tmp_path) + ["--max_train_steps", "2", "--num_beams", "1", "--max_target_length", "8"])

    results, generations = read_results(tmp_path / "out")
    sources = [f"Describe: {mr}" for mr, _ in PAIRS]
    # Train = test here, so each source's nearest training input is itself: its own reference.
    assert results["baselines"]["nearest_training_target"]["bleu"] == pytest.approx(100.0)
    # No target repeats: the most frequent is the first, "Alpha serves Thai food.", for all four.
    assert results["baselines"]["most_frequent_reference"]["rouge1"] == pytest.approx(25.0)
    # Values of the 4 sources: Alpha, Thai, Bravo, riverside, Crown, cheap, Delta, yes. The references
    # state all but "yes"; the stock text states Alpha and Thai.
    statistics = results["output_statistics"]
    assert statistics["references"] == statistics["nearest_training_target"] == {"distinct_outputs": 100.0,
                                                                                 "values_copied": 87.5}
    assert statistics["most_frequent_reference"] == {"distinct_outputs": 25.0, "values_copied": 25.0}
    predictions = [g["prediction"] for g in generations]
    assert statistics["model"]["distinct_outputs"] == 100.0 * len(set(predictions)) / 4

    printed = capsys.readouterr().out
    assert "test: 4 sources, 4 references" in printed
    assert re.search(r"nearest training input's target +100\.00 +100\.00 +100\.0% +87\.5%", printed)
    assert re.search(r"first reference +- +- +100\.0% +87\.5%", printed)
    samples = printed.split("3 test sources, this model's output and the first reference:\n")[1]
    # The first source, one a third in, two thirds in: 0, 1, 2 of 4.
    assert samples.startswith("".join(f"  source:    {sources[i]}\n  output:    {predictions[i]}\n"
                                      f"  reference: {PAIRS[i][1]}\n" for i in range(3)))
