"""Tables and figures for a report, from the results.json files of a sweep.

    python report.py runs/sweep                        # -> runs/sweep/report/
    python report.py runs/sweep --output_dir report    # report.md, tables.tex, *.png
    python report.py runs/sweep --glm_example_readme examples/trec --dataset trec

Every run of run_cls.py / run_gen.py / run_baseline.py writes one results.json
(training.results_record). This script groups them:

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
import logging
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from training import safe_name, write_json_atomic  # noqa: E402

from analysis import (  # noqa: E402
    DATASET_TITLES,
    METRIC_NAMES,
    NO_PROMPT,
    SYSTEM,
    TASK_NAMES,
    add_scores,
    best_runs,
    choose_metric,
    comparison_table,
    fmt_config,
    fmt_lr,
    fmt_mean_std,
    fmt_prompt,
    grid_table,
    higher_is_better,
    learning_curve,
    load_results,
    make_comparison_table,
    make_grid_table,
    make_prompt_table,
    metric_label,
    prompt_table,
    system_label,
    trivial_baselines,
)
from glm_examples import write_glm_example_readme

logger = logging.getLogger("report")



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
