"""Specification of reporting/error_analysis.py: hand-worked predictions of two seeds in, per-class scores,
confusions, confident errors, lowest sentence BLEU and lengths out."""

import numpy as np
import pytest
import sacrebleu

from reporting import error_analysis

CLASSES = ["A", "B", "C"]
GOLD = ["A", "A", "B", "B", "C", "C"]
# Per seed, per example: (predicted, margin = score of the prediction - score of gold; 0 when right).
SEEDS = [
    [("A", 0), ("B", 0.5), ("B", 0), ("B", 0), ("A", 2.0), ("C", 0)],
    [("A", 0), ("A", 0), ("B", 0), ("B", 0), ("B", 1.0), ("B", 0.25)],
]


def cls_rows(seed):
    rows = []
    for i, (gold, (predicted, margin)) in enumerate(zip(GOLD, seed)):
        scores = {choice: -5.0 for choice in CLASSES}
        scores[gold], scores[predicted] = 0.0, margin
        rows.append({"input": f"question {i}", "gold": gold, "predicted": predicted, "scores": scores})
    return rows


def test_per_class_scores_pool_the_seeds():
    table, matrix = error_analysis.per_class([cls_rows(seed) for seed in SEEDS])

    # Rows gold A, B, C; columns predicted A, B, C; both seeds counted.
    assert matrix.tolist() == [[3, 1, 0], [0, 4, 0], [1, 2, 1]]
    assert table["class"].tolist() == CLASSES
    assert table["precision"].tolist() == pytest.approx([3 / 4, 4 / 7, 1.0])
    assert table["recall"].tolist() == pytest.approx([3 / 4, 1.0, 1 / 4])
    assert table["f1"].tolist() == pytest.approx([3 / 4, 2 * (4 / 7) / (1 + 4 / 7), 2 * 0.25 / 1.25])
    assert table["predicted"].tolist() == pytest.approx([4 / 12, 7 / 12, 1 / 12])
    assert table["support"].tolist() == [2, 2, 2]  # test examples per class, not per seed


def test_confident_errors_show_each_example_once_at_its_largest_margin():
    errors = error_analysis.confident_errors([cls_rows(seed) for seed in SEEDS])

    assert errors[["input", "gold", "predicted", "margin", "wrong_seeds", "seeds"]].values.tolist() == [
        ["question 4", "C", "A", 2.0, 2, 2],  # wrong in both seeds (B at margin 1.0 in the second)
        ["question 1", "A", "B", 0.5, 1, 2],
        ["question 5", "C", "B", 0.25, 1, 2],
    ]
    assert error_analysis.confident_errors([cls_rows(SEEDS[0])], k=1)["input"].tolist() == ["question 4"]


REFERENCES = [["the cat sat", "the cat sat down"], ["a dog barks"], ["a b c"]]
OUTPUTS = [["the cat sat", "", "a b c d e"], ["the cat sat", "dog", "a b c d e"]]  # per seed


def gen_rows(outputs):
    return [{"source": f"source {i}", "references": refs, "prediction": out}
            for i, (refs, out) in enumerate(zip(REFERENCES, outputs))]  # fmt: skip


def test_lowest_bleu_ranks_sources_by_their_mean_over_seeds_and_shows_the_worst_output():
    runs_rows = [gen_rows(outputs) for outputs in OUTPUTS]

    lowest = error_analysis.lowest_bleu(runs_rows)

    dog = sacrebleu.sentence_bleu("dog", ["a dog barks"]).score
    longer = sacrebleu.sentence_bleu("a b c d e", ["a b c"]).score
    assert 0 < dog < longer < 100
    assert lowest["source"].tolist() == ["source 1", "source 2", "source 0"]
    assert lowest["prediction"].tolist() == ["", "a b c d e", "the cat sat"]  # source 1: the empty output (BLEU 0)
    assert lowest["bleu"].tolist() == pytest.approx([0.0, longer, 100.0])
    assert lowest["mean_bleu"].tolist() == pytest.approx([dog / 2, longer, 100.0])
    assert lowest["references"].tolist()[0] == ["a dog barks"]


def test_length_statistics_of_outputs_and_references():
    table, facts = error_analysis.length_stats([gen_rows(outputs) for outputs in OUTPUTS])

    outputs = np.array([3, 0, 5, 3, 1, 5])  # words, both seeds
    references = np.array([3.5, 3, 3])  # per source, the mean over its references
    assert table.loc["output", ["mean", "median", "min", "max"]].tolist() == pytest.approx([17 / 6, 3, 0, 5])
    assert table.loc["output", "std"] == pytest.approx(outputs.std(ddof=1))
    assert table.loc["reference", ["mean", "median", "p90"]].tolist() == pytest.approx([19 / 6, 3, 3.4])
    assert table.loc["reference", "std"] == pytest.approx(references.std(ddof=1))
    # Shorter than every reference: "" and "dog" (source 1); longer than every one: "a b c d e" twice (source 2).
    assert facts == {"outputs": 6, "empty": 1, "shorter": pytest.approx(2 / 6), "longer": pytest.approx(2 / 6),
                     "sources": 3, "distinct": 3.0}  # fmt: skip
