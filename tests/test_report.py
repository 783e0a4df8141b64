"""Specification of report.py: synthetic results.json files with known numbers in, tables out."""

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sacrebleu
import torch
import scipy.stats

import report
from reporting.analysis import (
    FULL_DATA,
    NO_PROMPT,
    add_scores,
    best_row,
    comparison_table,
    dataset_name,
    few_shot_curve,
    grid_sensitivity,
    grid_table,
    learning_curve,
    load_results,
    metric_label,
    metric_scale,
    model_name,
    prompt_sensitivity,
    prompt_table,
    separate_runs,
    split_untrained,
    summarize,
    match_zero_shot,
    trivial_baselines,
    zero_shot_summary,
)
from reporting.readings import few_shot_reading, per_class_reading, prompt_zero_shot_reading
from reporting.tables import Table, make_few_shot_table, shared_words, strip_words, text_cell
from test_error_analysis import OUTPUTS, SEEDS, cls_rows, gen_rows
from training import TrainingTracker, results_record, write_json_atomic, write_jsonl_atomic

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHOICES = ["Description", "Entity", "Abbreviation", "Human", "Numeric", "Location"]


def record(task="cls", method="glm_cloze", peft=None, model="glm-tiny", prompt_id=0, lr=1e-5, bs=16, seed=1,
           val=0.5, test=0.5, epochs=None, trainable=1000, total=1000, train_time_s=10.0, metric=None,
           baseline=0.2, hidden=False, mixed_precision="no", carved_rows=None, **more_args):
    """A results.json record of the real schema (results_record); `more_args` are further
    recorded arguments (e.g. max_train_steps=1); `hidden` marks hidden test labels; `mixed_precision`
    the launch's (one CPU process); `carved_rows` the validation rows carved from train (None: none)."""
    metric = metric or ("accuracy" if task == "cls" else "bleu")
    args = {"dataset_name": "trec" if task == "cls" else "e2e_nlg_cleaned", "model_name_or_path": model,
            "learning_rate": lr, "per_device_train_batch_size": bs, "seed": seed, "prompt_id": prompt_id,
            "metric_for_best_model": metric, "peft": peft, "train_file": None,
            "tokenizer_name": "train" if model.endswith("-tiny") else None,
            "output_dir": f"runs/{method}/{lr}_{bs}_{seed}", **more_args}  # fmt: skip
    if epochs is None:
        epochs = [{"epoch": 0, "step": 10, "train_loss": 1.0, "validation": {metric: val}}]
    baselines = {"majority_class": {"accuracy": baseline, "macro_f1": 0.1}} if task == "cls" else \
        {"most_frequent_reference": {"bleu": 3.0, "rougeL": 10.0}}
    tracker = TrainingTracker(metric)
    tracker.history, tracker.best_index = epochs, 0 if epochs else None
    tracker.train_time_s = tracker.train_examples = train_time_s  # 1 example per second
    rec = results_record(
        argparse.Namespace(**args), task, method, script="run_cls.py" if task == "cls" else "run_gen.py",
        accelerator=argparse.Namespace(mixed_precision=mixed_precision, num_processes=1, device=torch.device("cpu")),
        carved_validation=None if carved_rows is None else {"validation_rows": carved_rows},
        prompt_id=prompt_id, prompt_name=None if prompt_id is None else f"prompt{prompt_id}",
        total_train_batch_size=bs, tracker=tracker, plan=None, validation={metric: val},
        test=None if hidden else {metric: test}, baselines={} if hidden else baselines, trainable_params=trainable,
        total_params=total)
    if hidden:
        rec["test_labels_hidden"] = True
    return rec


def write_runs(root, records, predictions=None):
    """One folder per record; `predictions[i]` (a list of (gold, predicted) choice indices), when
    given, becomes run i's predictions_test.jsonl."""
    for i, rec in enumerate(records):
        folder = root / f"run{i:03d}"
        folder.mkdir(parents=True)
        write_json_atomic(folder / "results.json", rec)
        if predictions and predictions[i] is not None:
            rows = [{"input": f"question {j}", "gold": CHOICES[g], "predicted": CHOICES[p],
                     "scores": {c: float(k == p) for k, c in enumerate(CHOICES)}}
                    for j, (g, p) in enumerate(predictions[i])]  # fmt: skip
            write_jsonl_atomic(folder / "predictions_test.jsonl", rows)
    return root


def loaded(root, records):
    """The runs of `records` as report.py reads them: loaded, separated, accuracy scored."""
    runs, _ = separate_runs(load_results(write_runs(root, records)))
    return add_scores(runs, "accuracy")


