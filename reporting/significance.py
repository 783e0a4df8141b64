"""Is a difference real? Confidence intervals and paired tests over the test examples of saved predictions
(used by report.py), also on the rows of the report's summary tables.

Every metric the scripts report is a function of sums over test examples: each example gives a small vector
of counts (`example_stats`), a resample sums them, and `finalize` turns the sums into the metric as
metrics.py computes it on the whole test set:

  accuracy   [correct]                                   mean
  macro_f1   [tp_c, fp_c, fn_c for each class c]         mean over classes of 2tp / (2tp + fp + fn), 0 if undefined
  bleu       [hyp len, ref len, matches 1-4, totals 1-4] corpus BLEU of the summed counts (`bleu_from_counts`)
  rouge*     [F-measure (0-100)]                         mean (rouge-score, best reference per source)

A system's score is the mean over its seeds of the metric on the same examples (a resample draws the same
examples for every seed). `bootstrap_ci`: percentile bootstrap (Efron and Tibshirani 1993, ch. 13).
`paired_test`: paired approximate randomization, each example's outputs of the two systems swapped at random
(Noreen 1989, Riezler and Maxwell 2005), two-sided; its statistic is the difference of the scores of each
system's per-example counts averaged over its seeds (for BLEU and macro-F1: of the seed-pooled scores).
"""

import json
from pathlib import Path

import numpy as np
import sacrebleu
import scipy.stats
from rouge_score import rouge_scorer

from reporting.analysis import best_row, metric_scale

CONFIDENCE = 0.95
CI_RESAMPLES = 1000
TEST_RESAMPLES = 9999
SEED = 0
ALPHA = 0.05  # significance level of the marks in report.md
PREDICTION_FILES = {"cls": "predictions_test.jsonl", "gen": "generations_test.jsonl"}
SUPPORTED = {"cls": ("accuracy", "macro_f1"), "gen": ("bleu", "rouge1", "rouge2", "rougeL")}


def read_predictions(run_dir, task):
    """The rows of a run's test predictions file, or None when there is none."""
    path = Path(run_dir) / PREDICTION_FILES[task]
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def example_stats(rows, task, metric):
    """(per-example counts of `metric` (module docstring), float array (n, k); key of the examples: gold
    choice indices for cls, references for gen, so that two systems pair only on the same examples), from
    predictions_test.jsonl rows (cls) or generations_test.jsonl rows (gen); `metric` in SUPPORTED[task]."""
    if task == "cls":
        gold = np.array([list(row["scores"]).index(row["gold"]) for row in rows])
        predicted = np.array([list(row["scores"]).index(row["predicted"]) for row in rows])
        if metric == "accuracy":
            return (gold == predicted)[:, None].astype(float), gold.tolist()
        classes = np.arange(max(len(row["scores"]) for row in rows))
        is_gold, is_predicted = gold[:, None] == classes, predicted[:, None] == classes
        counts = [is_gold & is_predicted, ~is_gold & is_predicted, is_gold & ~is_predicted]
        return np.concatenate(counts, axis=1).astype(float), gold.tolist()
    references = [row["references"] for row in rows]
    if metric == "bleu":
        bleu = sacrebleu.BLEU(effective_order=True)  # only the counts are read; this avoids a warning per call
        scores = [bleu.sentence_score(row["prediction"], row["references"]) for row in rows]
        return np.array([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in scores], dtype=float), references
    scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
    scores = [100 * scorer.score_multi(row["references"], row["prediction"])[metric].fmeasure for row in rows]
    return np.array(scores)[:, None], references


def finalize(sums, n, metric):
    """The metric, (...) on its stored scale (accuracy / macro-F1 in [0, 1], BLEU and ROUGE 0-100), from
    `sums` (..., k): sums over n examples of `example_stats`."""
    if metric == "macro_f1":
        tp, fp, fn = np.split(sums, 3, axis=-1)
        denominator = 2 * tp + fp + fn
        return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0).mean(-1)
    if metric == "bleu":
        return bleu_from_counts(sums)
    return sums[..., 0] / n


def bleu_from_counts(sums):
    """Corpus BLEU (0-100), (...), of summed sentence statistics (..., 10) [hyp len, ref len, matches of 1..4-grams,
    totals of 1..4-grams], vectorized (the tests sum thousands of resamples): sacrebleu's BLEU.compute_bleu
    with its "exp" smoothing (mteval-v13a: the k-th order without a match counts 1 / (2^k total)) and brevity
    penalty exp(1 - ref/hyp) (Papineni et al. 2002)."""
    sys_len, ref_len, correct, total = sums[..., 0], sums[..., 1], sums[..., 2:6], sums[..., 6:10]
    unmatched = correct == 0
    smoothed = 1 / (2.0 ** np.cumsum(unmatched, axis=-1) * np.where(total > 0, total, 1))
    precision = np.where(unmatched, smoothed, correct / np.where(total > 0, total, 1)) * (total > 0)
    with np.errstate(divide="ignore"):  # a precision of 0 (no n-gram of some order) gives BLEU 0
        log_mean = np.log(precision).mean(-1)
        brevity = np.where(sys_len < ref_len, np.exp(1 - ref_len / np.where(sys_len > 0, sys_len, 1)), 1.0)
    score = 100 * brevity * np.exp(log_mean) * (sys_len > 0)
    return np.where(unmatched.all(-1), 0.0, score)


