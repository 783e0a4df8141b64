"""Tables and figures for a report, from the results.json files of a sweep.

    python report.py runs/sweep                        # -> runs/sweep/report/
    python report.py runs/sweep --output_dir report    # report.md, tables.tex, *.png
    python report.py runs/sweep --glm_example_readme examples/trec --dataset trec

Every run of run_cls.py / run_gen.py / run_baseline.py writes one results.json
(task_utils.results_record). This script groups them:

  system  = (task, dataset, method, peft, model)       e.g. cls / trec / glm_cloze / lora / glm-tiny
  config  = (prompt_id, learning_rate, batch size)      one grid point
  seeds   = the repetitions of a config                 mean ± sample std (ddof=1) over them

and writes, per (task, dataset):
  - a comparison of the systems at their best config (GLM cloze vs baselines, linear head vs
    cloze, LoRA / P-tuning v2 vs full fine-tuning: score, trainable share, train time);
  - per system, the grid-search table (validation mean ± std of every config) and an
    lr x batch-size heatmap (hyperparameter sensitivity);
  - per system with several prompts, a prompt comparison (table + bar chart);
  - learning curves (validation metric per evaluation) of the best config of each system.

Model selection: the best config of a system is the one with the highest mean VALIDATION
score over seeds (ties: smaller spread). Test scores are only ever reported for the config
chosen that way; they never take part in a choice. Within a run, the training script picks
the checkpoint (best_epoch) on validation too.

Metrics in [0, 1] (accuracy, macro_f1) are shown as percentages; BLEU and ROUGE are already
on a 0-100 scale.
"""

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from task_utils import safe_name, write_json_atomic  # noqa: E402

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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Tables (Markdown + LaTeX) and figures from results.json files.")
    parser.add_argument("results_dir", help="Folder searched recursively for results.json files.")
    parser.add_argument("--output_dir", default=None,
                        help="Where report.md, tables.tex and the PNGs go (default RESULTS_DIR/report).")
    parser.add_argument("--glm_example_readme", default=None, metavar="DIR",
                        help="Also write DIR/README.md for one dataset, in the format of the GLM repository's examples/.")
    parser.add_argument("--dataset", default=None,
                        help="Dataset of --glm_example_readme (needed when the sweep holds several).")
    parser.add_argument("--title", default="Prompt-based fine-tuning of GLM: sweep report", help="Title of report.md.")
    return parser.parse_args(argv)


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
# Figures (matplotlib, Agg)
# ---------------------------------------------------------------------------------------


