"""Specification of reporting/significance.py: metrics recomputed from per-example counts equal metrics.py's,
bootstrap intervals equal scipy's on the plain per-example vector, exact paired tests by hand."""

import numpy as np
import pytest
import scipy.stats

from reporting import significance
from metrics import classification_metrics, generation_metrics

CHOICES = ["yes", "no", "maybe"]
GOLD = [0, 0, 1, 2, 1, 0, 2, 2]
PREDICTED = [0, 1, 1, 2, 0, 0, 0, 2]
SOURCES = [  # (prediction, references): a short output, one with no 4-gram match, an empty one
    ("the cat sat on the mat", ["the cat is on the mat", "a cat sat on a mat"]),
    ("a dog runs", ["the dog runs fast"]),
    ("hello world there", ["hello there world", "hi world"]),
    ("", ["nothing was written"]),
    ("green eggs and ham on a boat", ["green eggs and ham", "eggs and ham on a boat today"]),
]


def cls_rows(gold, predicted):
    return [{"input": f"q{i}", "gold": CHOICES[g], "predicted": CHOICES[p], "scores": dict.fromkeys(CHOICES, 0.0)}
            for i, (g, p) in enumerate(zip(gold, predicted))]  # fmt: skip


def gen_rows(sources):
    return [{"source": f"s{i}", "references": refs, "prediction": pred} for i, (pred, refs) in enumerate(sources)]


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_classification_metrics_from_counts_equal_scikit_learn(metric):
    stats, key = significance.example_stats(cls_rows(GOLD, PREDICTED), "cls", metric)
    expected = classification_metrics(PREDICTED, GOLD, len(CHOICES))[metric]  # 5/8; F1 (2/3 + 2/3 + 4/5) / 3
    assert significance.seed_mean_score(stats[None], metric) == pytest.approx(expected, abs=1e-12)
    assert key == GOLD
    resample = np.array([0, 0, 3, 3, 7])  # class 1 is neither gold nor predicted here: F1 0, as scikit-learn
    subset = classification_metrics([PREDICTED[i] for i in resample], [GOLD[i] for i in resample], len(CHOICES))
    assert significance.seed_mean_score(stats[None], metric, resample) == pytest.approx(subset[metric], abs=1e-12)


@pytest.mark.parametrize("metric", ["bleu", "rouge1", "rougeL"])
def test_generation_metrics_from_counts_equal_sacrebleu_and_rouge_score(metric):
    stats, _ = significance.example_stats(gen_rows(SOURCES), "gen", metric)
    predictions, references = zip(*SOURCES)
    for indices in (np.arange(len(SOURCES)), np.array([1, 1, 3]), np.array([0, 2, 4, 4])):
        expected = generation_metrics([predictions[i] for i in indices], [references[i] for i in indices])[metric]
        assert significance.seed_mean_score(stats[None], metric, indices) == pytest.approx(expected, abs=1e-9)


def test_bootstrap_interval_is_scipys_on_the_per_example_mean_over_seeds():
    correct = np.array([[1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1]], dtype=float)

    low, high = significance.bootstrap_ci(correct[:, :, None], "accuracy")

    # The mean accuracy over seeds is the mean over examples of each example's mean over seeds.
    expected = scipy.stats.bootstrap((correct.mean(0),), np.mean, n_resamples=1000, batch=100, method="percentile",
                                     rng=np.random.default_rng(significance.SEED)).confidence_interval  # fmt: skip
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert low < correct.mean() < high


def test_paired_test_is_exact_for_few_examples():
    better = np.array([1, 1, 1, 1, 0], dtype=float)[None, :, None]
    worse = np.zeros((1, 5, 1))
    # Four examples differ by 1: of the 2^5 swaps, 4 keep |mean difference| >= 0.8 (all four one way,
    # the tied fifth either way): p = 4/32.
    assert significance.paired_test(better, worse, "accuracy") == pytest.approx((0.8, 0.125))
    assert significance.paired_test(worse, better, "accuracy") == pytest.approx((-0.8, 0.125))
    assert significance.paired_test(better, better, "accuracy") == pytest.approx((0.0, 1.0))
    all_right, all_wrong = np.ones((1, 12, 1)), np.zeros((2, 12, 1))  # 2 of 4096 swaps as extreme
    assert significance.paired_test(all_right, all_wrong, "accuracy") == pytest.approx((1.0, 2 / 4096))
