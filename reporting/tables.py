"""The report's tables (used by report.py): cells formatted as text, then rendered by pandas as Markdown
(`DataFrame.to_markdown`, through tabulate) and as booktabs LaTeX (`Styler.to_latex`)."""

import math
import os
from typing import NamedTuple

import pandas as pd

from reporting.analysis import DATASET_TITLES, FULL_DATA, NO_PROMPT, metric_label
from reporting.significance import ALPHA
from training import safe_name


class Table(NamedTuple):
    """A table of text cells to render twice: `frame` (one string per cell), the rows (positions)
    set in bold, and the column alignment ("l"/"r" per column)."""

    caption: str
    label: str
    frame: pd.DataFrame
    bold: frozenset = frozenset()
    align: str = ""

    def markdown(self):
        frame = self.frame.copy()
        for row in self.bold:
            frame.iloc[row] = [f"**{cell}**" if cell else cell for cell in frame.iloc[row]]
        align = [{"l": "left", "r": "right"}[a] for a in self.align or "l" * frame.shape[1]]
        return frame.to_markdown(index=False, colalign=align, disable_numparse=True)

    def latex(self):
        bold = ["textbf:--rwrap;" if i in self.bold else "" for i in range(len(self.frame))]
        styler = (self.frame.style.hide(axis="index").format(latex_escape).format_index(latex_escape, axis=1)
                  .apply(lambda column: [b if cell else "" for b, cell in zip(bold, column)], axis=0))  # fmt: skip
        return styler.to_latex(column_format=self.align or "l" * self.frame.shape[1], hrules=True,
                               caption=latex_escape(self.caption), label=self.label, position="t",
                               position_float="centering")  # fmt: skip


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\rightarrow$", "×": r"$\times$", "–": "--"}


def latex_escape(text):
    """Text safe in LaTeX, ASCII apart from the text itself: "a_b 50%" -> "a\\_b 50\\%", "±" -> $\\pm$."""
    return "".join(_LATEX_SPECIALS.get(ch, _LATEX_SYMBOLS.get(ch, ch)) for ch in str(text))


# --- Cells ---


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_mean_std(mean, std, digits=2):
    """ "80.00 ± 2.00"; the mean alone when std is NaN (one seed); "–" when missing."""
    if _missing(mean):
        return "–"
    if _missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_test(row, digits=2):
    """The test cell of a summary row: mean ± std, or "hidden" when the test labels were hidden."""
    return "hidden" if row.test_hidden else fmt_mean_std(row.test_mean, row.test_std, digits)


def fmt_zero_shot(row, digits=2):
    """The zero-shot test cell of a row (analysis.add_zero_shot); "–" where no zero-shot run matches."""
    if not row.zs_n_seeds:
        return "–"
    return "hidden" if row.zs_test_hidden else fmt_mean_std(row.zs_test_mean, row.zs_test_std, digits)