def plot_heatmap(table, metric, title, path):
    """lr x batch-size heatmap of the mean validation score (one prompt), cells annotated
    "mean ± std", the best cell framed in red."""
    means = table.pivot(index="learning_rate", columns="batch_size", values="val_mean").sort_index()
    stds = table.pivot(index="learning_rate", columns="batch_size", values="val_std").reindex_like(means)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * means.shape[1] + 3.2), 1.0 * means.shape[0] + 2.4))
    cmap = "viridis" if higher_is_better(metric) else "viridis_r"
    image = ax.imshow(means.to_numpy(dtype=float), cmap=cmap, aspect="auto")
    colorbar = fig.colorbar(image, ax=ax)
    colorbar.set_label(f"validation {metric_label(metric)}\n(mean over seeds)")
    ax.set_xticks(range(means.shape[1]), [str(int(b)) for b in means.columns])
    ax.set_yticks(range(means.shape[0]), [fmt_lr(lr) for lr in means.index])
    ax.set_xlabel("per-device train batch size (examples)")
    ax.set_ylabel("peak learning rate (AdamW)")
    values = means.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), mean in np.ndenumerate(values):
        if not np.isfinite(mean):
            continue
        dark = (mean < middle) == higher_is_better(metric)
        ax.text(j, i, fmt_mean_std(mean, stds.iloc[i, j]).replace(" ± ", "\n± "), ha="center", va="center",
                fontsize=9, color="white" if dark else "black")  # fmt: skip
    best = table[table["best"]]
    if len(best):
        i = list(means.index).index(best["learning_rate"].iloc[0])
        j = list(means.columns).index(best["batch_size"].iloc[0])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_prompts(table, metric, title, path, references=None):
    """Grouped bars per prompt: validation and test at the prompt's best config, error bars
    = std over seeds; `references` {name: test score} are drawn as dashed lines."""
    x = np.arange(len(table))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(7.5, 1.3 * len(table) + 5), 4.2))
    labelled = []
    for offset, split, color in ((-width / 2, "val", "tab:blue"), (width / 2, "test", "tab:orange")):
        means = table[f"{split}_mean"].to_numpy(dtype=float)
        stds = np.nan_to_num(table[f"{split}_std"].to_numpy(dtype=float))
        name = "validation" if split == "val" else "test"
        bars = ax.bar(x + offset, means, width, yerr=stds, capsize=4, color=color, label=name)
        labelled += list(zip(bars, means, stds))
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        if np.isfinite(value):
            ax.axhline(value, color="gray", linestyle=style, label=f"{name.replace('_', ' ')} (test)")
    top = ax.get_ylim()[1]
    for bar, mean, std in labelled:  # each value at the foot of its bar (above its whisker when the bar is short)
        if np.isfinite(mean):
            inside = mean > 0.08 * top
            ax.annotate(f"{mean:.1f}", (bar.get_x() + bar.get_width() / 2, 0 if inside else mean + std), xytext=(0, 4),
                        textcoords="offset points", ha="center", fontsize=8, color="white" if inside else "black")
    ax.set_xticks(x, [fmt_prompt(p, _short(n)) for p, n in zip(table["prompt_id"], table["prompt_name"])],
                  rotation=20, ha="right", fontsize=8)  # fmt: skip
    ax.set_xlabel("prompt (id: name), each at its best learning rate and batch size on validation")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="over seeds:\nbar = mean, whisker = std",
              title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _short(name, width=24):
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_learning_curves(curves, metric, title, path):
    """One line per system (mean over seeds of its best config), band = ± std."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    xlabels = set()
    for label, (curve, xlabel) in curves.items():
        if curve.empty:
            continue
        xlabels.add(xlabel)
        std = np.nan_to_num(curve["std"].to_numpy(dtype=float))
        ax.plot(curve["x"], curve["mean"], marker="o", label=f"{label} (n={int(curve['n'].max())})")
        ax.fill_between(curve["x"], curve["mean"] - std, curve["mean"] + std, alpha=0.2)
    ax.set_xlabel(" / ".join(sorted(xlabels)) or "epochs completed")
    ticks = sorted({x for curve, _ in curves.values() for x in curve["x"]})
    if 0 < len(ticks) <= 12:  # a tick at each evaluation
        ax.set_xticks(ticks)
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"validation {metric_label(metric)}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="method [model], best config\n(n seeds; band = ± std)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------

SELECTION_NOTE = (
    "**Model selection never looks at test.** For every method, the configuration (prompt, learning "
    "rate, batch size) with the best mean *validation* score over seeds is selected, and only then is "
    "its *test* score (mean ± std over the same seeds) read. Within each run the checkpoint is also "
    "chosen on validation (best epoch). Test scores are shown only for selected configurations: each "
    "method's, and in the prompt comparison each prompt's own (its best learning rate and batch size)."
)


def report_sections(runs, output_dir):
    """Markdown sections, LaTeX tables and figures for every (task, dataset) in runs.

    Returns (markdown lines, list of Table, {(task, dataset): comparison DataFrame})."""
    lines, tables, comparisons = [], [], {}
    for (task, dataset), group in runs.groupby(["task", "dataset"], sort=True):
        metric = choose_metric(group)
        group = add_scores(group, metric)
        title = DATASET_TITLES.get(dataset, dataset)
        lines += [f"## {title}: {TASK_NAMES.get(task, task)}, metric {metric_label(metric)}", ""]

        comparison = comparison_table(group, metric)
        comparisons[(task, dataset)] = comparison
        trivial = trivial_baselines(group, metric)
        table = make_comparison_table(task, dataset, comparison, trivial, metric)
        tables.append(table)
        lines += ["### Methods compared", "", table.caption, "", table.markdown(), ""]

        curves = {}
        for _, row in comparison.iterrows():  # the table's order: GLM, GLM + PEFT, baselines
            system = {key: row[key] for key in SYSTEM}
            system_runs = group[(group[SYSTEM] == pd.Series(system)).all(axis=1)]
            lines += system_section(task, dataset, system, system_runs, metric, output_dir, tables, trivial)
            best = best_runs(system_runs, metric)
            curves[f"{system_label(system)}\n{fmt_config(best.iloc[0])}"] = learning_curve(best, metric)
        figure = f"curves_{safe_name(task + '_' + dataset)}.png"
        plot_learning_curves(curves, metric, f"{title} ({task}): learning curves of each method's best configuration",
                             output_dir / figure)  # fmt: skip
        lines += ["### Learning curves", "", f"![learning curves]({figure})", ""]
    return lines, tables, comparisons


def system_section(task, dataset, system, system_runs, metric, output_dir, tables, trivial=None):
    """Grid table + heatmap, and the prompt comparison when there are several prompts
    (`trivial`: {name: (validation, test)} reference scores drawn on its bar chart)."""
    label = system_label(system)
    stem = safe_name(f"{task}_{dataset}_{label}")
    title = DATASET_TITLES.get(dataset, dataset)
    grid = grid_table(system_runs, metric)
    best = grid[grid["best"]].iloc[0]
    table = make_grid_table(task, dataset, label, grid, metric)
    tables.append(table)
    n_seeds = int(system_runs["seed"].nunique())
    lines = [f"### Grid search: {label}", "", table.caption, "", table.markdown(), ""]
    lines += [
        f"Best on validation: prompt {fmt_prompt(best['prompt_id'])}, learning rate {fmt_lr(best['learning_rate'])}, "
        f"batch size {int(best['batch_size'])}: validation {fmt_mean_std(best['val_mean'], best['val_std'])}, "
        f"**test {fmt_mean_std(best['test_mean'], best['test_std'])}** "
        f"({metric_label(metric)}, {int(best['n_seeds'])} seed(s)).",
        "",
    ]  # fmt: skip
    at_best_prompt = grid[grid["prompt_id"] == best["prompt_id"]]
    if best["prompt_id"] == NO_PROMPT:
        prompt = "no prompt"
    elif grid["prompt_id"].nunique() > 1:
        prompt = f"prompt {fmt_prompt(best['prompt_id'])} (the best on validation)"
    else:
        prompt = f"prompt {fmt_prompt(best['prompt_id'])}"
    figure = f"heatmap_{stem}.png"
    plot_heatmap(at_best_prompt, metric,
                 f"{title} ({task}), {label}\n"
                 f"validation {METRIC_NAMES.get(metric, metric)}, {prompt}\n"
                 f"cells: mean ± std over {n_seeds} seed(s); red frame: selected configuration",
                 output_dir / figure)  # fmt: skip
    lines += [f"![lr x batch size heatmap]({figure})", ""]

    if system_runs["prompt_id"].nunique() > 1:
        prompts = prompt_table(system_runs, metric)
        table = make_prompt_table(task, dataset, label, prompts, metric)
        tables.append(table)
        figure = f"prompts_{stem}.png"
        references = {name: test for name, (_, test) in (trivial or {}).items()}
        plot_prompts(prompts, metric, f"{title} ({task}), {label}: prompts at their best config", output_dir / figure,
                     references)  # fmt: skip
        lines += [f"### Prompts compared: {label}", "", table.caption, "", table.markdown(), "",
                  f"![prompt comparison]({figure})", ""]  # fmt: skip
    return lines


def unfinished_runs(results_dir):
    """Run folders of sweeps.sh (they hold a sweep.log) without a results.json: failed,
    killed, or still running."""
    logs = Path(results_dir).rglob("sweep.log")
    return sorted(log.parent for log in logs if not (log.parent / "results.json").exists())


def split_untrained(runs):
    """(trained runs, runs without any training step): zero-shot runs and --peft_weights
    evaluations have no validation history, and their learning rate and batch size mean nothing,
    so they must not compete in the grid search."""
    trained = runs["epochs"].map(len) > 0
    return runs[trained], runs[~trained]


def write_report(runs, results_dir, output_dir, title, untrained=None):
    """Write report.md, tables.tex and the figures; return the comparison tables. `untrained`
    runs (see `split_untrained`) are listed with their test score, outside the tables."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "",
             f"{len(runs)} runs (results.json files) under `{results_dir}`; "
             f"{runs['seed'].nunique()} seed(s); std is the sample standard deviation over seeds.", "",
             SELECTION_NOTE, ""]  # fmt: skip
    unfinished = unfinished_runs(results_dir)
    if unfinished:
        lines += [f"{len(unfinished)} run folder(s) have no results.json (failed, killed or still running; see "
                  "their sweep.log and failed_runs.txt) and are missing from the tables:", ""]
        lines += [f"- `{path.relative_to(results_dir)}`" for path in unfinished] + [""]
    if untrained is not None and len(untrained):
        lines += [f"{len(untrained)} run(s) did not train (zero-shot, or `--peft_weights` evaluations of saved "
                  "weights); they are left out of the grid search and the tables:", ""]
        for run in untrained.itertuples():
            metric = run.metric_for_best_model
            score = run.test.get(metric, run.validation.get(metric))
            split = "test" if metric in run.test else "validation"
            lines.append(f"- `{Path(run.path).parent.relative_to(results_dir)}`: {split} {metric} "
                         f"{'n/a' if score is None else f'{score:.4f}'}")
        lines.append("")
    sections, tables, comparisons = report_sections(runs, output_dir)
    lines += sections
    (output_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    preamble = ["% Tables of report.md; needs \\usepackage{booktabs}.", f"% {SELECTION_NOTE.replace('**', '')}", ""]
    (output_dir / "tables.tex").write_text("\n".join(preamble + [t.latex() + "\n" for t in tables]), encoding="utf-8")
    summary = {f"{task}/{dataset}": table.to_dict(orient="records") for (task, dataset), table in comparisons.items()}
    write_json_atomic(output_dir / "summary.json", _json_safe(summary))
    return comparisons


def _json_safe(value):
    """NaN -> None and numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---------------------------------------------------------------------------------------
# README for the GLM repository's examples/ folder
# ---------------------------------------------------------------------------------------

DATASET_DESCRIPTIONS = {
    "trec": (
        "TREC question classification (Li and Roth, 2002): about 5.5k training and 500 test English "
        "questions, each labelled with the type of its answer. We use the 6 coarse classes "
        "(description, entity, abbreviation, human, numeric value, location). Validation is a split "
        "of the training set. Metric: accuracy."
    ),
    "e2e_nlg_cleaned": (
        "E2E NLG, cleaned version (Novikova et al., 2017; Dušek et al., 2019): turn a restaurant's "
        "meaning representation (attribute[value] pairs such as `name[Aromi], food[Chinese]`) into a "
        "fluent English description. Several human references per input. Metric: corpus BLEU "
        "(sacrebleu) against all references, with ROUGE."
    ),
}
TASK_METHODS = {
    "cls": (
        "We fine-tune GLM (`{model}`) with prompts from promptsource: each input becomes a cloze "
        "question with one `[MASK]`, and every answer choice (verbalizer) is scored by GLM's blank "
        "infilling, with no new classification head."
    ),
    "gen": (
        "We fine-tune GLM (`{model}`) with prompts from promptsource: the prompt ends with a "
        "`[MASK]` that GLM fills autoregressively (blank infilling), trained with teacher forcing and "
        "decoded with beam search."
    ),
}
REFERENCES = {
    "glm": """@inproceedings{du-etal-2022-glm,
  title = {{GLM}: General Language Model Pretraining with Autoregressive Blank Infilling},
  author = {Du, Zhengxiao and Qian, Yujie and Liu, Xiao and Ding, Ming and Qiu, Jiezhong and Yang, Zhilin and Tang, Jie},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)},
  pages = {320--335},
  year = {2022}
}""",
    "trec": """@inproceedings{li-roth-2002-learning,
  title = {Learning Question Classifiers},
  author = {Li, Xin and Roth, Dan},
  booktitle = {{COLING} 2002: The 19th International Conference on Computational Linguistics},
  year = {2002}
}""",
    "e2e_nlg_cleaned": """@inproceedings{novikova-etal-2017-e2e,
  title = {The {E2E} Dataset: New Challenges For End-to-End Generation},
  author = {Novikova, Jekaterina and Du{\\v{s}}ek, Ond{\\v{r}}ej and Rieser, Verena},
  booktitle = {Proceedings of the 18th Annual {SIG}dial Meeting on Discourse and Dialogue},
  pages = {201--206},
  year = {2017}
}

