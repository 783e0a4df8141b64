"""Reading a sweep's results.json files into tables: loading, metric scales, aggregation over
seeds, model selection on validation, and Markdown / LaTeX tables (used by report.py)."""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from training import safe_name  # noqa: E402

logger = logging.getLogger("report")

SYSTEM = ["task", "dataset", "method", "peft", "model"]
CONFIG = ["prompt_id", "learning_rate", "batch_size"]
NO_PROMPT = -1  # prompt_id of runs that use no prompt (e.g. a linear head on raw text)

DEFAULT_METRIC = {"cls": "accuracy", "gen": "bleu"}
PERCENT_METRICS = {"accuracy", "macro_f1", "f1", "precision", "recall"}
LOWER_IS_BETTER = {"loss", "eval_loss", "perplexity", "ter", "wer"}
METRIC_NAMES = {
    "accuracy": "accuracy", "macro_f1": "macro-F1", "bleu": "BLEU", "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "loss": "loss",
}  # fmt: skip
DATASET_TITLES = {"trec": "TREC", "e2e_nlg_cleaned": "E2E NLG (cleaned)"}
TASK_NAMES = {"cls": "classification", "gen": "generation"}



# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def load_results(results_dir):
    """One row per results.json under results_dir (searched recursively).

    Columns: the SYSTEM and CONFIG keys, seed, metric_for_best_model, validation / test (the
    metric dicts), epochs, baselines, train_time_s, trainable_share, trainable_params,
    total_params, script, args, path. prompt_id None becomes NO_PROMPT; peft None "none".
    Files that cannot be read are skipped with a warning.
    """
    rows = []
    for path in sorted(Path(results_dir).rglob("results.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            rows.append(_row(record, path))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("Skipping %s: %s", path, error)
    columns = SYSTEM + CONFIG + ["seed", "path"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def _row(record, path):
    """The DataFrame row of one results.json record."""
    return {
        "task": record["task"],
        "dataset": dataset_name(record["dataset"]),
        "method": record["method"],
        "peft": record.get("peft") or "none",
        "model": model_name(record.get("model_name_or_path")),
        "prompt_id": NO_PROMPT if record.get("prompt_id") is None else int(record["prompt_id"]),
        "prompt_name": record.get("prompt_name") or "",
        "learning_rate": float(record["learning_rate"]),
        "batch_size": int(record["per_device_train_batch_size"]),
        "total_batch_size": record.get("total_train_batch_size"),
        "seed": record.get("seed"),
        "metric_for_best_model": record.get("metric_for_best_model"),
        "validation": record.get("validation") or {},
        "test": record.get("test") or {},
        "epochs": record.get("epochs") or [],
        "baselines": record.get("baselines") or {},
        "train_time_s": record.get("train_time_s"),
        "trainable_share": record.get("trainable_share"),
        "trainable_params": record.get("trainable_params"),
        "total_params": record.get("total_params"),
        "script": record.get("script"),
        "args": record.get("args") or {},
        "path": str(path),
    }


def dataset_name(dataset):
    """A short dataset name: the name itself, or for local files {"train": ".../trec/train.csv"}
    the folder of the first file ("trec")."""
    if isinstance(dataset, dict):
        first = next(iter(dataset.values()), "local")
        return Path(first).parent.name or "local"
    return str(dataset).split("/")[-1]


def model_name(model_name_or_path):
    """The last path component of a model name or path ("BAAI/glm-roberta-large" -> "glm-roberta-large")."""
    return str(model_name_or_path or "?").rstrip("/").split("/")[-1]


def system_label(system):
    """A readable name for a system row: "glm_cloze + lora [glm-tiny]"."""
    peft = "" if system["peft"] == "none" else f" + {system['peft']}"
    return f"{system['method']}{peft} [{system['model']}]"


# ---------------------------------------------------------------------------------------
# Metrics: which one, which direction, how shown
# ---------------------------------------------------------------------------------------


def choose_metric(runs):
    """The metric of one (task, dataset): the most common metric_for_best_model found in the
    runs' validation dicts, else the task's default (accuracy / bleu), else the first key."""
    named = [m for m, v in zip(runs["metric_for_best_model"], runs["validation"]) if m and m in v]
    if named:
        return pd.Series(named).mode().iloc[0]
    default = DEFAULT_METRIC.get(runs["task"].iloc[0])
    keys = [key for v in runs["validation"] for key in v]
    return default if default in keys else (keys[0] if keys else default)


def higher_is_better(metric):
    return metric not in LOWER_IS_BETTER


def metric_scale(metric):
    """Factor from stored value to shown value (100 for metrics stored in [0, 1])."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def metric_label(metric):
    """Axis / column label with its unit: "accuracy (%)", "BLEU (0-100)"."""
    name = METRIC_NAMES.get(metric, metric)
    if metric in PERCENT_METRICS:
        return f"{name} (%)"
    if metric in {"bleu", "rouge1", "rouge2", "rougeL"}:
        return f"{name} (0-100)"
    return name


def add_scores(runs, metric):
    """Copy of runs with columns val and test: the metric (shown scale) read from the
    validation / test dicts (NaN where a run lacks it)."""
    scale = metric_scale(metric)
    runs = runs.copy()
    runs["val"] = [scale * v[metric] if metric in v and v[metric] is not None else np.nan for v in runs["validation"]]
    runs["test"] = [scale * t[metric] if metric in t and t[metric] is not None else np.nan for t in runs["test"]]
    runs["metric"] = metric
    return runs


# ---------------------------------------------------------------------------------------
# Aggregation and selection (pandas)
# ---------------------------------------------------------------------------------------


def summarize(runs, keys):
    """Mean and sample std over seeds of the validation and test scores, per group of keys.

    Returns a DataFrame with the keys and val_mean, val_std, test_mean, test_std, n_seeds,
    train_time_s, trainable_share (means); std is NaN for a single seed.
    """
    grouped = runs.groupby(keys, sort=True)
    summary = grouped.agg(
        val_mean=("val", "mean"), val_std=("val", "std"),
        test_mean=("test", "mean"), test_std=("test", "std"),
        n_seeds=("seed", "nunique"),
        train_time_s=("train_time_s", "mean"), trainable_share=("trainable_share", "mean"),
        trainable_params=("trainable_params", "mean"),
    )  # fmt: skip
    return summary.reset_index()


def best_row(summary, metric):
    """The row with the best mean VALIDATION score (ties: smaller std, then grid order).
    Test columns are never read here."""
    ranked = summary.sort_values(
        ["val_mean", "val_std"], ascending=[not higher_is_better(metric), True], na_position="last", kind="stable"
    )
    return ranked.iloc[0]


def grid_table(system_runs, metric):
    """Every config of one system (prompt, lr, batch size) with its validation mean ± std,
    and the flag `best` on the config chosen on validation."""
    summary = summarize(system_runs, CONFIG)
    best = best_row(summary, metric)
    summary["best"] = (summary[CONFIG] == best[CONFIG]).all(axis=1)
    return summary


def prompt_table(system_runs, metric):
    """Per prompt: its best (lr, batch size) chosen on validation, with validation and test
    mean ± std over seeds at that config."""
    summary = summarize(system_runs, CONFIG)
    rows = [best_row(group, metric) for _, group in summary.groupby("prompt_id", sort=True)]
    table = pd.DataFrame(rows).reset_index(drop=True)
    names = system_runs.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_name"]
    table["prompt_name"] = table["prompt_id"].map(names)
    return table


def comparison_table(runs, metric):
    """One row per system: its best config (chosen on validation over prompts, learning
    rates and batch sizes) with validation / test mean ± std, trainable share and time."""
    rows = []
    for system, system_runs in runs.groupby(SYSTEM, sort=False):
        best = best_row(summarize(system_runs, CONFIG), metric)
        row = dict(zip(SYSTEM, system))
        row.update(best.to_dict())
        rows.append(row)
    table = pd.DataFrame(rows)
    order = table.apply(_system_order, axis=1)
    return table.assign(_order=order).sort_values(["_order", "method", "peft", "model"]).drop(columns="_order")


def _system_order(row):
    """Table order: GLM full fine-tuning, GLM + PEFT, then baselines."""
    is_glm = str(row["method"]).startswith("glm")
    return (0 if row["peft"] == "none" else 1) if is_glm else 2


def trivial_baselines(runs, metric):
    """The scripts' reference scores (majority class / most frequent reference) found in the
    runs' "baselines" field: {name: (validation, test)} on the shown scale (NaN if absent).

    A baseline entry is either {"validation": {...}, "test": {...}} or a flat metric dict
    (then taken as the test score)."""
    scale = metric_scale(metric)
    found = {}
    for baselines in runs["baselines"]:
        for name, entry in (baselines or {}).items():
            if name in found or not isinstance(entry, dict):
                continue
            if "validation" in entry or "test" in entry:
                val, test = (entry.get(split) or {} for split in ("validation", "test"))
            else:
                val, test = {}, entry
            found[name] = tuple(scale * d[metric] if metric in d else np.nan for d in (val, test))
    return found


def best_runs(system_runs, metric):
    """The runs (one per seed) of a system's best config."""
    best = best_row(summarize(system_runs, CONFIG), metric)
    mask = (system_runs[CONFIG] == best[CONFIG]).all(axis=1)
    return system_runs[mask]


def learning_curve(runs, metric):
    """Validation metric per evaluation, mean and std over the given runs (seeds).

    x is the training epoch when every evaluation of a run has its own epoch, else the
    optimizer step; epochs are shown as epochs completed (epoch index + 1).
    Returns (DataFrame with columns x, mean, std, n; the x label)."""
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


# ---------------------------------------------------------------------------------------
# Tables: one structure, rendered as Markdown and as LaTeX (booktabs)
# ---------------------------------------------------------------------------------------


@dataclass
class Table:
    """A table to render twice: header, rows of strings, rows to set in bold."""

    caption: str
    label: str
    header: list
    rows: list
    bold: set = field(default_factory=set)
    align: str = ""

    def markdown(self):
        cells = [[f"**{c}**" if i in self.bold and c else c for c in row] for i, row in enumerate(self.rows)]
        align = self.align or "l" * len(self.header)
        rules = ["--:" if a == "r" else ":--" for a in align]
        lines = ["| " + " | ".join(self.header) + " |", "|" + "|".join(rules) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)

    def latex(self):
        align = self.align or "l" * len(self.header)
        body = []
        for i, row in enumerate(self.rows):
            cells = [latex_escape(c) for c in row]
            if i in self.bold:
                cells = [rf"\textbf{{{c}}}" if c else c for c in cells]
            body.append(" & ".join(cells) + r" \\")
        return "\n".join([
            r"\begin{table}[t]", r"\centering", r"\small",
            rf"\begin{{tabular}}{{{align}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in self.header) + r" \\", r"\midrule",
            *body, r"\bottomrule", r"\end{tabular}",
            rf"\caption{{{latex_escape(self.caption)}}}", rf"\label{{{self.label}}}", r"\end{table}",
        ])  # fmt: skip


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def latex_escape(text):
    """Text safe in LaTeX (ASCII apart from the text itself): "±" becomes $\\pm$, "–" --."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    for symbol, latex in (("±", r"$\pm$"), ("→", r"$\rightarrow$"), ("×", r"$\times$"), ("–", "--")):
        escaped = escaped.replace(symbol, latex)
    return escaped


def fmt_mean_std(mean, std, digits=2):
    """ "80.00 ± 2.00"; the mean alone for one seed; "–" when missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_lr(lr):
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def fmt_prompt(prompt_id, prompt_name=""):
    if prompt_id == NO_PROMPT:
        return "(none)"
    return f"{int(prompt_id)}: {prompt_name}" if prompt_name else str(int(prompt_id))


def fmt_config(row):
    """ "p 2, lr 1e-3, bs 16": a configuration in a few characters."""
    return f"p {fmt_prompt(row['prompt_id'])}, lr {fmt_lr(row['learning_rate'])}, bs {int(row['batch_size'])}"


def fmt_trainable(params, share):
    """Trainable parameters and their share of all: "1.2M (0.52%)"."""
    if share is None or (isinstance(share, float) and math.isnan(share)):
        return "–"
    if params is None or (isinstance(params, float) and math.isnan(params)):
        return f"{100 * share:.3g}%"
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")):
        if params >= factor or factor == 1:
            return f"{params / factor:.3g}{suffix} ({100 * share:.3g}%)"


def fmt_seconds(seconds):
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def make_grid_table(task, dataset, system, table, metric):
    label = metric_label(metric)
    rows = [
        [fmt_prompt(r.prompt_id), fmt_lr(r.learning_rate), str(int(r.batch_size)), str(int(r.n_seeds)),
         fmt_mean_std(r.val_mean, r.val_std), "best" if r.best else ""]
        for r in table.itertuples()
    ]  # fmt: skip
    return Table(
        caption=f"{DATASET_TITLES.get(dataset, dataset)} ({task}), {system}: grid search. Validation {label}, "
        "mean ± std over seeds; the best configuration (bold) is chosen on validation.",
        label=f"tab:grid-{safe_name(task + '-' + dataset + '-' + system)}",
        header=["prompt", "learning rate", "batch size", "seeds", f"validation {label}", ""],
        rows=rows, bold={i for i, r in enumerate(table.itertuples()) if r.best}, align="lrrrrl",
    )  # fmt: skip


def make_prompt_table(task, dataset, system, table, metric):
    label = metric_label(metric)
    rows = [
        [fmt_prompt(r.prompt_id, r.prompt_name), fmt_lr(r.learning_rate), str(int(r.batch_size)),
         str(int(r.n_seeds)), fmt_mean_std(r.val_mean, r.val_std), fmt_mean_std(r.test_mean, r.test_std)]
        for r in table.itertuples()
    ]  # fmt: skip
    return Table(
        caption=f"{DATASET_TITLES.get(dataset, dataset)} ({task}), {system}: prompts compared, each at its best "
        f"learning rate and batch size (chosen on validation). Scores: {label}, mean ± std over seeds.",
        label=f"tab:prompts-{safe_name(task + '-' + dataset + '-' + system)}",
        header=["prompt", "learning rate", "batch size", "seeds", f"validation {label}", f"test {label}"],
        rows=rows, align="lrrrrr",
    )  # fmt: skip


def make_comparison_table(task, dataset, table, trivial, metric):
    label = metric_label(metric)
    rows = []
    for r in table.itertuples():
        rows.append([
            str(r.method), str(r.model), str(r.peft), fmt_config(r._asdict()), str(int(r.n_seeds)),
            fmt_mean_std(r.val_mean, r.val_std), fmt_mean_std(r.test_mean, r.test_std),
            fmt_trainable(r.trainable_params, r.trainable_share), fmt_seconds(r.train_time_s),
        ])  # fmt: skip
    for name, (val, test) in trivial.items():
        rows.append([name.replace("_", " "), "–", "–", "no training", "–",
                     fmt_mean_std(val, None), fmt_mean_std(test, None), "0", "0"])  # fmt: skip
    return Table(
        caption=f"{DATASET_TITLES.get(dataset, dataset)} ({task}): methods compared at their best configuration "
        f"(chosen on validation over prompts, learning rates and batch sizes). Scores: {label}, mean ± std over "
        "seeds. Trainable params: count (share of all parameters). Train time: mean wall-clock seconds of training "
        "per run, on the machine that ran it. Reference rows: the scripts' trivial baselines, on test.",
        label=f"tab:compare-{safe_name(task + '-' + dataset)}",
        header=["method", "model", "PEFT", "best config", "seeds", f"validation {label}", f"test {label}",
                "trainable params", "train time (s)"],
        rows=rows, align="llllrrrrr",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