def table_rows(markdown):
    """The cells (stripped) of every Markdown table row in a text."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|:")]


def accuracy_runs():
    """GLM cloze, one prompt, 2 lr x 2 bs x 2 seeds. Validation means (%): (1e-5, 16) 70,
    (1e-5, 32) 60, (3e-5, 16) 80 (the best on validation), (3e-5, 32) 75. Test would pick
    (1e-5, 32): test 95 there, 65 at the validation-best config."""
    grid = {  # (lr, bs): ((val seed1, val seed2), (test seed1, test seed2))
        (1e-5, 16): ((0.68, 0.72), (0.70, 0.70)),
        (1e-5, 32): ((0.60, 0.60), (0.94, 0.96)),
        (3e-5, 16): ((0.78, 0.82), (0.64, 0.66)),
        (3e-5, 32): ((0.75, 0.75), (0.70, 0.70)),
    }
    return [record(lr=lr, bs=bs, seed=seed, val=vals[i], test=tests[i])
            for (lr, bs), (vals, tests) in grid.items() for i, seed in enumerate((1, 2))]


# ----------------------------------------------------------------------------- loading


def test_load_results_reads_every_results_json_with_its_settings(tmp_path):
    write_runs(tmp_path, accuracy_runs() + [record(method="linear_head", model="roberta-tiny", prompt_id=None)])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")

    runs = load_results(tmp_path)

    assert len(runs) == 9  # the broken file is skipped
    assert set(runs["learning_rate"]) == {1e-5, 3e-5} and set(runs["batch_size"]) == {16, 32}
    assert runs["peft"].eq("none").all()
    assert runs.loc[runs["method"] == "linear_head", "prompt_id"].tolist() == [NO_PROMPT]


def test_continued_pretraining_runs_are_left_out_of_the_report(tmp_path, caplog):
    write_runs(tmp_path / "runs", accuracy_runs())
    pretraining = record(method="blank_infilling", metric="loss", prompt_id=None) | {"task": "pretrain"}
    (tmp_path / "runs" / "pretrain").mkdir()
    write_json_atomic(tmp_path / "runs" / "pretrain" / "results.json", pretraining)

    report.main([str(tmp_path / "runs"), "--output_dir", str(tmp_path / "report")])

    assert len(load_results(tmp_path / "runs")) == 8
    assert (tmp_path / "report" / "report.md").is_file()
    assert "Leaving out 1 run_pretrain.py run(s), which the report does not compare" in caplog.text


def test_dataset_and_model_names_are_short():
    assert dataset_name({"train": "../shared/data/trec/train.csv"}) == "trec"
    assert dataset_name("CogComp/trec") == "trec"
    assert model_name("BAAI/glm-roberta-large") == "glm-roberta-large"


def test_accuracy_is_shown_in_percent_and_bleu_as_is():
    assert metric_scale("accuracy") == 100 and metric_label("accuracy") == "accuracy (%)"
    assert metric_scale("bleu") == 1 and metric_label("bleu") == "BLEU (0-100)"


# ----------------------------------------------------------------------------- tables


def test_grid_table_holds_mean_and_sample_std_over_seeds(tmp_path):
    runs = loaded(tmp_path, accuracy_runs())

    table = grid_table(runs, "accuracy").set_index(["learning_rate", "batch_size"])

    assert table.loc[(1e-5, 16), "val_mean"] == pytest.approx(70.0)
    assert table.loc[(1e-5, 16), "val_std"] == pytest.approx(math.sqrt(2 * 2**2 / 1))  # 68, 72: std 2.83
    assert table.loc[(3e-5, 16), "val_mean"] == pytest.approx(80.0)
    assert table.loc[(3e-5, 32), "val_std"] == pytest.approx(0.0)
    assert table["n_seeds"].eq(2).all()


def test_best_config_is_chosen_on_validation_even_when_test_would_pick_another(tmp_path):
    runs = loaded(tmp_path, accuracy_runs())

    table = grid_table(runs, "accuracy")
    best = table[table["best"]].iloc[0]

    assert (best["learning_rate"], best["batch_size"]) == (3e-5, 16)
    assert best["test_mean"] == pytest.approx(65.0) and best["test_std"] == pytest.approx(math.sqrt(2))
    assert table["test_mean"].idxmax() != table["val_mean"].idxmax()  # test would have chosen (1e-5, 32)


def test_ties_on_validation_go_to_the_smaller_spread():
    summary = pd.DataFrame({"val_mean": [80.0, 80.0], "val_std": [5.0, 1.0], "test_mean": [99.0, 10.0]})
    assert best_row(summary, "accuracy")["val_std"] == 1.0


def test_a_lower_is_better_metric_picks_the_smallest():
    summary = pd.DataFrame({"val_mean": [2.0, 1.0], "val_std": [0.0, 0.0]})
    assert best_row(summary, "loss")["val_mean"] == 1.0


def test_prompt_table_gives_each_prompt_its_own_best_config(tmp_path):
    records = [
        record(prompt_id=0, lr=1e-5, seed=1, val=0.60, test=0.60), record(prompt_id=0, lr=1e-5, seed=2, val=0.62, test=0.58),
        record(prompt_id=0, lr=3e-5, seed=1, val=0.70, test=0.50), record(prompt_id=0, lr=3e-5, seed=2, val=0.70, test=0.52),
        record(prompt_id=1, lr=1e-5, seed=1, val=0.90, test=0.80), record(prompt_id=1, lr=1e-5, seed=2, val=0.90, test=0.84),
        record(prompt_id=1, lr=3e-5, seed=1, val=0.50, test=0.99), record(prompt_id=1, lr=3e-5, seed=2, val=0.50, test=0.99),
    ]  # fmt: skip
    runs = loaded(tmp_path, records)

    table = prompt_table(runs, "accuracy").set_index("prompt_id")

    assert table.loc[0, "learning_rate"] == 3e-5 and table.loc[0, "test_mean"] == pytest.approx(51.0)
    assert table.loc[1, "learning_rate"] == 1e-5 and table.loc[1, "test_mean"] == pytest.approx(82.0)
    assert table.loc[1, "val_mean"] == pytest.approx(90.0) and table.loc[1, "prompt_name"] == "prompt1"


def test_comparison_table_has_one_row_per_system_at_its_validation_best(tmp_path):
    records = accuracy_runs() + [
        record(peft="lora", lr=5e-4, seed=s, val=v, test=t, trainable=10, total=1010, train_time_s=4.0)
        for s, v, t in ((1, 0.70, 0.60), (2, 0.72, 0.62))
    ] + [
        record(method="linear_head", model="roberta-tiny", prompt_id=None, seed=s, val=0.5, test=0.4)
        for s in (1, 2)
    ]  # fmt: skip
    runs = loaded(tmp_path, records)

    table = comparison_table(runs, "accuracy")

    assert table["method"].tolist() == ["glm_cloze", "glm_cloze", "linear_head"]  # full FT, PEFT, baselines
    assert table["peft"].tolist() == ["none", "lora", "none"]
    full, lora, head = (row for _, row in table.iterrows())
    assert full["val_mean"] == pytest.approx(80.0) and full["test_mean"] == pytest.approx(65.0)
    assert lora["test_mean"] == pytest.approx(61.0) and lora["trainable_share"] == pytest.approx(10 / 1010)
    assert lora["train_time_s"] == pytest.approx(4.0)
    assert head["prompt_id"] == NO_PROMPT
    assert trivial_baselines(runs, "accuracy") == {"majority_class": (pytest.approx(math.nan, nan_ok=True), 20.0)}


def test_learning_curve_averages_the_seeds_per_epoch(tmp_path):
    curves = [[{"epoch": e, "step": 5 * (e + 1), "train_loss": 1.0, "validation": {"accuracy": v}} for e, v in enumerate(vs)]
              for vs in ((0.5, 0.7), (0.7, 0.9))]  # fmt: skip
    records = [record(seed=s, epochs=c, val=c[-1]["validation"]["accuracy"]) for s, c in zip((1, 2), curves)]
    runs = load_results(write_runs(tmp_path, records))

    curve, xlabel = learning_curve(runs, "accuracy")

    assert xlabel == "epochs completed"
    assert curve["x"].tolist() == [1, 2]  # epochs 0 and 1, validated at their ends
    assert curve["mean"].tolist() == pytest.approx([60.0, 80.0])
    assert curve["std"].tolist() == pytest.approx([math.sqrt(200), math.sqrt(200)])


def test_several_evaluations_per_epoch_are_plotted_by_step(tmp_path):
    epochs = [{"epoch": 0, "step": s, "train_loss": 1.0, "validation": {"accuracy": 0.5}} for s in (5, 10)]
    runs = load_results(write_runs(tmp_path, [record(epochs=epochs)]))
    curve, xlabel = learning_curve(runs, "accuracy")
    assert xlabel == "optimizer steps" and curve["x"].tolist() == [5, 10]


def test_latex_tables_use_booktabs_and_escape_specials():
    frame = pd.DataFrame([["glm_cloze", "80.00 ± 2.00", "best"], ["linear_head", "3e-5", ""]],
                         columns=["method", "score (%)", ""])  # fmt: skip
    table = Table(caption="a_b 50%", label="tab:x", frame=frame, bold=frozenset({0}), align="lrl")

    latex = table.latex()

    assert latex.splitlines() == [
        r"\begin{table}[t]", r"\centering", r"\caption{a\_b 50\%}", r"\label{tab:x}", r"\begin{tabular}{lrl}",
        r"\toprule", r"method & score (\%) &  \\", r"\midrule",
        r"\textbf{glm\_cloze} & \textbf{80.00 $\pm$ 2.00} & \textbf{best} \\", r"linear\_head & 3e-5 &  \\",
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ]  # fmt: skip
    markdown = table.markdown().splitlines()
    assert table_rows(table.markdown()) == [["method", "score (%)", ""], ["**glm_cloze**", "**80.00 ± 2.00**", "**best**"],
                                            ["linear_head", "3e-5", ""]]  # fmt: skip
    assert re.fullmatch(r"\|:-+\|-+:\|:-+\|", markdown[1])  # left, right, left


# ----------------------------------------------------------------------------- the whole report


def make_report(tmp_path, records):
    results = write_runs(tmp_path / "runs", records)
    out = tmp_path / "report"
    report.main([str(results), "--output_dir", str(out)])
    return out


def assert_png(path):
    assert path.exists() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_report_writes_markdown_latex_and_figures(tmp_path):
    records = accuracy_runs() + [record(prompt_id=1, lr=lr, bs=bs, seed=s, val=0.5, test=0.5)
                                 for lr in (1e-5, 3e-5) for bs in (16, 32) for s in (1, 2)]  # fmt: skip
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    rows = table_rows(text)
    assert "never looks at test" in text
    # The grid row of the selected config, in bold, and its test score in the sentence after.
    assert ["**0**", "**3e-5**", "**16**", "**2**", "**80.00 ± 2.83**", "**best**"] in rows
    assert "**test 65.00 ± 1.41**" in text
    assert ["0", "1e-5", "32", "2", "60.00 ± 0.00", ""] in rows
    # Prompt comparison: prompt 1 (all 50) at its first grid point; no predictions, so no CI.
    assert ["1: prompt1", "1e-5", "16", "2", "50.00 ± 0.00", "–", "50.00 ± 0.00", "–"] in rows
    assert ["majority class", "–", "–", "no training", "–", "–", "–", "20.00", "–", "–", "0", "0"] in rows
    assert "Runs set apart" not in text  # all runs differ in prompt, lr, batch size and seed only
    latex = (out / "tables.tex").read_text()
    assert latex.count(r"\toprule") == latex.count(r"\bottomrule") == 3  # methods compared, grid, prompts
    assert r"80.00 $\pm$ 2.83" in latex
    pngs = sorted(p.name for p in out.glob("*.png"))
    # One evaluation per run: no learning curve (a dot), and report.md says how to get one.
    assert pngs == ["heatmap_cls_trec_glm_cloze_glm-tiny.png", "prompts_cls_trec_glm_cloze_glm-tiny.png"]
    assert "No learning curve: every run evaluated validation once. Curves need several evaluations per run: " \
           "`--eval_steps N`" in text
    for name in pngs:
        assert_png(out / name)
        assert f"]({name})" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cls/trec"][0]["test_mean"] == pytest.approx(65.0)


def zero_shot_records():
    """accuracy_runs (prompt 0) and prompt 1 (all 50) fine-tuned, with zero-shot runs of both prompts: test 30 and
    20, validation 40 and 60 (prompt 1 is best zero-shot, prompt 0 after fine-tuning). They record the default
    learning rate 1e-6 and no history."""
    prompt1 = [record(prompt_id=1, lr=lr, bs=bs, seed=s, val=0.5, test=0.5) for lr in (1e-5, 3e-5) for bs in (16, 32)
               for s in (1, 2)]  # fmt: skip
    zero_shot = [record(prompt_id=p, lr=1e-6, seed=1, val=v, test=t, epochs=[]) for p, v, t in ((0, 0.4, 0.3), (1, 0.6, 0.2))]
    return accuracy_runs() + prompt1 + zero_shot


def test_the_reading_says_a_tie_on_validation_and_a_best_system_no_better_than_the_majority_class(tmp_path):
    records = [record(val=0.65, test=0.615, baseline=0.615, seed=s) for s in (1, 2)] + [
        record(method="linear_head", model="roberta-tiny", prompt_id=None, val=0.65, test=0.615, baseline=0.615,
               seed=s) for s in (1, 2)]  # fmt: skip
    text = (make_report(tmp_path, records) / "report.md").read_text()
    assert "is best on validation (65.00 ± 0.00, tied with " in text
    assert "- The majority class baseline scores 61.50 on the same test set: the best system does no better." in text


@pytest.mark.parametrize("fine_tuned_validation, ending", [
    ((65.0, 60.0), "prompt 1 is best zero-shot and prompt 0 after fine-tuning: the zero-shot ranking picks a "
                   "different prompt."),
    ((65.0, 65.0), "prompt 1 is best zero-shot and prompts 0, 1 tie after fine-tuning: the zero-shot ranking picks "
                   "one of them."),
])
def test_a_tie_after_fine_tuning_is_said_not_broken_by_order(fine_tuned_validation, ending):
    prompts = pd.DataFrame({"prompt_id": [0, 1], "prompt_name": ["a", "b"], "zs_n_seeds": [1, 1],
                            "zs_test_mean": [30.0, 20.0], "test_mean": [61.5, 61.5], "zs_val_mean": [40.0, 60.0],
                            "val_mean": fine_tuned_validation})
    assert prompt_zero_shot_reading(prompts, "accuracy").endswith(ending)


def test_zero_shot_scores_stand_next_to_the_fine_tuned_ones_and_are_never_selected(tmp_path):
    records = zero_shot_records() + [
        record(peft="lora", lr=5e-4, seed=1, val=0.7, test=0.6, lora_r=8),  # starts from the same zero-shot model
        record(method="linear_head", model="roberta-tiny", prompt_id=None, val=0.5, test=0.4),  # no zero-shot run
    ]  # fmt: skip
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    rows = table_rows(text)
    methods = {row[0] + row[2]: row for row in rows if row[3].startswith("p ")}
    assert methods["glm_clozenone"][5:8] == ["80.00 ± 2.83", "30.00", "65.00 ± 1.41"]
    assert methods["glm_clozelora"][5:8] == ["70.00", "30.00", "60.00"]
    assert methods["linear_headnone"][5:8] == ["50.00", "–", "40.00"]
    assert ["0: prompt0", "3e-5", "16", "2", "80.00 ± 2.83", "30.00", "65.00 ± 1.41", "–"] in rows
    assert ["1: prompt1", "1e-5", "16", "2", "50.00 ± 0.00", "20.00", "50.00 ± 0.00", "–"] in rows
    assert ["**0**", "**3e-5**", "**16**", "**2**", "**80.00 ± 2.83**", "**best**"] in rows  # the grid never sees them
    assert "1e-6" not in text and "did not train and are in no table" not in text
    assert "- Fine-tuned, it scores +35.00 points against the same model and prompt zero-shot (30.00)." in text
    assert ("**Before and after fine-tuning.** Zero-shot, prompt 0 (prompt0), prompt 1 (prompt1) score 20.00 to 30.00 "
            "on test; fine-tuned, 50.00 "
            "to 65.00. Fine-tuning changes each prompt's test score by prompt 0 +35.00, prompt 1 +30.00 points. On "
            "validation, prompt 1 is best zero-shot and prompt 0 after fine-tuning: the zero-shot ranking picks a "
            "different prompt.") in text  # fmt: skip
    assert "**Zero-shot.** 2 run(s) evaluate an untrained model" in text
    summary = json.loads((out / "summary.json").read_text())["cls/trec"]
    assert [row["zs_test_mean"] for row in summary] == [pytest.approx(30.0), pytest.approx(30.0), None]
    assert r"zero-shot test accuracy (\%)" in (out / "tables.tex").read_text()


def test_untrained_runs_that_are_no_zero_shot_of_a_trained_system_are_listed_apart(tmp_path):
    records = accuracy_runs() + [
        record(lr=1e-6, val=0.99, test=0.99, epochs=[], max_test_samples=100),  # other data
        record(lr=1e-6, val=0.98, test=0.98, epochs=[], max_seq_length=64),  # other evaluation settings
        record(lr=1e-6, prompt_id=3, val=0.97, test=0.97, epochs=[]),  # a prompt no trained run used
        record(peft="lora", lr=1e-6, val=0.96, test=0.96, epochs=[], peft_weights="runs/lora"),
    ]  # fmt: skip
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    assert "4 run(s) did not train and are in no table:" in text
    assert "- `run008` (zero-shot on data that no trained run used): test accuracy 0.9900" in text
    assert "- `run009` (zero-shot with a model, prompt or settings that no trained run shares): test accuracy 0.9800" in text
    assert "- `run010` (zero-shot with a model, prompt or settings that no trained run shares)" in text
    assert "- `run011` (an evaluation of saved --peft_weights): test accuracy 0.9600" in text
    assert "Zero-shot.**" not in text
    assert table_rows(text)[1][5:8] == ["80.00 ± 2.83", "–", "65.00 ± 1.41"]


def test_training_only_settings_do_not_keep_a_zero_shot_run_from_its_system(tmp_path):
    # The trained runs ran 120 steps with warmup; the zero-shot run has other (unused) training flags: same evaluation.
    trained = record(val=0.8, test=0.7, max_train_steps=120, warmup_ratio=0.1, max_seq_length=128)
    untrained = record(val=0.3, test=0.2, epochs=[], max_train_steps=0, warmup_ratio=0.0, max_seq_length=128)
    runs, untrained_runs = split_untrained(load_results(write_runs(tmp_path, [trained, untrained])))
    runs, _ = separate_runs(runs)

    zero_shot, others, notes = match_zero_shot(runs, untrained_runs)

    assert len(zero_shot) == 1 and others.empty and notes == []
    summary = zero_shot_summary(add_scores(zero_shot, "accuracy"), runs)
    assert summary[["prompt_id", "test_mean", "n_seeds"]].values.tolist() == [[0, pytest.approx(20.0), 1]]


def test_the_gain_over_zero_shot_is_tested_on_the_same_test_examples(tmp_path):
    # 5 test examples: fine-tuned right on the first four, zero-shot on none: 80 points, p = 4/32 (exact).
    records = [record(val=0.9, test=0.8), record(val=0.1, test=0.0, epochs=[])]
    predictions = [[(g, g) for g in range(4)] + [(4, 0)], [(g, (g + 1) % 6) for g in range(5)]]
    results = write_runs(tmp_path / "runs", records, predictions)
    report.main([str(results), "--output_dir", str(tmp_path / "report")])

    text = (tmp_path / "report" / "report.md").read_text()
    assert ("- Fine-tuned, it beats the same model and prompt zero-shot (0.00) by 80.00 points on test (p = 0.125, not "
            "significant at 0.05; 1 seed vs 1 seed).") in text  # fmt: skip


def test_report_lists_sweep_folders_that_have_no_results(tmp_path):
    results = write_runs(tmp_path / "runs", accuracy_runs())
    killed = results / "cls_trec" / "glm_cloze" / "p0_lr1e-5_bs16_seed3"
    killed.mkdir(parents=True)
    (killed / "sweep.log").write_text("Traceback ...")
    report.main([str(results), "--output_dir", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "1 run folder(s) have no results.json" in text and "- `cls_trec/glm_cloze/p0_lr1e-5_bs16_seed3`" in text


# ----------------------------------------------------------------------------- runs that may not share a cell


def test_a_run_with_other_settings_is_a_system_of_its_own_and_never_the_best_config(tmp_path):
    # The 120-step grid of accuracy_runs, and a 1-step run at its best cell and seed scoring far higher
    # on validation: pooled, it would be the "best config" and give that cell 89.50 ± 13.44 over "2 seeds".
    records = [record(lr=r["learning_rate"], bs=r["per_device_train_batch_size"], seed=r["seed"],
                      val=r["validation"]["accuracy"], test=r["test"]["accuracy"], max_train_steps=120)
               for r in accuracy_runs()]  # fmt: skip
    records.append(record(lr=3e-5, bs=16, seed=1, val=0.99, test=0.10, max_train_steps=1))
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    rows = table_rows(text)
    assert ["**0**", "**3e-5**", "**16**", "**2**", "**80.00 ± 2.83**", "**best**"] in rows
    assert ["**0**", "**3e-5**", "**16**", "**1**", "**99.00**", "**best**"] in rows  # its own grid, no ±
    assert "### Grid search: glm_cloze [glm-tiny] (max_train_steps 1)" in text
    assert ("- 1 run(s) of glm_cloze [glm-tiny] on cls/trec differ from its 8 other run(s) in max_train_steps 1 vs "
            '120: a system of their own, "glm_cloze [glm-tiny] (max_train_steps 1)".') in text
    methods = [row[0] for row in rows if row[3].startswith("p 0")]
    assert methods == ["glm_cloze", "glm_cloze (max_train_steps 1)"]


def test_bf16_runs_and_runs_validated_on_other_rows_are_no_seeds_of_the_fp32_cell(tmp_path):
    records = [record(seed=1, carved_rows=[0, 5]), record(seed=2, carved_rows=[0, 5]),
               record(seed=3, carved_rows=[0, 5], mixed_precision="bf16"), record(seed=4, carved_rows=[1, 7])]
    runs, notes = separate_runs(load_results(write_runs(tmp_path, records)))
    assert runs["variant"].tolist() == ["", "", "mixed_precision bf16", ""]
    digest = hashlib.sha256(b"[1, 7]").hexdigest()[:8]
    assert runs["study"].tolist() == ["", "", "", f"validation rows 2 rows #{digest}"]
    assert len(notes) == 2 and "used other data than the 3 others (validation rows 2 rows #" in notes[0]


def test_the_carve_flags_split_runs_only_through_the_rows_they_carve(tmp_path):
    # With a validation file nothing is carved: --data_seed and --validation_split_percentage then change nothing.
    records = [record(seed=s, data_seed=d, validation_split_percentage=p, validation_file="v.csv")
               for s, d, p in ((1, 42, 10), (2, 7, 20))]
    runs, notes = separate_runs(load_results(write_runs(tmp_path, records)))
    assert runs["study"].tolist() == ["", ""] and runs["variant"].tolist() == ["", ""] and notes == []


def test_runs_from_before_data_seed_that_carved_validation_by_their_seed_are_not_pooled(tmp_path):
    records = [record(seed=s, train_file="train.csv") for s in (1, 2)] + [record(seed=3, train_file="train.csv",
                                                                             validation_file="v.csv")]
    for rec in records:
        del rec["carved_validation"]  # as written before --data_seed
    runs, _ = separate_runs(load_results(write_runs(tmp_path, records)))
    assert sorted(runs["data_settings"].map(lambda settings: str(settings["validation rows"]))) == [
        "None", "carved by --seed 1", "carved by --seed 2"]


def test_settings_that_do_not_change_a_run_do_not_split_it(tmp_path):
    # Where a run writes and how it checkpoints are not settings of the system; unused PEFT flags neither.
    records = [record(seed=1, output_dir="a", checkpointing_steps=10, lora_r=8),
               record(seed=2, output_dir="b", per_device_eval_batch_size=64, lora_r=16)]  # fmt: skip
    runs, notes = separate_runs(load_results(write_runs(tmp_path, records)))
    assert notes == [] and runs["variant"].eq("").all() and runs["study"].eq("").all()


def test_a_repeated_run_counts_once_and_one_run_never_shows_a_spread(tmp_path):
    # The same settings and seed twice (a rerun in another folder): one seed, not a spread of two runs.
    out = make_report(tmp_path, [record(seed=1, val=0.40, test=0.40), record(seed=1, val=0.60, test=0.60)])

    text = (out / "report.md").read_text()
    assert ["**0**", "**1e-5**", "**16**", "**1**", "**40.00**", "**best**"] in table_rows(text)
    assert "`run001/results.json` repeats the settings and seed of another run" in text.replace(str(tmp_path / "runs") + "/", "")
    assert "±" not in text.split("## TREC")[1].replace("mean ± std", "")


def test_runs_on_other_data_get_their_own_section_with_their_own_baseline(tmp_path):
    # A smoke test on the first 100 test rows, whose majority class scores 30 there, next to the full runs
    # (majority class 20): each table's reference row comes from its own test set.
    records = accuracy_runs() + [record(seed=s, val=0.9, test=0.9, baseline=0.3, max_test_samples=100) for s in (1, 2)]
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    main, smoke = text.split("## TREC (max_test_samples 100): classification")
    assert ["majority class", "–", "–", "no training", "–", "–", "–", "20.00", "–", "–", "0", "0"] in table_rows(main)
    assert ["majority class", "–", "–", "no training", "–", "–", "–", "30.00", "–", "–", "0", "0"] in table_rows(smoke)
    assert ["**0**", "**1e-5**", "**16**", "**2**", "**90.00 ± 0.00**", "**best**"] in table_rows(smoke)
    assert "**test 65.00 ± 1.41**" in main  # the smoke runs' 90 never reach the main grid
    assert "(max_test_samples 100 vs none)" in text
    assert "curves_cls_trec_max_test_samples_100.png" not in text  # one evaluation per run: no curve
    assert set(json.loads((out / "summary.json").read_text())) == {"cls/trec", "cls/trec/max_test_samples 100"}


# ----------------------------------------------------------------------------- hidden test labels


def test_runs_with_hidden_test_labels_show_validation_and_never_a_test_score(tmp_path):
    records = [record(lr=lr, seed=s, val=v, test=0.77, hidden=True) for lr, v in ((1e-5, 0.6), (3e-5, 0.7)) for s in (1, 2)]
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    assert "**Test labels hidden.**" in text
    assert "**test labels hidden** (accuracy (%), 2 seeds)" in text
    assert ["glm_cloze", "glm-tiny", "none", "p 0, lr 3e-5, bs 16", "2", "70.00 ± 0.00", "–", "hidden", "–", "–",
            "1k (100%)", "10"] in table_rows(text)  # fmt: skip
    assert "77" not in text.replace(str(tmp_path), "") and "test_mean" not in text


# ----------------------------------------------------------------------------- error analysis


def test_classification_error_analysis_of_the_best_system(tmp_path):
    # Two seeds of one config with the hand-worked predictions of test_error_analysis (4 of 6 right in each).
    results = write_runs(tmp_path / "runs", [record(seed=s, val=0.7, test=4 / 6) for s in (1, 2)])
    for i, seed in enumerate(SEEDS):
        write_jsonl_atomic(results / f"run{i:03d}" / "predictions_test.jsonl", cls_rows(seed))
    report.main([str(results), "--output_dir", str(tmp_path / "report")])

    text = (tmp_path / "report" / "report.md").read_text()
    rows = table_rows(text)
    assert "### Error analysis: glm_cloze [glm-tiny]" in text
    assert ["A", "75.0", "75.0", "75.0", "33.3", "2"] in rows
    assert ["B", "57.1", "100.0", "72.7", "58.3", "2"] in rows
    assert ["C", "100.0", "25.0", "40.0", "8.3", "2"] in rows
    assert ("**Reading.** Per class, F1 ranges from 40.0 (C) to 75.0 (A). The most predicted class, B, takes 58.3% of "
            "the predictions against 33.3% of the gold labels. The most frequent confusion is gold C predicted as B "
            "(50.0% of the gold C examples).") in text  # fmt: skip
    # The inputs' shared opening word ("question") is the prompt's: cut.
    assert ["1", "… 4", "C", "A", "2.00", "2 of 2"] in rows and ["3", "… 5", "C", "B", "0.25", "1 of 2"] in rows
    assert ("**Reading.** 2 of these 3 errors predict B; their margins run from 0.25 to 2.00. Wrong in every seed: 1 of "
            "3 (systematic errors rather than seed noise).") in text  # fmt: skip
    assert "![confusion matrix](confusion_cls_trec_glm_cloze_glm-tiny.png)" in text
    assert_png(tmp_path / "report" / "confusion_cls_trec_glm_cloze_glm-tiny.png")
    assert r"F1 (\%)" in (tmp_path / "report" / "tables.tex").read_text()


def test_generation_error_analysis_of_the_best_system(tmp_path):
    records = [record(task="gen", method="glm_gen", seed=s, val=30.0, test=40.0) for s in (1, 2)]
    results = write_runs(tmp_path / "runs", records)
    for i, outputs in enumerate(OUTPUTS):
        write_jsonl_atomic(results / f"run{i:03d}" / "generations_test.jsonl", gen_rows(outputs))
    report.main([str(results), "--output_dir", str(tmp_path / "report")])

    text = (tmp_path / "report" / "report.md").read_text()
    rows = table_rows(text)
    dog = sacrebleu.sentence_bleu("dog", ["a dog barks"]).score
    assert ["1", "… 1", "(empty)", "a dog barks", "0.0", f"{dog / 2:.1f}"] in rows
    assert ["3", "… 0", "the cat sat", "the cat sat ‖ the cat sat down", "100.0", "100.0"] in rows
    assert (f"**Reading.** These outputs score sentence BLEU {dog / 2:.1f} to 100.0; empty outputs among them: 1. Over "
            "all 3 test sources the system writes 3 distinct outputs (mean over seeds).") in text  # fmt: skip
    std = np.std([3, 0, 5, 3, 1, 5], ddof=1)
    assert ["outputs", "2.8", f"{std:.1f}", "3.0", "0.5", "5.0", "0.0", "5.0"] in rows
    assert ("**Reading.** Outputs have 2.8 words on average (median 3) against 3.2 for the references (ratio 0.89); "
            "33.3% of the outputs are shorter than every reference of their source and 33.3% longer than every one; "
            "empty outputs: 1 of 6.") in text  # fmt: skip


def test_example_tables_leave_out_the_words_every_test_input_shares():
    inputs = ["Question: What is TMJ ? Is this asking about a place?", "Question: Who is he ? Is this asking about a place?",
              "Question: Where ? Is this asking about a place?"]  # fmt: skip
    shared = shared_words(inputs)
    assert shared == (1, 7)
    assert [strip_words(text, shared) for text in inputs] == ["… What is TMJ …", "… Who is he …", "… Where …"]
    assert shared_words(inputs + ["Question: Is this asking about a place?"]) == (0, 0)  # nothing of its own left
    assert shared_words(inputs[:1]) == (0, 0)
    assert text_cell("a |  b\nc", width=6) == "a \\| b…"  # one line, "|" escaped, cut to 6 characters


def test_no_error_analysis_without_predictions_or_with_hidden_labels(tmp_path):
    out = make_report(tmp_path / "plain", accuracy_runs())
    assert "No error analysis: a run of its best configuration saved no predictions_test.jsonl." in (
        out / "report.md").read_text()  # fmt: skip
    hidden = make_report(tmp_path / "hidden", [record(seed=s, hidden=True) for s in (1, 2)])
    assert "The test labels are hidden: no error analysis." in (hidden / "report.md").read_text()
    assert not list(out.glob("confusion_*.png"))


# ----------------------------------------------------------------------------- report.py's own errors


@pytest.mark.parametrize("make", [lambda root: root / "missing", lambda root: root])
def test_report_on_a_folder_without_results_says_what_it_looked_for(tmp_path, make):
    (tmp_path / "cls_trec").mkdir()
    folder = make(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "report.py"), str(folder)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("report.py: error: ") and str(folder) in error
    assert ("is not a folder" if folder.name == "missing" else "no readable results.json") in error


def test_report_reads_runs_by_default(tmp_path, monkeypatch):
    write_runs(tmp_path / "runs", [record(seed=1), record(seed=2)])
    monkeypatch.chdir(tmp_path)
    report.main([])
    assert (tmp_path / "runs" / "report" / "report.md").is_file()


# ----------------------------------------------------------------------------- is a difference real?


def test_report_gives_test_intervals_and_paired_tests_against_the_best_system(tmp_path):
    # 5 test examples: GLM right on the first four, the linear head on none: 80 points apart, and
    # exactly 4 of the 2^5 swaps of the paired test are as extreme: p = 0.125.
    records = [record(val=0.9, test=0.8), record(method="linear_head", model="roberta-tiny", prompt_id=None, val=0.5, test=0.0)]
    predictions = [[(g, g) for g in range(4)] + [(4, 0)], [(g, (g + 1) % 6) for g in range(5)]]
    results = write_runs(tmp_path / "runs", records, predictions)
    report.main([str(results), "--output_dir", str(tmp_path / "report")])

    text = (tmp_path / "report" / "report.md").read_text()
    rows = {row[0]: row for row in table_rows(text)}
    expected = scipy.stats.bootstrap(([1.0, 1, 1, 1, 0],), np.mean, n_resamples=1000, batch=100, method="percentile",
                                     rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert rows["glm_cloze"][7:10] == ["80.00", f"[{100 * expected.low:.1f}, {100 * expected.high:.1f}]", "–"]
    assert rows["linear_head"][7:10] == ["0.00", "[0.0, 0.0]", "0.125"]
    assert (f"on test it scores 80.00 (95% CI [{100 * expected.low:.1f}, {100 * expected.high:.1f}] over 5 test "
            "examples), 1 seed.") in text  # fmt: skip
    assert ("- It beats linear_head [roberta-tiny] by 80.00 points on test (p = 0.125, not significant at 0.05; "
            "1 seed vs 1 seed).") in text


def test_report_tests_every_pair_of_prompts(tmp_path):
    # 12 examples, prompt 1 right on all, prompt 0 on none: 2 of the 2^12 swaps are as extreme.
    records = [record(prompt_id=0, val=0.3, test=0.0), record(prompt_id=1, val=0.9, test=1.0)]
    predictions = [[(g % 6, (g + 1) % 6) for g in range(12)], [(g % 6, g % 6) for g in range(12)]]
    results = write_runs(tmp_path / "runs", records, predictions)
    report.main([str(results), "--output_dir", str(tmp_path / "report")])

    text = (tmp_path / "report" / "report.md").read_text()
    assert ("- Prompt 1 (prompt1) beats prompt 0 (prompt0) by 100.00 points on test (p < 0.001, **significant** at "
            "0.05; 1 seed vs 1 seed).") in text
    assert ["1: prompt1", "1e-5", "16", "1", "90.00", "–", "100.00", "[100.0, 100.0]"] in table_rows(text)


def test_sensitivity_is_stated_in_numbers_under_the_heatmap_and_the_prompts(tmp_path):
    records = accuracy_runs() + [record(prompt_id=1, lr=lr, bs=bs, seed=s, val=0.5, test=0.5)
                                 for lr in (1e-5, 3e-5) for bs in (16, 32) for s in (1, 2)]  # fmt: skip
    out = make_report(tmp_path, records)

    text = (out / "report.md").read_text()
    # Cell means 70, 60, 80, 75: spread 20, sample std sqrt(218.75 / 3) = 8.54; 3e-5 is best at both batch sizes.
    assert ("**Sensitivity** (validation accuracy (%), 4 cells): best 80.00 at learning rate 3e-5, batch size 16; "
            "worst 60.00; spread 20.00 points, std across cells 8.54. The best learning rate does not move with batch "
            "size (3e-5 at batch size 16, 3e-5 at batch size 32). The seed-to-seed std at the best cell, 2.83, is "
            "smaller than the std across cells (8.54): the configuration matters more than the seed.") in text
    # Prompts at their best: 80 (std 2.83) and 50 (std 0): std across prompts 21.21, seed RMS sqrt(8 / 2) = 2.
    assert ("the 2 prompts range from 50.00 to 80.00 (spread 30.00 points, std across prompts 21.21). The seed-to-seed "
            "std at those configurations (root mean square), 2.00, is smaller than the std across prompts (21.21): the "
            "prompt matters more than the seed.") in text


def test_grid_sensitivity_sees_the_best_learning_rate_move_with_batch_size():
    grid = pd.DataFrame({"learning_rate": [1e-5, 3e-5, 1e-5, 3e-5], "batch_size": [16, 16, 32, 32],
                         "val_mean": [70.0, 80.0, 75.0, 60.0], "val_std": [1.0, 3.0, 1.0, 1.0]})  # fmt: skip
    grid["best"] = grid["val_mean"].eq(80.0)

    found = grid_sensitivity(grid, "accuracy")

    assert found["best_lr"] == {16: 3e-5, 32: 1e-5} and found["lr_moves"]
    assert (found["spread"], found["worst"], found["seed_std"]) == (20.0, 60.0, 3.0)
    assert found["cell_std"] == pytest.approx(math.sqrt(218.75 / 3))
    assert prompt_sensitivity(grid.assign(val_std=[2.0, np.nan, 1.0, 2.0]))["seed_std"] == pytest.approx(math.sqrt(3))


# ----------------------------------------------------------------------------- few-shot curves


def few_shot_records():
    """GLM cloze (prompt 0) and a GLM linear head at K = 8 and 16 (shot draws 0 and 1, seed 1) and on the full data
    (one run). Test (%): cloze 40/50, 50/60, 70; head 20/30, 50/50, 80. At K = 8 the cloze runs at lr 3e-5 score 90
    on test but lower on validation: never chosen."""
    def run(method, shots, draw, test, val=0.5, lr=1e-5):
        prompt = 0 if method == "glm_cloze" else None
        few = {} if shots is None else {"num_shots": shots, "shots_seed": draw}
        return record(method=method, prompt_id=prompt, lr=lr, seed=1, val=val, test=test, **few)

    return [run("glm_cloze", 8, 0, 0.40), run("glm_cloze", 8, 1, 0.50), run("glm_cloze", 16, 0, 0.50),
            run("glm_cloze", 16, 1, 0.60), run("glm_cloze", None, None, 0.70),
            run("glm_cloze", 8, 0, 0.90, val=0.3, lr=3e-5), run("glm_cloze", 8, 1, 0.90, val=0.3, lr=3e-5),
            run("linear_head", 8, 0, 0.20), run("linear_head", 8, 1, 0.30), run("linear_head", 16, 0, 0.50),
            run("linear_head", 16, 1, 0.50), run("linear_head", None, None, 0.80)]  # fmt: skip


def test_few_shot_runs_form_a_study_per_k_and_pool_their_draws_like_seeds(tmp_path):
    runs = loaded(tmp_path, few_shot_records())

    assert sorted(runs["study"].unique()) == ["", "16 shots per class", "8 shots per class"]
    cells = summarize(runs[runs["study"] == "8 shots per class"], ["method", "learning_rate"])
    assert cells["n_seeds"].tolist() == [2, 2, 2]  # seed 1 with draws 0 and 1: no repeat of one seed
    assert cells["test_mean"].tolist() == pytest.approx([45.0, 90.0, 25.0])


def test_few_shot_sections_follow_the_full_data_in_order_of_k(tmp_path):
    write_runs(tmp_path / "runs", few_shot_records())
    report.main([str(tmp_path / "runs"), "--output_dir", str(tmp_path / "report")])

    titles = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("## ")]
    assert titles == ["## TREC: few-shot learning curves", "## TREC: classification, metric accuracy (%)",
                      "## TREC (8 shots per class): classification, metric accuracy (%)",
                      "## TREC (16 shots per class): classification, metric accuracy (%)"]


def test_few_shot_curve_table_reading_and_figure(tmp_path):
    runs = loaded(tmp_path, few_shot_records())
    curve = few_shot_curve(runs, "accuracy")

    cloze = curve[curve["method"] == "glm_cloze"]
    assert cloze["shots"].tolist() == [8, 16, FULL_DATA]
    assert cloze["learning_rate"].tolist() == [1e-5] * 3  # chosen on validation, not the 90 on test
    assert cloze["test_mean"].tolist() == pytest.approx([45.0, 55.0, 70.0])
    assert cloze[["test_min", "test_max", "n"]].iloc[0].tolist() == [40.0, 50.0, 2]
    table = make_few_shot_table("cls", "trec", curve, "accuracy")
    assert table_rows(table.markdown()) == [
        ["system", "K = 8", "K = 16", "full", "replicates"],
        ["glm_cloze [glm-tiny], prompt 0", "45.00 ± 7.07", "55.00 ± 7.07", "70.00", "2; full 1"],
        ["linear_head [glm-tiny]", "25.00 ± 7.07", "50.00 ± 0.00", "80.00", "2; full 1"]]  # fmt: skip
    assert few_shot_reading(curve, "accuracy") == [
        "With 8 examples per class, glm_cloze [glm-tiny], prompt 0 leads on test accuracy (45.0, next linear_head "
        "[glm-tiny] 25.0; the bands do not overlap).",
        "On the full training data, linear_head [glm-tiny] leads on test accuracy (80.0, next glm_cloze [glm-tiny], "
        "prompt 0 70.0; one replicate: no band to compare).",
        "linear_head [glm-tiny] takes the lead from glm_cloze [glm-tiny], prompt 0 between K = 16 and full.",
        "Best prompt-based line minus best linear head (accuracy points): +20.0 at K = 8, +5.0 at K = 16, -10.0 at "
        "full."]  # fmt: skip
    unscored, _ = separate_runs(load_results(tmp_path))  # as report.py has them
    lines, tables = report.few_shot_sections(unscored, tmp_path)
    assert_png(tmp_path / "few_shot_cls_trec.png")
    assert "![test score against K](few_shot_cls_trec.png)" in lines and tables[0].frame.equals(table.frame)
    assert lines[lines.index("![test score against K](few_shot_cls_trec.png)") + 2].endswith(
        "For reference, the majority class baseline scores 20.0 on test.")


def test_one_configuration_draws_no_heatmap(tmp_path):
    write_runs(tmp_path / "runs", [record(seed=1), record(seed=2)])
    report.main([str(tmp_path / "runs"), "--output_dir", str(tmp_path / "report")])

    assert not list((tmp_path / "report").glob("heatmap_*.png"))
    assert "heatmap" not in (tmp_path / "report" / "report.md").read_text()


def test_per_class_reading_of_equal_f1_names_no_range():
    classes = pd.DataFrame({"class": ["positive", "negative"], "f1": [1.0, 1.0], "predicted": [0.5, 0.5]})
    reading = per_class_reading(classes, np.array([[3, 0], [0, 3]]))
    assert reading.startswith("**Reading.** Every class has F1 100.0. The most predicted class, positive, takes 50.0%")


def test_help_shows_the_results_folder_in_its_usage(capsys):
    with pytest.raises(SystemExit):
        report.parse_args(["--help"])
    assert capsys.readouterr().out.splitlines()[0] == f"usage: {os.path.basename(sys.argv[0])} [RESULTS_DIR] [options]"