@inproceedings{dusek-etal-2019-semantic,
  title = {Semantic Noise Matters for Neural Natural Language Generation},
  author = {Du{\\v{s}}ek, Ond{\\v{r}}ej and Howcroft, David M. and Rieser, Verena},
  booktitle = {Proceedings of the 12th International Conference on Natural Language Generation},
  pages = {421--426},
  year = {2019}
}""",
    "promptsource": """@inproceedings{bach-etal-2022-promptsource,
  title = {{P}rompt{S}ource: An Integrated Development Environment and Repository for Natural Language Prompts},
  author = {Bach, Stephen H. and Sanh, Victor and Yong, Zheng-Xin and others},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics: System Demonstrations},
  year = {2022}
}""",
    "ptuning_v2": """@inproceedings{liu-etal-2022-p,
  title = {{P}-Tuning: Prompt Tuning Can Be Comparable to Fine-tuning Across Scales and Tasks},
  author = {Liu, Xiao and Ji, Kaixuan and Fu, Yicheng and Tam, Weng and Du, Zhengxiao and Yang, Zhilin and Tang, Jie},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics (Volume 2: Short Papers)},
  pages = {61--68},
  year = {2022}
}""",
    "lora": """@inproceedings{hu2022lora,
  title = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations},
  year = {2022}
}""",
    "roberta": """@article{liu2019roberta,
  title = {{RoBERTa}: A Robustly Optimized {BERT} Pretraining Approach},
  author = {Liu, Yinhan and Ott, Myle and Goyal, Naman and Du, Jingfei and Joshi, Mandar and Chen, Danqi and Levy, Omer and Lewis, Mike and Zettlemoyer, Luke and Stoyanov, Veselin},
  journal = {arXiv preprint arXiv:1907.11692},
  year = {2019}
}""",
    "t5": """@article{raffel2020exploring,
  title = {Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer},
  author = {Raffel, Colin and Shazeer, Noam and Roberts, Adam and Lee, Katherine and Narang, Sharan and Matena, Michael and Zhou, Yanqi and Li, Wei and Liu, Peter J.},
  journal = {Journal of Machine Learning Research},
  volume = {21},
  number = {140},
  pages = {1--67},
  year = {2020}
}""",
    "bart": """@inproceedings{lewis-etal-2020-bart,
  title = {{BART}: Denoising Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and Comprehension},
  author = {Lewis, Mike and Liu, Yinhan and Goyal, Naman and Ghazvininejad, Marjan and Mohamed, Abdelrahman and Levy, Omer and Stoyanov, Veselin and Zettlemoyer, Luke},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics},
  pages = {7871--7880},
  year = {2020}
}""",
}

# Run arguments worth repeating in a command line (the others keep the scripts' defaults).
SETTING_ARGS = ("task", "method", "model_name_or_path", "tokenizer_name", "peft", "pre_seq_len", "lora_r")
DATA_ARGS = ("dataset_name", "train_file", "validation_file", "test_file")
GRID_ARGS = ("prompt_id", "learning_rate", "per_device_train_batch_size", "seed")
BUDGET_ARGS = (
    "num_train_epochs", "max_train_steps", "eval_steps", "max_train_samples", "max_eval_samples",
    "max_test_samples", "max_target_length", "num_beams",
)  # fmt: skip


def shell_value(value):
    """A value as written on a command line: 1e-4 rather than 0.0001."""
    if isinstance(value, float):
        short = fmt_lr(value)
        return short if float(short) == value else repr(value)
    return str(value)


def run_command(row):
    """A command line that repeats one run: its script and its main arguments."""
    args = dict(row["args"])
    if args.get("peft") in (None, "none"):
        args = {k: v for k, v in args.items() if k not in ("peft", "pre_seq_len", "lora_r")}
    names = SETTING_ARGS + DATA_ARGS + GRID_ARGS + BUDGET_ARGS
    parts = [f"python {row['script'] or 'run_cls.py'}"]
    parts += [f"--{k} {shell_value(args[k])}" for k in names if args.get(k) is not None]
    parts.append("--output_dir outputs/best")
    return " \\\n    ".join(parts)


def method_entry(row):
    """The sweeps.sh method entry of a run: glm_cloze, glm_gen+lora, baseline:roberta-large:linear_head."""
    if str(row["method"]).startswith("glm"):
        entry = row["method"]
    else:
        entry = f"baseline:{row['args'].get('model_name_or_path', row['model'])}:{row['method']}"
    return entry if row["peft"] == "none" else f"{entry}+{row['peft']}"


def _axis_values(column):
    values = sorted(column.dropna().unique())
    return " ".join("none" if v == NO_PROMPT and column.name == "prompt_id" else shell_value(v) for v in values)


def _constant_flags(runs, names):
    """ "--name value" for each argument that has one value in every run."""
    flags = []
    for name in names:
        values = {json.dumps(args.get(name)) for args in runs["args"]}
        value = runs["args"].iloc[0].get(name)
        if len(values) == 1 and value is not None:
            flags.append(f"--{name} {shell_value(value)}")
    return " ".join(flags)


def sweep_command(runs, task, dataset):
    """The sweeps.sh command (environment variables + flags) that reruns the grid of these
    runs: the GLM full fine-tuning grid as the global axes, every other method entry with
    @lr= / @bs= / @prompt= / @seed= where its axis differs, and the data and budget flags
    that all runs share."""
    glm = runs[runs["method"].str.startswith("glm") & (runs["peft"] == "none")]
    main = glm if len(glm) else runs
    axes = {"lr": ("LEARNING_RATES", "learning_rate"), "bs": ("BATCH_SIZES", "batch_size"),
            "prompt": ("PROMPT_IDS", "prompt_id"), "seed": ("SEEDS", "seed")}  # fmt: skip
    env = {variable: _axis_values(main[column]) for variable, column in axes.values()}
    entries = []
    for _, system_runs in sorted(runs.groupby(SYSTEM, sort=True), key=lambda item: _system_order(item[1].iloc[0])):
        entry = method_entry(system_runs.iloc[0])
        for option, (variable, column) in axes.items():
            values = _axis_values(system_runs[column])
            if values != env[variable]:
                entry += f"@{option}={values.replace(' ', ',')}"
        entries.append(entry)
    prefix = task.upper()
    first = main["args"].iloc[0]
    env["MODEL"] = first.get("model_name_or_path")
    env["TOKENIZER"] = first.get("tokenizer_name")
    env[f"{prefix}_DATASET"] = dataset
    env[f"{prefix}_METHODS"] = " ".join(entries)
    env[f"{prefix}_DATA_ARGS"] = _constant_flags(runs, DATA_ARGS[1:])
    env["COMMON_ARGS"] = _constant_flags(runs, BUDGET_ARGS)
    for variable, peft, names in (("LORA_ARGS", "lora", ("lora_r",)), ("PTUNING_ARGS", "ptuning_v2", ("pre_seq_len",))):
        if (runs["peft"] == peft).any():
            env[variable] = _constant_flags(runs[runs["peft"] == peft], names)
    baselines = runs[~runs["method"].str.startswith("glm")]
    if len(baselines):
        env["BASELINE_ARGS"] = _constant_flags(baselines, ("tokenizer_name",))
    assignments = [f'{name}="{value}"' for name, value in env.items() if value]
    return " \\\n".join(assignments + [f"./sweeps.sh --task {task} --out runs/{dataset}"])


def references_for(runs, dataset):
    """Keys of REFERENCES cited by the runs of one dataset."""
    keys = ["glm", dataset, "promptsource"]
    text = " ".join(runs["peft"].astype(str)) + " " + " ".join(runs["model"].astype(str)).lower()
    keys += [k for k in ("lora", "ptuning_v2") if k in text]
    keys += [k for k in ("roberta", "t5", "bart") if k in text]
    return [k for k in dict.fromkeys(keys) if k in REFERENCES]


def write_glm_example_readme(runs, comparisons, directory, dataset=None):
    """Write directory/README.md for one dataset in the layout the GLM repository's examples/
    folder asks of contributions: title, Authors, Task Description, Running Commands,
    Results (with comparison methods), Reference."""
    datasets_ = sorted(runs["dataset"].unique())
    if dataset is None:
        if len(datasets_) != 1:
            raise SystemExit(f"--glm_example_readme: the sweep holds datasets {datasets_}; pick one with --dataset.")
        dataset = datasets_[0]
    if dataset not in datasets_:
        raise SystemExit(f"--dataset {dataset!r} has no runs; the sweep holds {datasets_}.")
    runs = runs[runs["dataset"] == dataset]
    task = runs["task"].iloc[0]
    metric = choose_metric(runs)
    scored = add_scores(runs, metric)
    glm = scored[scored["method"].str.startswith("glm") & (scored["peft"] == "none")]
    best = best_runs(glm if len(glm) else scored, metric).iloc[0]
    comparison = comparisons[(task, dataset)]
    table = make_comparison_table(task, dataset, comparison, trivial_baselines(scored, metric), metric)
    lines = [
        f"# {DATASET_TITLES.get(dataset, dataset)}", "",
        "## Authors", "",
        "**Your Name** (your.email@example.com), homepage: https://example.com  <!-- fill in -->", "",
        "## Task Description", "",
        DATASET_DESCRIPTIONS.get(dataset, f"The `{dataset}` dataset ({TASK_NAMES.get(task, task)})."), "",
        TASK_METHODS.get(task, "").format(model=best["args"].get("model_name_or_path") or best["model"]), "",
        "## Running Commands", "",
        "Install (Python 3.11):", "",
        "```bash", "pip install -r requirements.txt",
        "pip install --no-deps --ignore-requires-python promptsource==0.2.3", "```", "",
        "The grid search behind the results below (each run writes its own results.json), then the tables:", "",
        "```bash", sweep_command(scored, task, dataset),
        f"python report.py runs/{dataset}", "```", "",
        "One run at the selected configuration (one seed):", "",
        "```bash", run_command(best), "```", "",
        "## Results", "",
        f"Test {metric_label(metric)} of each method at its configuration chosen on the "
        "validation set (the test set is never used for selection); mean ± std over seeds.", "",
        table.markdown(), "",
        "## Reference", "",
        "```bibtex", "\n\n".join(REFERENCES[k] for k in references_for(runs, dataset)), "```", "",
    ]  # fmt: skip
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return directory / "README.md"


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results_dir = Path(args.results_dir)
    output_dir = Path(args.output_dir) if args.output_dir else results_dir / "report"
    runs = load_results(results_dir)
    runs, untrained = split_untrained(runs)
    if runs.empty:
        raise SystemExit(f"No results.json of a trained run under {results_dir} ({len(untrained)} without training).")
    comparisons = write_report(runs, results_dir, output_dir, args.title, untrained)
    logger.info("Wrote %s, %s and %d figures.", output_dir / "report.md", output_dir / "tables.tex",
                len(list(output_dir.glob("*.png"))))  # fmt: skip
    if args.glm_example_readme:
        path = write_glm_example_readme(runs, comparisons, args.glm_example_readme, args.dataset)
        logger.info("Wrote %s.", path)


if __name__ == "__main__":
    main()
