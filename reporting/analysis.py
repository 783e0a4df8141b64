"""Reading a sweep's results.json files (used by report.py): loading, telling apart the runs that may share a
table cell, metric scales, aggregation over seeds, model selection on validation, sensitivity in numbers.

A study is a (task, dataset) on the same data; a system is (method, PEFT, model, every other setting); a cell
is a system's (prompt, learning rate, batch size), whose runs differ in their replicate (seed, and the draw
of a few-shot run) only (`separate_runs`). Runs without training are no grid point: a zero-shot run gives
the "before" score of the systems that start from it (`match_zero_shot`).
"""

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from metrics import higher_is_better

logger = logging.getLogger("report")

SYSTEM = ["task", "dataset", "study", "method", "peft", "model", "variant"]
CONFIG = ["prompt_id", "learning_rate", "batch_size"]
NO_PROMPT = -1  # prompt_id of runs that use no prompt (e.g. a linear head on raw text)

# Arguments that do not change what a run computes.
OPERATIONAL_ARGS = frozenset({
    "seed", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "checkpointing_steps", "save_total_limit",
    "save_best_model", "per_device_eval_batch_size", "list_prompts", "debug", "with_tracking", "report_to",
    "do_train", "peft_weights", "calibrate",
})  # fmt: skip
# The grid axes, read from the record (its prompt_id is the one the run resolved).
GRID_ARGS = frozenset({"prompt_id", "prompt_name", "learning_rate", "per_device_train_batch_size"})
# Arguments that only shape training: a zero-shot run is the same evaluation whatever their values.
TRAINING_ONLY_ARGS = frozenset({
    "weight_decay", "num_train_epochs", "max_train_steps", "gradient_accumulation_steps", "warmup_ratio",
    "lr_scheduler_type", "max_grad_norm", "metric_for_best_model", "eval_steps", "group_by_length", "label_smoothing",
})  # fmt: skip
DATA_ARGS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file",
             "max_train_samples", "max_eval_samples", "max_test_samples", "skip_empty", "num_shots")
# The carve's flags act through the rows they carve (data settings' "validation rows").
CARVE_ARGS = ("validation_split_percentage", "data_seed")
REPLICATE_ARGS = ("seed", "shots_seed")
PEFT_ARGS = {"lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
             "ptuning_v2": ("pre_seq_len", "prefix_projection", "prefix_hidden_size")}  # fmt: skip

DEFAULT_METRIC = {"cls": "accuracy", "gen": "bleu"}
PERCENT_METRICS = {"accuracy", "macro_f1", "f1", "precision", "recall"}
METRIC_NAMES = {
    "accuracy": "accuracy", "macro_f1": "macro-F1", "bleu": "BLEU", "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "loss": "loss",
}  # fmt: skip
DATASET_TITLES = {"trec": "TREC", "e2e_nlg_cleaned": "E2E NLG (cleaned)"}
TASK_NAMES = {"cls": "classification", "gen": "generation"}


# --- Loading ---


