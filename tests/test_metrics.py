"""Specification of metrics.py: one behaviour per test, expected values worked out by hand."""

import math
from pathlib import Path

import pytest

from metrics import (
    classification_metrics,
    generation_metrics,
    majority_class_baseline,
    most_frequent_reference_baseline,
    most_frequent_target,
    nearest_training_targets,
    output_statistics,
)

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
PROMPTS = REPO / "prompts"



def test_classification_metrics_hand_worked():
    # Per-class F1: class 0 = 1, class 1 = 2/3 (P 1/2, R 1), class 2 = 2/3 (P 1, R 1/2).
    assert classification_metrics([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx({"accuracy": 0.75, "macro_f1": 7 / 9})
    # With num_classes=2 the never-seen class 1 counts as F1 0.
    assert classification_metrics([0, 0], [0, 0], num_classes=2) == {"accuracy": 1.0, "macro_f1": 0.5}


def test_majority_class_baseline():
    # Train majority is 2; eval labels [2, 0, 2, 1]: accuracy 1/2, F1 of class 2 = 2/3, others 0.
    result = majority_class_baseline([2, 2, 0, 1, 2], [2, 0, 2, 1], num_classes=3)
    assert result == pytest.approx({"accuracy": 0.5, "macro_f1": 2 / 9})


def test_bleu_and_rouge_hand_worked():
    result = generation_metrics(["the cat sat on the mat"], [["the cat sat on a mat"]])
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    assert result["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert result["rouge1"] == pytest.approx(100 * 5 / 6)
    assert result["rouge2"] == pytest.approx(60.0)
    assert result["rougeL"] == pytest.approx(100 * 5 / 6)
    assert result["gen_len"] == 6.0


def test_bleu_uses_every_reference_and_variable_reference_counts():
    predictions = ["the cat sat on the mat", "a dog runs in"]
    references = [["the cat sat on the mat", "x"], ["a dog runs in the park today ."]]
    result = generation_metrics(predictions, references)
    # Every n-gram matches; closest reference lengths 6 and 8 against 10 output tokens:
    # brevity penalty exp(1 - 14/10). Padding the missing reference with "" instead of None
    # would make the empty string the "closest" reference of source 2 and give 100.
    assert result["bleu"] == pytest.approx(100 * math.exp(-0.4))
    # ROUGE-1 of source 2: P 4/4, R 4/7 -> F 8/11; ROUGE-2: P 3/3, R 3/6 -> F 2/3.
    assert result["rouge1"] == pytest.approx(100 * (1 + 8 / 11) / 2)
    assert result["rouge2"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["gen_len"] == 5.0


def test_prediction_equal_to_one_reference_scores_100():
    result = generation_metrics(["a dog runs in the park"], [["a cat", "a dog runs in the park", "the dog ran"]])
    assert result["bleu"] == pytest.approx(100.0)
    assert result["rougeL"] == pytest.approx(100.0)


def test_most_frequent_reference_baseline():
    result = most_frequent_reference_baseline(["x y z w", "a b c d", "a b c d"], [["a b c d"], ["a b c d", "q"]])
    assert result["bleu"] == pytest.approx(100.0)
    assert result["gen_len"] == 4.0


def test_hidden_labels_are_never_scored_as_a_class():
    # scikit-learn would score -1 as a seventh class: accuracy 0.5 here, against no real label.
    for labels in ([-1, 2], [None, 2], [6, 2]):
        with pytest.raises(ValueError, match=r"not class ids \(0\.\.5\): a split whose labels are hidden"):
            classification_metrics([5, 2], labels, num_classes=6)
    with pytest.raises(ValueError, match=r"Labels -1 are not class ids \(0 or more\)"):
        majority_class_baseline([1, 1], [-1, 1], num_classes=None)


def test_a_source_without_references_is_refused():
    with pytest.raises(ValueError, match="Every source needs at least one reference: a split whose references are hidden"):
        generation_metrics(["x"], [[]])


def test_most_frequent_target_takes_the_first_seen_of_a_tie():
    assert most_frequent_target(["b", "a", "a", "b", "c"]) == "b"
    with pytest.raises(ValueError, match="at least one training target"):
        most_frequent_target([])


def test_nearest_training_target_by_word_overlap():
    train_inputs = ["name[Alpha], food[Thai], area[riverside]", "name[Bravo], food[Thai]",
                    "name[Crown], area[city centre]"]
    train_targets = ["Alpha: Thai, riverside.", "Bravo: Thai.", "Crown: city centre."]
    # Word sets (lowercased): {name, bravo, food, indian} against the three inputs:
    # {name, alpha, food, thai, area, riverside}: 2 shared of 8 -> 1/4; {name, bravo, food, thai}: 3 of 5 -> 3/5;
    # {name, crown, area, city, centre}: 1 of 8 -> 1/8.
    # "name[Crown], area[riverside]" = {name, crown, area, riverside}: 3 of 7 (3/7) against input 0,
    # 3 of 6 (1/2) against input 2.
    # "x" shares no word with any: the first training target.
    inputs = ["name[Bravo], food[Indian]", "name[Crown], area[riverside]", "x"]
    assert nearest_training_targets(train_inputs, train_targets, inputs) == [
        "Bravo: Thai.", "Crown: city centre.", "Alpha: Thai, riverside."]
    # One-character words count: "flat 1" = {flat, 1} shares 1 of 3 words with "flat 2", all with
    # "flat 1" (without them both would be {flat}, a tie won by "flat 2").
    assert nearest_training_targets(["flat 2", "flat 1"], ["two", "one"], ["flat 1"]) == ["one"]


def test_nearest_training_target_ties_go_to_the_earliest_training_example():
    # "a b" against {a, c} and {b, c}: 1 of 3 words shared with each.
    assert nearest_training_targets(["a c", "b c", "a c"], ["first", "second", "third"], ["a b"]) == ["first"]
    with pytest.raises(ValueError, match="equal, non-zero numbers of training inputs and targets, got 2 and 1"):
        nearest_training_targets(["a", "b"], ["x"], ["a"])


def test_output_statistics_count_distinct_texts_and_the_values_each_states():
    sources = ["name[Alpha], food[Thai], area[riverside]", "name[Bravo], customer rating[5 out of 5]",
               "Describe the place.", "name[Alpha], food[Thai], area[riverside]"]
    outputs = ["ALPHA serves Thai food by the  Riverside.",  # 3 of 3: case and spacing are ignored
               "Bravo is rated 15 out of 5.",  # 1 of 2: "5 out of 5" is not a whole-word match in "15 out of 5"
               "Alpha.",  # no slots: counts for distinct outputs only
               "Alpha serves Thai food."]  # 2 of 3
    statistics = output_statistics(outputs, sources)
    assert statistics == pytest.approx({"distinct_outputs": 100.0, "values_copied": 100 * 6 / 8})
    # One stock text: distinct 1 of 4; it names Alpha and Thai: 4 of 8 values.
    stock = output_statistics(["Alpha serves Thai food."] * 4, sources)
    assert stock == pytest.approx({"distinct_outputs": 25.0, "values_copied": 50.0})


def test_output_statistics_without_slots_have_no_copy_rate():
    assert output_statistics(["a", "a"], ["Summarize: text one", "Summarize: text two"]) == {
        "distinct_outputs": 50.0, "values_copied": None}
    with pytest.raises(ValueError, match="one text per source and at least one, got 1 texts for 2 sources"):
        output_statistics(["a"], ["x", "y"])
