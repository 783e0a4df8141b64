"""The report's figures (used by report.py; matplotlib, files only): lr x batch-size heatmaps, prompt bars, confusion
matrices, learning curves, few-shot curves; each readable at a paper's column width."""

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from reporting.analysis import FULL_DATA, higher_is_better, metric_label
from reporting.tables import fmt_lr, fmt_mean_std, fmt_prompt, fmt_replicates, fmt_shots

matplotlib.use("Agg")  # files only: no window, also where there is no display


def plot_heatmap(table, metric, title, path):
    """lr x batch-size heatmap of the mean validation score (one prompt's `grid_table` rows), cells annotated
    "mean ± std", the best cell framed in red."""
    means = table.pivot(index="learning_rate", columns="batch_size", values="val_mean").sort_index()
    stds = table.pivot(index="learning_rate", columns="batch_size", values="val_std").reindex_like(means)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * means.shape[1] + 3.2), 1.0 * means.shape[0] + 2.4), layout="tight")
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
    _save(fig, path)


def plot_prompts(table, metric, title, path, references=None):
    """Bars per prompt: zero-shot test (analysis.add_zero_shot), validation and test at the prompt's best config,
    whiskers the std over seeds; `references` {name: test score} as dashed lines."""
    x = np.arange(len(table))
    bars_of = [("zs_test", "zero-shot test", "tab:green")] if table["zs_n_seeds"].any() else []
    bars_of += [("val", "validation", "tab:blue"), ("test", "test", "tab:orange")]
    width = 0.8 / len(bars_of)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.5 * len(bars_of) * len(table) + 5), 4.2), layout="tight")
    labelled = []
    for i, (split, name, color) in enumerate(bars_of):
        means = table[f"{split}_mean"].to_numpy(dtype=float)
        stds = table[f"{split}_std"].to_numpy(dtype=float)  # NaN for one seed: no whisker
        bars = ax.bar(x + (i - (len(bars_of) - 1) / 2) * width, means, width, yerr=stds, capsize=4, color=color,
                      label=name)  # fmt: skip
        labelled += list(zip(bars, means, np.nan_to_num(stds)))
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
    _save(fig, path)


def plot_confusion(matrix, classes, title, path):
    """Confusion matrix (rows gold) as the percentage of each gold class, values written up to 12 classes."""
    totals = matrix.sum(1, keepdims=True)
    shares = np.divide(100 * matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = min(9.0, max(3.6, 2.6 + 0.35 * len(classes)))  # inches: 5.3 x 5.1 for 6 classes, a paper's column
    fig, ax = plt.subplots(figsize=(size + 0.8, size + 0.4), layout="constrained")
    display = ConfusionMatrixDisplay(shares, display_labels=[_short(str(c), 14) for c in classes])
    display.plot(ax=ax, cmap="Blues", values_format=".0f", include_values=len(classes) <= 12, colorbar=False,
                 xticks_rotation=45, text_kw={"fontsize": 9}, im_kw={"vmin": 0, "vmax": 100})  # fmt: skip
    colorbar = fig.colorbar(display.im_, ax=ax)
    colorbar.set_label("% of the gold class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("gold class")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def _short(name, width=24):
    return name if len(name) <= width else name[: width - 1] + "…"


def _save(fig, path, dpi=150):
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_learning_curves(curves, metric, title, path):
    """One line per system (mean over seeds of its best config), band = ± std."""
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="tight")
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
    _save(fig, path)


def plot_few_shot(curve, metric, title, path, references=None):
    """Test score against K (analysis.few_shot_curve), log2 x axis, one line per system and prompt: the mean over
    replicates, a band (whisker at "full") their min-max; "full" data two doublings right of the largest K,
    joined by a dotted segment; `references` {name: test score} as gray dashed lines."""
    ks = sorted(k for k in curve["shots"].unique() if k != FULL_DATA)
    full_x = (ks[-1] if ks else 1) * 4
    fig, ax = plt.subplots(figsize=(5.0, 4.6), layout="constrained")
    for (label, line), marker in zip(curve.groupby("line", sort=False), "osD^vP*X"):
        few, full = line[line["shots"] != FULL_DATA], line[line["shots"] == FULL_DATA]
        drawn = ax.plot(few["shots"], few["test_mean"], marker=marker,
                        label=f"{_short(label, 44)} (n={fmt_replicates(line)})")
        color = drawn[0].get_color()
        ax.fill_between(few["shots"], few["test_min"], few["test_max"], color=color, alpha=0.15, linewidth=0)
        if len(full):
            mean, low, high = full[["test_mean", "test_min", "test_max"]].iloc[0]
            ax.errorbar([full_x], [mean], yerr=[[mean - low], [high - mean]], marker=marker, color=color, capsize=3,
                        linestyle="none")  # fmt: skip
            if len(few):
                ax.plot([few["shots"].iloc[-1], full_x], [few["test_mean"].iloc[-1], mean], color=color, linestyle=":")
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="gray", linestyle=style, label=f"{name.replace('_', ' ')} (test, full data)")
    ticks = ks + ([full_x] if (curve["shots"] == FULL_DATA).any() else [])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [fmt_shots(FULL_DATA if t == full_x else t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("training examples per class (K)")
    ax.set_ylabel(f"test {metric_label(metric)}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
              title="system [model], prompt (n replicates per point)\nline = mean, band = min–max over replicates",
              title_fontsize=7.5)  # fmt: skip
    _save(fig, path, dpi=200)