def text_cell(text, width=100):
    """Free text as one Markdown cell: white space collapsed, "|" escaped, cut to `width` characters with "…"."""
    text = " ".join(str(text).split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|")


def shared_words(texts):
    """(words that open, words that close) every one of `texts` (a prompt's fixed wording); (0, 0) for fewer
    than two texts or when a text would be left without a word of its own."""
    words = [str(text).split() for text in texts]
    if len(words) < 2:
        return 0, 0
    start = len(os.path.commonprefix(words))
    end = len(os.path.commonprefix([w[start:][::-1] for w in words]))
    return (0, 0) if any(len(w) - start - end < 1 for w in words) else (start, end)


def strip_words(text, shared):
    """`text` without the `shared` (opening, closing) word counts of `shared_words`, each cut marked
    "…": ("Q: a b ? Answer:", (1, 2)) -> "… a b …"."""
    start, end = shared
    words = str(text).split()
    return " ".join(["…"] * (start > 0) + words[start:len(words) - end] + ["…"] * (end > 0))


def fmt_ci(ci, digits=1):
    """ "[61.2, 68.8]"; "–" for none."""
    return "–" if ci is None or _missing(ci) else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_p_mark(p):
    """ "0.021*" (* below ALPHA), "<0.001*"; "–" for none."""
    if _missing(p):
        return "–"
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text + ("*" if p < ALPHA else "")


def fmt_lr(lr):
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def fmt_prompt(prompt_id, prompt_name=""):
    if prompt_id == NO_PROMPT:
        return "(none)"
    return f"{int(prompt_id)}: {prompt_name}" if prompt_name else str(int(prompt_id))


def fmt_config(row):
    """ "p 2, lr 1e-3, bs 16": a configuration in a few characters."""
    return f"p {fmt_prompt(row['prompt_id'])}, lr {fmt_lr(row['learning_rate'])}, bs {int(row['batch_size'])}"


def fmt_seeds(n):
    """ "1 seed", "3 seeds"."""
    return f"{int(n)} seed{'s' if n != 1 else ''}"


def fmt_shots(shots):
    """"8", or "full" for the full training data."""
    return "full" if shots == FULL_DATA else str(int(shots))


def fmt_k(shots):
    """"K = 8", or "full" for the full training data."""
    return "full" if shots == FULL_DATA else f"K = {int(shots)}"


def fmt_replicates(points):
    """The replicates of one line's points (`few_shot_curve` rows): "2", "2/3", or "2; full 1"."""
    few, full = points[points["shots"] != FULL_DATA], points[points["shots"] == FULL_DATA]
    text = "/".join(str(n) for n in sorted(set(few["n"].astype(int))))
    full_n = "/".join(str(n) for n in sorted(set(full["n"].astype(int))))
    if full_n in ("", text):
        return text
    return f"{text}; full {full_n}" if text else full_n


def fmt_trainable(params, share):
    """Trainable parameters and their share of all: "1.2M (0.52%)"."""
    if _missing(share):
        return "–"
    if _missing(params):
        return f"{100 * share:.3g}%"
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")):
        if params >= factor or factor == 1:
            return f"{params / factor:.3g}{suffix} ({100 * share:.3g}%)"


def fmt_seconds(seconds):
    if _missing(seconds):
        return "–"
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def study_title(dataset, study=""):
    """ "TREC", or for runs on other data "TREC (max_train_samples 72)"."""
    title = DATASET_TITLES.get(dataset, dataset)
    return f"{title} ({study})" if study else title


# --- The tables ---


def _table(kind, names, caption, rows, header, align, bold=()):
    """A Table of `rows` under `header`, labelled for LaTeX "tab:grid-cls-trec-glm_cloze_glm-tiny"."""
    label = f"tab:{kind}-" + "-".join(safe_name(name) for name in names if name)
    return Table(caption, label, pd.DataFrame(rows, columns=header), frozenset(bold), align)


def _about(task, dataset, study, system):
    """The opening of a system's caption: "TREC (cls), glm_cloze [glm-tiny]"."""
    return f"{study_title(dataset, study)} ({task}), {system}"


def make_grid_table(task, dataset, study, system, table, metric):
    """`table`: analysis.grid_table rows; the best configuration in bold."""
    label = metric_label(metric)
    rows = [[fmt_prompt(r.prompt_id), fmt_lr(r.learning_rate), str(int(r.batch_size)), str(int(r.n_seeds)),
             fmt_mean_std(r.val_mean, r.val_std), "best" if r.best else ""] for r in table.itertuples()]
    header = ["prompt", "learning rate", "batch size", "seeds", f"validation {label}", ""]
    caption = (f"{_about(task, dataset, study, system)}: grid search. Validation {label}, mean ± std over seeds (the "
               "mean alone for one seed); the best configuration (bold) is chosen on validation.")
    bold = (i for i, best in enumerate(table["best"]) if best)
    return _table("grid", (task, dataset, study, system), caption, rows, header, "lrrrrl", bold)


def make_prompt_table(task, dataset, study, system, table, metric):
    """`table`: prompt_table rows, with test_ci (or None) and the analysis.add_zero_shot columns."""
    label = metric_label(metric)
    rows = [[fmt_prompt(r.prompt_id, r.prompt_name), fmt_lr(r.learning_rate), str(int(r.batch_size)),
             str(int(r.n_seeds)), fmt_mean_std(r.val_mean, r.val_std), fmt_zero_shot(r), fmt_test(r), fmt_ci(r.test_ci)]
            for r in table.itertuples()]  # fmt: skip
    header = ["prompt", "learning rate", "batch size", "seeds", f"validation {label}", f"zero-shot test {label}",
              f"test {label}", "test 95% CI"]  # fmt: skip
    caption = (f"{_about(task, dataset, study, system)}: prompts compared, each at its best learning rate and batch "
               f"size (chosen on validation). Scores: {label}, mean ± std over seeds. Zero-shot test: the same "
               "model and prompt before any training. Test 95% CI: bootstrap over test examples of the seed mean.")
    return _table("prompts", (task, dataset, study, system), caption, rows, header, "lrrrrrrr")


def make_comparison_table(task, dataset, study, table, trivial, metric):
    """`table`: comparison_table rows, with test_ci (or None), p_vs_best (NaN for the best system and where
    untested) and the analysis.add_zero_shot columns; `trivial`: analysis.trivial_baselines."""
    label = metric_label(metric)
    rows = [[str(r.method) + (f" ({r.variant})" if r.variant else ""), str(r.model), str(r.peft),
             fmt_config(r._asdict()), str(int(r.n_seeds)), fmt_mean_std(r.val_mean, r.val_std), fmt_zero_shot(r),
             fmt_test(r), fmt_ci(r.test_ci), fmt_p_mark(r.p_vs_best),
             fmt_trainable(r.trainable_params, r.trainable_share), fmt_seconds(r.train_time_s)]
            for r in table.itertuples()]  # fmt: skip
    hidden = table["test_hidden"].any()
    for name, (val, test) in trivial.items():
        rows.append([name.replace("_", " "), "–", "–", "no training", "–", fmt_mean_std(val, None), "–",
                     "hidden" if hidden else fmt_mean_std(test, None), "–", "–", "0", "0"])  # fmt: skip
    header = ["method", "model", "PEFT", "best config", "seeds", f"validation {label}", f"zero-shot test {label}",
              f"test {label}", "test 95% CI", "p vs best", "trainable params", "train time (s)"]  # fmt: skip
    caption = (
        f"{study_title(dataset, study)} ({task}): methods compared at their best configuration (chosen on "
        f"validation over prompts, learning rates and batch sizes). Scores: {label}, mean ± std over seeds (the mean "
        "alone for one seed). Zero-shot test: the same model with the same prompt before any training (no PEFT "
        "module). Test 95% CI: bootstrap over test examples; p vs best: paired randomization test on the "
        f"test examples against the system best on validation, * below {ALPHA}. Trainable params: count (share of "
        "all parameters). Train time: mean wall-clock seconds of training per run, on the machine that ran it. "
        "Reference rows: the scripts' trivial baselines on the same data (mean over seeds)."
    )  # fmt: skip
    return _table("compare", (task, dataset, study), caption, rows, header, "llllrrrrrrrr")


def make_per_class_table(task, dataset, study, system, table, seeds, by_position=False):
    """`table`: error_analysis.per_class rows; `by_position`: its classes are choice positions."""
    rows = [[str(r["class"]), *(f"{100 * r[name]:.1f}" for name in ("precision", "recall", "f1", "predicted")),
             str(int(r["support"]))] for _, r in table.iterrows()]  # fmt: skip
    header = ["choice position" if by_position else "class", "precision (%)", "recall (%)", "F1 (%)",
              "predicted (%)", "test examples"]
    what = ("per choice position (each example has its own answer choices, so the classes are positions: choice 1 is "
            "the first of the example's choices)" if by_position else "per-class")
    caption = (f"{_about(task, dataset, study, system)} at its best configuration: {what} precision, recall and F1 on "
               f"test, over the predictions of its {seeds} seed(s) pooled. Predicted: the share of all predictions "
               "that name the class. Test examples: the gold examples of the class.")
    return _table("classes", (task, dataset, study, system), caption, rows, header, "lrrrrr")


def make_errors_table(errors, shared=(0, 0)):
    """`errors`: error_analysis.confident_errors rows (Markdown only: free text); `shared`: the
    prompt's words to leave out of each input (`shared_words` of all the test inputs)."""
    rows = [[str(i + 1), text_cell(strip_words(r.input, shared)), text_cell(r.gold, 30), text_cell(r.predicted, 30),
             f"{r.margin:.2f}", f"{r.wrong_seeds} of {r.seeds}"]
            for i, r in enumerate(errors.itertuples())]
    header = ["#", "input (prompt words all share: …)", "gold", "predicted", "margin", "wrong in seeds"]
    return Table(caption="", label="", frame=pd.DataFrame(rows, columns=header), align="rlllrr")


def make_lowest_bleu_table(outputs, seeds, shared=(0, 0)):
    """`outputs`: error_analysis.lowest_bleu rows (Markdown only: free text); `shared`: the prompt's
    words to leave out of each source (`shared_words` of all the test sources)."""
    rows = []
    for i, r in enumerate(outputs.itertuples()):
        references = " ‖ ".join(text_cell(reference, 80) for reference in r.references[:2])
        more = f" (+{len(r.references) - 2} more)" if len(r.references) > 2 else ""
        row = [str(i + 1), text_cell(strip_words(r.source, shared), 120), text_cell(r.prediction, 90) or "(empty)",
               references + more, f"{r.bleu:.1f}"]
        rows.append(row + ([f"{r.mean_bleu:.1f}"] if seeds > 1 else []))
    header = ["#", "source (prompt words all share: …)", "output", "references", "sentence BLEU"]
    header += ["mean over seeds"] if seeds > 1 else []
    return Table(caption="", label="", frame=pd.DataFrame(rows, columns=header), align="rlllr" + "r" * (seeds > 1))


def make_length_table(task, dataset, study, system, table):
    """`table`: error_analysis.length_stats's table."""
    rows = [[name, *(f"{value:.1f}" for value in r)] for name, r in zip(("outputs", "references (mean per source)"),
                                                                          table.to_numpy())]  # fmt: skip
    header = ["words", "mean", "std", "median", "10th pct.", "90th pct.", "min", "max"]
    caption = (f"{_about(task, dataset, study, system)} at its best configuration: lengths in words of its test "
               "outputs (all seeds) and of the references (per source, the mean over its references).")
    return _table("lengths", (task, dataset, study, system), caption, rows, header, "lrrrrrrr")


def make_few_shot_table(task, dataset, curve, metric):
    """`curve`: analysis.few_shot_curve rows; one row per line, one column per K (then "full")."""
    cells = curve.assign(cell=[fmt_mean_std(r.test_mean, r.test_std) for r in curve.itertuples()])
    table = cells.pivot(index="line", columns="shots", values="cell").reindex(curve["line"].unique())
    replicates = {line: fmt_replicates(points) for line, points in curve.groupby("line")}
    rows = [[line, *row.fillna("–"), replicates[line]] for line, row in table.iterrows()]
    header = ["system", *map(fmt_k, table.columns), "replicates"]
    caption = (f"{DATASET_TITLES.get(dataset, dataset)} ({task}): test {metric_label(metric)} against the number of "
               "training examples per class K (full: the whole training data), mean ± std over the replicates (seeds "
               "x draws of the K examples, --shots_seed) of each system's learning rate and batch size chosen on "
               "validation at that K. A few-shot run validates on K other examples per class drawn from train.")
    return _table("fewshot", (task, dataset), caption, rows, header, "l" + "r" * (len(header) - 1))