def seed_mean_score(stats, metric, indices=None):
    """Mean over seeds of the metric on the examples `indices` (int array (..., m); all when None) -> (...);
    `stats`: (seeds, n, k) per-example counts of each seed's run."""
    if indices is None:
        indices = np.arange(stats.shape[1])
    return finalize(stats[:, indices].sum(-2), indices.shape[-1], metric).mean(0)


def bootstrap_ci(stats, metric):
    """95% percentile bootstrap interval (low, high) of `seed_mean_score` over the test examples of `stats`
    (seeds, n, k), on the metric's stored scale."""
    result = scipy.stats.bootstrap(
        (np.arange(stats.shape[1]),), lambda indices, axis: seed_mean_score(stats, metric, indices),
        n_resamples=CI_RESAMPLES, batch=100, vectorized=True, method="percentile", confidence_level=CONFIDENCE,
        rng=np.random.default_rng(SEED),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_test(stats_a, stats_b, metric):
    """Paired approximate randomization test of A against B (module docstring): (difference A - B on the
    stored scale, two-sided p). `stats_a`, `stats_b`: (seeds, n, k) counts; their seed counts may differ."""
    n = stats_a.shape[1]
    pooled = np.concatenate([stats_a.mean(0), stats_b.mean(0)])  # rows 0..n-1: A, n..2n-1: B

    def difference(a, b, axis):
        return finalize(pooled[a].sum(-2), n, metric) - finalize(pooled[b].sum(-2), n, metric)

    result = scipy.stats.permutation_test(
        (np.arange(n), np.arange(n, 2 * n)), difference, permutation_type="samples", vectorized=True,
        n_resamples=TEST_RESAMPLES, batch=500, rng=np.random.default_rng(SEED),
    )  # fmt: skip
    return float(result.statistic), float(result.pvalue)


def fmt_p(p):
    """ "p = 0.031", "p < 0.001"."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


# --- On the report's summary tables (analysis.comparison_table, analysis.prompt_table rows) ---


def prediction_stats(row, task, metric):
    """(`example_stats` of a summary row's runs, (seeds, n, k); example key), or None when the test labels
    were hidden, the metric is not SUPPORTED or a run has no predictions file."""
    if row["test_hidden"] or metric not in SUPPORTED[task]:
        return None
    runs_rows = [read_predictions(Path(path).parent, task) for path in row["paths"]]
    if not all(runs_rows):
        return None
    return runs_stats(runs_rows, task, metric)


def runs_stats(runs_rows, task, metric):
    """(`example_stats` of several seeds' prediction rows, (seeds, n, k); the first's example key)."""
    stats = [example_stats(rows, task, metric) for rows in runs_rows]
    return np.stack([s for s, _ in stats]), stats[0][1]


def add_test_statistics(table, task, metric):
    """(copy of a summary table with test_ci (shown scale, or None) and test_examples (n, or 0); the rows'
    prediction_stats)."""
    stats = [prediction_stats(row, task, metric) for _, row in table.iterrows()]
    table = table.copy()
    scale = metric_scale(metric)
    table["test_ci"] = [None if s is None else tuple(scale * v for v in bootstrap_ci(s[0], metric))
                        for s in stats]  # fmt: skip
    table["test_examples"] = [0 if s is None else s[0].shape[1] for s in stats]
    return table, stats


def add_tests_against_best(table, stats, metric):
    """Copy of a comparison table with best (chosen on validation), diff_vs_best (shown scale) and p_vs_best
    (NaN for the best row and where untested)."""
    table = table.copy()
    best = best_row(table, metric).name
    table["best"] = table.index == best
    table["diff_vs_best"] = table["p_vs_best"] = np.nan
    for other in table.index.drop(best):
        result = paired(stats[other], stats[best], metric)
        if result is not None:
            table.loc[other, ["diff_vs_best", "p_vs_best"]] = result
    return table


def paired(stats_a, stats_b, metric):
    """(difference A - B on the shown scale, p) of `paired_test` of two prediction_stats, or None when
    either is None or they are not on the same test examples."""
    if stats_a is None or stats_b is None or stats_a[1] != stats_b[1]:
        return None
    difference, p = paired_test(stats_a[0], stats_b[0], metric)
    return metric_scale(metric) * difference, p


def zero_shot_test(row, stats, task, metric):
    """`paired` of a summary row (`stats`: its prediction_stats) against its zero-shot runs
    (analysis.add_zero_shot columns), or None."""
    if not row["zs_n_seeds"]:
        return None
    zero_shot = prediction_stats({"test_hidden": row["zs_test_hidden"], "paths": row["zs_paths"]}, task, metric)
    return paired(stats, zero_shot, metric)