def load_results(results_dir):
    """One row per results.json under results_dir (searched recursively; an unreadable file is skipped
    with a warning): the record's fields (`_row`), replicate (the REPLICATE_ARGS values), data_settings,
    settings (`run_settings` and the launch); study and variant "" until `separate_runs` sets them."""
    rows, pretraining = [], []
    for path in sorted(Path(results_dir).rglob("results.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("task") == "pretrain":
                pretraining.append(str(path.parent))
                continue
            rows.append(_row(record, path))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("Skipping %s: %s", path, error)
    if pretraining:
        logger.warning("Leaving out %d run_pretrain.py run(s), which the report does not compare (fine-tune from "
                       "their model folder to see their effect): %s", len(pretraining), ", ".join(pretraining))
    return pd.DataFrame(rows)


def _row(record, path):
    args = record.get("args") or {}
    peft = record.get("peft") or "none"
    hidden = bool(record.get("test_labels_hidden"))
    test_counts = (record.get("data") or {}).get("test") or {}
    test_rows = test_counts.get("kept")
    return {
        "task": record["task"],
        "dataset": dataset_name(record["dataset"]),
        "study": "",
        "method": record["method"],
        "peft": peft,
        "model": model_name(record.get("model_name_or_path")),
        "variant": "",
        "prompt_id": NO_PROMPT if record.get("prompt_id") is None else int(record["prompt_id"]),
        "prompt_name": record.get("prompt_name") or "",
        "learning_rate": float(record["learning_rate"]),
        "batch_size": int(record["per_device_train_batch_size"]),
        "seed": record.get("seed"),
        "replicate": tuple(args.get(name, record.get(name)) for name in REPLICATE_ARGS),
        "num_shots": args.get("num_shots"),
        "metric_for_best_model": record.get("metric_for_best_model"),
        "validation": record.get("validation") or {},
        "test": record.get("test") or {},
        "test_hidden": hidden,
        "epochs": record.get("epochs") or [],
        "baselines": record.get("baselines") or {},
        "train_time_s": record.get("train_time_s"),
        "trainable_share": record.get("trainable_share"),
        "trainable_params": record.get("trainable_params"),
        "script": record.get("script"),
        "args": args,
        "env": record.get("env") or {},
        "data_settings": {**{name: args.get(name) for name in DATA_ARGS}, "test examples": test_rows,
                          "test labels hidden": hidden, "validation rows": carved_rows(record)},
        "test_rows": test_counts.get("rows", test_rows),  # of the file: a prompt may skip some (test examples)
        "settings": {**run_settings(args, peft), **(record.get("launch") or {})},
        "path": str(path),
    }  # fmt: skip


def carved_rows(record):
    """The validation rows a run carved from train, "N rows #hash" (SHA-256 of their indices), or for a
    record from before --data_seed "carved by --seed S"; None when nothing was carved."""
    if "carved_validation" not in record:
        args = record.get("args") or {}
        carved = args.get("train_file") and not args.get("validation_file") and not args.get("num_shots")
        return f"carved by --seed {args.get('seed')}" if carved else None
    rows = (record["carved_validation"] or {}).get("validation_rows")
    return None if rows is None else f"{len(rows)} rows #{hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:8]}"


def run_settings(args, peft):
    """The settings that define a run's cell besides data, grid axes and seed: every recorded argument but
    those and OPERATIONAL_ARGS and the arguments of the PEFT methods the run does not use."""
    unused = {name for method, names in PEFT_ARGS.items() if method != peft for name in names}
    skip = OPERATIONAL_ARGS | GRID_ARGS | set(DATA_ARGS) | set(CARVE_ARGS) | set(REPLICATE_ARGS) | unused
    return {name: value for name, value in sorted(args.items()) if name not in skip}


def dataset_name(dataset):
    """A short dataset name; for local files {"train": ".../trec/train.csv"} the first file's folder."""
    if isinstance(dataset, dict):
        first = next(iter(dataset.values()), "local")
        return Path(first).parent.name or "local"
    return str(dataset).split("/")[-1]


def model_name(model_name_or_path):
    """The last path component of a model name or path ("BAAI/glm-roberta-large" -> "glm-roberta-large")."""
    return str(model_name_or_path or "?").rstrip("/").split("/")[-1]


def system_label(system):
    """ "glm_cloze + lora [glm-tiny]", with a variant "glm_cloze [glm-tiny] (max_train_steps 1)"."""
    peft = "" if system["peft"] == "none" else f" + {system['peft']}"
    variant = f" ({system['variant']})" if system.get("variant") else ""
    return f"{system['method']}{peft} [{system['model']}]{variant}"


# --- Which runs may share a cell ---


def split_untrained(runs):
    """(trained runs, runs without a training step): the latter's learning rate and batch size mean
    nothing, so they never compete in the grid search."""
    trained = runs["epochs"].map(len) > 0
    return runs[trained], runs[~trained]


def separate_runs(runs):
    """Set every run's study and variant and drop repeats, so that the runs of one cell differ in their
    replicate only: (runs, Markdown lines saying which runs were set apart and why).

    Few-shot runs form a study per number of shots. Per (task, dataset, shots), the most common data
    settings make the main study; runs on other data get a study named by what differs
    ("max_train_samples 72"). Per system, the most common `run_settings` make the main variant, the others
    a variant named by what differs ("max_train_steps 1"). Ties go to the first seen (path order)."""
    runs = runs.copy()
    notes = []
    for (task, dataset, shots), group in runs.groupby(["task", "dataset", "num_shots"], sort=False, dropna=False):
        title = DATASET_TITLES.get(dataset, dataset)
        shots = "" if pd.isna(shots) else f"{int(shots)} shots per class"
        runs.loc[group.index, "study"] = shots
        for label, members, differences, main_count, names in _minorities(group, "data_settings"):
            label = ", ".join(filter(None, (shots, label)))
            runs.loc[members.index, "study"] = label
            if names == ["test examples"] and group["test_rows"].nunique() == 1:  # the same files
                why = (f"read the same data as the {main_count} others, but a prompt skipped test rows it could not "
                       f"render ({differences}, of {group['test_rows'].iloc[0]} test rows)")
            else:
                why = f"used other data than the {main_count} others ({differences})"
            notes.append(f"- {len(members)} run(s) of {task}/{dataset} {why}: reported in their own section, "
                         f"\"{title} ({label})\".")
    for (task, dataset, study, *system), group in runs.groupby(SYSTEM[:-1], sort=False):
        name = system_label(dict(zip(("method", "peft", "model"), system)))
        for label, members, differences, main_count, _ in _minorities(group, "settings"):
            runs.loc[members.index, "variant"] = label
            notes.append(f"- {len(members)} run(s) of {name} on {task}/{dataset} differ from its {main_count} other "
                         f"run(s) in {differences}: a system of their own, \"{name.rsplit(' [', 1)[0]} "
                         f"[{system[-1]}] ({label})\".")
    repeated = runs.duplicated(SYSTEM + CONFIG + ["replicate"])
    for path in runs.loc[repeated, "path"]:
        notes.append(f"- `{path}` repeats the settings and seed of another run: left out (each seed counts once).")
    return runs[~repeated], notes


def evaluation_settings(args):
    """`run_settings` without TRAINING_ONLY_ARGS and PEFT (zero-shot is the model before any PEFT module,
    where full fine-tuning and every PEFT method start)."""
    return {name: value for name, value in run_settings(args, "none").items()
            if name not in TRAINING_ONLY_ARGS and name != "peft"}  # fmt: skip


def match_zero_shot(runs, untrained):
    """The `untrained` runs that evaluate what some trained `runs` start from (same data, method, model,
    prompt and `evaluation_settings`, no PEFT): (those, with their study and an `evaluation` column, repeats
    left out; the other untrained runs with a `reason` column; Markdown lines naming the repeats)."""
    studies = {(r.task, r.dataset, _key(r.data_settings)): r.study for r in runs.itertuples()}
    starts = {(r.task, r.dataset, r.study, r.method, r.model, r.prompt_id, _key(evaluation_settings(r.args)))
              for r in runs.itertuples()}  # fmt: skip
    found = []  # per untrained run: (reason, study, evaluation)
    for run in untrained.itertuples():
        study = studies.get((run.task, run.dataset, _key(run.data_settings)))
        evaluation = _key(evaluation_settings(run.args))
        if run.args.get("peft_weights"):
            reason = "an evaluation of saved --peft_weights"
        elif run.peft != "none":
            reason = f"{run.peft} modules left untrained"
        elif study is None:
            reason = "zero-shot on data that no trained run used"
        elif (run.task, run.dataset, study, run.method, run.model, run.prompt_id, evaluation) not in starts:
            reason = "zero-shot with a model, prompt or settings that no trained run shares"
        else:
            reason = ""
        found.append((reason, study, evaluation))
    reasons, study, evaluation = (list(column) for column in zip(*found)) if found else ([], [], [])
    untrained = untrained.assign(reason=reasons, study=study, evaluation=evaluation)
    zero_shot = untrained[untrained["reason"] == ""].drop(columns="reason")
    repeated = zero_shot.duplicated(["task", "dataset", "study", "method", "model", "evaluation", "prompt_id",
                                     "replicate"])
    notes = [f"- `{path}` repeats the zero-shot settings and seed of another run: left out (each seed counts once)."
             for path in zero_shot.loc[repeated, "path"]]  # fmt: skip
    return zero_shot[~repeated], untrained[untrained["reason"] != ""], notes


def zero_shot_summary(zero_shot, system_runs):
    """`summarize` per prompt of the `zero_shot` runs (scored) that one system's runs start from."""
    first = system_runs.iloc[0]
    names = ["task", "dataset", "study", "method", "model"]
    same = (zero_shot[names] == first[names]).all(axis=1)
    same &= zero_shot["evaluation"] == _key(evaluation_settings(first["args"]))
    return summarize(zero_shot[same], ["prompt_id"])


def add_zero_shot(table, summaries):
    """Copy of a summary table with zs_val_mean, zs_val_std, zs_test_mean, zs_test_std, zs_n_seeds (0 where
    there is none), zs_test_hidden and zs_paths of each row's prompt in its `zero_shot_summary` (one per row)."""
    columns = ["val_mean", "val_std", "test_mean", "test_std", "n_seeds", "test_hidden", "paths"]
    found = []
    for prompt_id, summary in zip(table["prompt_id"], summaries):
        match = summary[summary["prompt_id"] == prompt_id]
        found.append(match[columns].iloc[0].tolist() if len(match) else [np.nan] * 4 + [0, False, []])
    zero = pd.DataFrame(found, columns=[f"zs_{name}" for name in columns], index=table.index)
    return pd.concat([table, zero], axis=1)


def _key(value):
    return json.dumps(value, sort_keys=True, default=str)


def _minorities(group, column):
    """Per value of `column` (a dict) but the most common: (short label, rows, differences in words, count of
    the most common, names of the differing keys)."""
    keys = group[column].map(_key)
    counts = Counter(keys)
    main = max(counts, key=counts.get)  # the first most common, in path order
    main_value = group.loc[keys == main, column].iloc[0]
    found = []
    for key in counts:
        if key == main:
            continue
        members = group[keys == key]
        value = members[column].iloc[0]
        names = [name for name in sorted(set(value) | set(main_value)) if value.get(name) != main_value.get(name)]
        label = ", ".join(f"{name} {_short(value.get(name))}" for name in names[:3])
        label += f", +{len(names) - 3} more" if len(names) > 3 else ""
        differences = "; ".join(f"{name} {_short(value.get(name))} vs {_short(main_value.get(name))}" for name in names)
        found.append((label, members, differences, counts[main], names))
    return found


def _short(value):
    """A setting in a few characters: None -> "none", a path -> its last two components."""
    if value is None:
        return "none"
    if isinstance(value, str) and "/" in value:
        return "/".join(Path(value).parts[-2:])
    return str(value)


# --- Metrics: which one, which direction, how shown ---


def choose_metric(runs):
    """The runs' most common metric_for_best_model, else the task's default, else the first key."""
    named = [m for m, v in zip(runs["metric_for_best_model"], runs["validation"]) if m and m in v]
    if named:
        return pd.Series(named).mode().iloc[0]
    default = DEFAULT_METRIC.get(runs["task"].iloc[0])
    keys = [key for v in runs["validation"] for key in v]
    return default if default in keys else (keys[0] if keys else default)


def metric_scale(metric):
    """Factor from stored value to shown value (100 for metrics stored in [0, 1])."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def metric_label(metric):
    """ "accuracy (%)", "BLEU (0-100)"."""
    name = METRIC_NAMES.get(metric, metric)
    if metric in PERCENT_METRICS:
        return f"{name} (%)"
    if metric in {"bleu", "rouge1", "rouge2", "rougeL"}:
        return f"{name} (0-100)"
    return name


def add_scores(runs, metric):
    """Copy of runs with columns val and test: the metric on its shown scale (NaN where missing)."""
    scale = metric_scale(metric)
    runs = runs.copy()
    runs["val"] = [scale * v[metric] if v.get(metric) is not None else np.nan for v in runs["validation"]]
    runs["test"] = [scale * t[metric] if t.get(metric) is not None else np.nan for t in runs["test"]]
    runs["metric"] = metric
    return runs


# --- Aggregation and selection (pandas) ---


def summarize(runs, keys):
    """Per group of keys: mean and sample std over seeds (NaN for one) of val and test, n_seeds (replicates),
    means of train_time_s, trainable_share, trainable_params, test_hidden (any) and paths (list)."""
    grouped = runs.groupby(keys, sort=True)
    summary = grouped.agg(
        val_mean=("val", "mean"), val_std=("val", "std"),
        test_mean=("test", "mean"), test_std=("test", "std"),
        n_seeds=("replicate", "nunique"),
        train_time_s=("train_time_s", "mean"), trainable_share=("trainable_share", "mean"),
        trainable_params=("trainable_params", "mean"), test_hidden=("test_hidden", "any"), paths=("path", list),
    )  # fmt: skip
    return summary.reset_index()


def best_row(summary, metric):
    """The row with the best mean VALIDATION score (ties: smaller std, then grid order); never reads test."""
    ranked = summary.sort_values(
        ["val_mean", "val_std"], ascending=[not higher_is_better(metric), True], na_position="last", kind="stable"
    )
    return ranked.iloc[0]


def grid_table(system_runs, metric):
    """`summarize` per config of one system, with the flag `best` on the config chosen on validation."""
    summary = summarize(system_runs, CONFIG)
    best = best_row(summary, metric)
    summary["best"] = (summary[CONFIG] == best[CONFIG]).all(axis=1)
    return summary


def prompt_table(system_runs, metric):
    """Per prompt, its `summarize` row at its best (lr, batch size) chosen on validation."""
    summary = summarize(system_runs, CONFIG)
    rows = [best_row(group, metric) for _, group in summary.groupby("prompt_id", sort=True)]
    table = pd.DataFrame(rows).reset_index(drop=True)
    names = system_runs.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_name"]
    table["prompt_name"] = table["prompt_id"].map(names)
    return table


def comparison_table(runs, metric):
    """One row per system, in `system_order`: its `summarize` row at its best config chosen on validation."""
    rows = []
    for system, system_runs in runs.groupby(SYSTEM, sort=False):
        best = best_row(summarize(system_runs, CONFIG), metric)
        row = dict(zip(SYSTEM, system))
        row.update(best.to_dict())
        rows.append(row)
    table = pd.DataFrame(rows)
    order = table.apply(system_order, axis=1)
    return (table.assign(_order=order).sort_values(["_order", "method", "peft", "model", "variant"])
            .drop(columns="_order").reset_index(drop=True))  # fmt: skip


def system_order(row):
    """Table order: GLM full fine-tuning, GLM + PEFT, then baselines."""
    is_glm = str(row["method"]).startswith("glm")
    return (0 if row["peft"] == "none" else 1) if is_glm else 2


def trivial_baselines(runs, metric):
    """The scripts' trivial baselines of one study's runs: {name: (validation, test)} on the shown scale, the
    mean over replicates (a carved validation split and a few-shot draw depend on them); NaN where absent.
    An entry is {"validation": {...}, "test": {...}} or a flat metric dict (the test score)."""
    scale = metric_scale(metric)
    values = {}
    for seed, baselines in zip(runs["replicate"], runs["baselines"]):
        for name, entry in (baselines or {}).items():
            if "validation" in entry or "test" in entry:
                val, test = (entry.get(split) or {} for split in ("validation", "test"))
            else:
                val, test = {}, entry
            values.setdefault(name, {}).setdefault(seed, [scale * d.get(metric, np.nan) for d in (val, test)])
    return {name: tuple(pd.DataFrame(list(by_seed.values())).mean()) for name, by_seed in values.items()}


def best_runs(system_runs, metric):
    """The runs (one per seed) of a system's best config."""
    best = best_row(summarize(system_runs, CONFIG), metric)
    mask = (system_runs[CONFIG] == best[CONFIG]).all(axis=1)
    return system_runs[mask]


def learning_curve(runs, metric):
    """(DataFrame x, mean, std, n: the validation metric per evaluation over the runs; the x label): x is
    epochs completed when every evaluation of a run has its own epoch, else the optimizer step."""
    scale = metric_scale(metric)
    points = [
        {"run": path, "epoch": entry.get("epoch"), "step": entry.get("step"),
         "value": scale * entry["validation"][metric]}
        for path, epochs in zip(runs["path"], runs["epochs"])
        for entry in epochs
        if metric in (entry.get("validation") or {})
    ]  # fmt: skip
    if not points:
        return pd.DataFrame(columns=["x", "mean", "std", "n"]), "epochs completed"
    points = pd.DataFrame(points)
    by_epoch = points.groupby("run")["epoch"].nunique().eq(points.groupby("run").size()).all()
    x = "epoch" if by_epoch and points["epoch"].notna().all() else "step"
    curve = points.groupby(x)["value"].agg(["mean", "std", "size"]).reset_index()
    curve.columns = ["x", "mean", "std", "n"]
    if x == "epoch":  # the scripts count epochs from 0 and validate at each one's end
        curve["x"] += 1
    return curve, ("epochs completed" if x == "epoch" else "optimizer steps")


# --- Sensitivity in numbers ---


def grid_sensitivity(grid, metric):
    """How much the lr x batch-size grid of one prompt (`grid_table` rows) matters, on validation: dict of
    cells, best (row), worst, spread, cell_std (sample std of the cell means), best_lr {batch size: best lr},
    lr_moves (whether that lr differs between batch sizes), seed_std (at the best cell)."""
    values = grid["val_mean"].dropna()
    best = grid[grid["best"]].iloc[0]
    worst = values.min() if higher_is_better(metric) else values.max()
    best_lr = {int(bs): best_row(cells, metric)["learning_rate"] for bs, cells in grid.groupby("batch_size")}
    return {
        "cells": len(values), "best": best, "worst": worst, "spread": abs(best["val_mean"] - worst),
        "cell_std": values.std(), "best_lr": best_lr, "lr_moves": len(set(best_lr.values())) > 1,
        "seed_std": best["val_std"],
    }  # fmt: skip


def prompt_sensitivity(prompts):
    """How much the prompt matters (`prompt_table` rows), on validation: dict of prompts, low, high, spread,
    prompt_std (sample std of the prompts' means), seed_std (root mean square of their seed std; NaN if none)."""
    values = prompts["val_mean"].dropna()
    seed_std = prompts["val_std"].dropna()
    return {
        "prompts": len(values), "low": values.min(), "high": values.max(), "spread": values.max() - values.min(),
        "prompt_std": values.std(), "seed_std": float(np.sqrt((seed_std**2).mean())) if len(seed_std) else np.nan,
    }  # fmt: skip


# --- Few-shot learning curves: test score against the number of shots per class ---

FULL_DATA = np.inf  # the `shots` of runs on the full training data: right of every K
PROMPT_METHODS = {"glm_cloze", "mlm_prompt", "seq2seq"}  # answer through a prompt, no new head


def few_shot_curve(runs, metric):
    """Test score against K, shots per class (LM-BFF's Figure 3), of one (task, dataset)'s scored runs: a line per
    system and prompt over the studies whose data differ in their number of shots only; at each K the point is
    the test scores of the replicates of the (lr, batch size) chosen on validation. Returns one row per (line,
    K), sorted (the `points` below; shots FULL_DATA for the full data); empty when no run is few-shot."""
    few = runs[runs["num_shots"].notna()]
    if few.empty:
        return pd.DataFrame()
    base = runs["data_settings"].map(lambda settings: _key({**settings, "num_shots": None}))
    runs = runs[base == base[few.index].mode().iloc[0]]  # the data of most few-shot runs, any K
    runs = runs.assign(shots=runs["num_shots"].fillna(FULL_DATA))
    line_keys = ["method", "peft", "model", "variant", "prompt_id"]
    points = []
    for keys, group in runs.groupby([*line_keys, "shots"], sort=True):
        best = best_row(summarize(group, CONFIG), metric)
        cell = group[(group[CONFIG] == best[CONFIG]).all(axis=1)]["test"]
        line = dict(zip(line_keys, keys))
        label = system_label(line) + ("" if line["prompt_id"] == NO_PROMPT else f", prompt {line['prompt_id']}")
        points.append({"line": label, **line, "shots": keys[-1], "learning_rate": best["learning_rate"],
                       "batch_size": best["batch_size"], "val_mean": best["val_mean"], "test_mean": cell.mean(),
                       "test_std": cell.std(), "test_min": cell.min(), "test_max": cell.max(), "n": len(cell)})
    return pd.DataFrame(points)
