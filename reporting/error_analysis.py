"""Error analysis of one system from the saved test predictions of its runs (used by report.py).

Classification (predictions_test.jsonl rows: input, gold, predicted, scores {choice: score}):
per-class precision, recall and F1 and the confusion matrix (scikit-learn), and the most
confident errors. When each example has its own answer choices (multiple choice: HellaSwag's
endings), the "classes" are choice positions (gold index vs predicted index), never answer
texts, and `length_following` says how often the pick is the shortest choice. Generation
(generations_test.jsonl rows: source, references, prediction): the outputs with the lowest sentence
BLEU (sacrebleu) and the lengths of outputs and references.

A system's runs are its seeds on the same test examples, written in the same order (the test split
is never shuffled): counts pool the seeds (each example once per seed), and the example lists show
each test example once, with what its seeds did.
"""

import numpy as np
import pandas as pd
import sacrebleu
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def class_names(runs_rows):
    """The answer choices in order of first appearance (each row's scores keep the template's order)."""
    return list(dict.fromkeys(choice for rows in runs_rows for row in rows for choice in row["scores"]))


def choices_vary(runs_rows):
    """Whether the examples have their own answer choices (the choice sets of the rows differ)."""
    return len({tuple(row["scores"]) for rows in runs_rows for row in rows}) > 1


def position_names(runs_rows):
    """"choice 1" ... "choice C" for the most choices C of an example."""
    return [f"choice {i + 1}" for i in range(max(len(row["scores"]) for rows in runs_rows for row in rows))]


def _position(row, answer):
    """The 1-based position name of an answer among the row's own choices."""
    return f"choice {list(row['scores']).index(answer) + 1}"


def per_class(runs_rows):
    """Per-class scores of the predictions pooled over seeds; by choice position ("choice 1", ...)
    when the examples have their own choices (choices_vary).

    Args:
        runs_rows: one list of predictions_test.jsonl rows per seed, over the same test examples.
    Returns:
        (DataFrame with columns class, precision, recall, f1 (in [0, 1]; 0 for a class never
        predicted or never gold, as metrics.py's zero_division=0), predicted (the share of the
        predictions that name the class), support (test examples of that gold class);
        the confusion matrix, int array (classes, classes): rows gold, columns predicted, summed over
        seeds), from scikit-learn's precision_recall_fscore_support and confusion_matrix.
    """
    if choices_vary(runs_rows):
        classes = position_names(runs_rows)
        gold = [_position(row, row["gold"]) for rows in runs_rows for row in rows]
        predicted = [_position(row, row["predicted"]) for rows in runs_rows for row in rows]
    else:
        classes = class_names(runs_rows)
        gold = [row["gold"] for rows in runs_rows for row in rows]
        predicted = [row["predicted"] for rows in runs_rows for row in rows]
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=classes,
                                                                     zero_division=0)  # fmt: skip
    matrix = confusion_matrix(gold, predicted, labels=classes)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                          "predicted": matrix.sum(0) / len(gold), "support": support // len(runs_rows)})  # fmt: skip
    return table, matrix


def confident_errors(runs_rows, k=10):
    """The k wrongly predicted test examples with the largest score margin.

    margin = score of the predicted choice - score of the gold choice, in the run's own scores (the
    log-likelihoods the cloze and MLM scorers compare, a linear head's logits). An example wrong in
    several seeds counts once, at its largest margin.

    Returns:
        DataFrame (at most k rows, the largest margin first; ties in test order) with columns input,
        gold, predicted, margin (at that seed), wrong_seeds (how many seeds got the example wrong),
        seeds (how many seeds there are).
    """
    errors = pd.DataFrame([
        {"example": i, "input": row["input"], "gold": row["gold"], "predicted": row["predicted"],
         "margin": row["scores"][row["predicted"]] - row["scores"][row["gold"]]}
        for rows in runs_rows for i, row in enumerate(rows) if row["predicted"] != row["gold"]
    ], columns=["example", "input", "gold", "predicted", "margin"])  # fmt: skip
    wrong = errors.groupby("example").size()
    errors = errors.sort_values(["margin", "example"], ascending=[False, True], kind="stable")
    worst = errors.drop_duplicates("example").head(k)
    return worst.assign(wrong_seeds=worst["example"].map(wrong).to_numpy(), seeds=len(runs_rows)).drop(
        columns="example").reset_index(drop=True)  # fmt: skip


def length_following(runs_rows):
    """How often the shortest choice (in tokens: the rows' choice_tokens, as run_cls.py scored them;
    ties: every shortest choice counts) is predicted, against how often it is the gold answer,
    pooled over seeds. Summed log-probabilities favour short choices, so a model can follow length.

    Returns:
        {"predicted_shortest": share, "gold_shortest": share, "predictions": count}, or None when
        the rows have no choice_tokens (predictions of older runs, other scripts).
    """
    rows = [row for rows in runs_rows for row in rows]
    if not all("choice_tokens" in row for row in rows):
        return None

    def is_shortest(row, answer):
        return row["choice_tokens"][list(row["scores"]).index(answer)] == min(row["choice_tokens"])

    return {"predicted_shortest": float(np.mean([is_shortest(row, row["predicted"]) for row in rows])),
            "gold_shortest": float(np.mean([is_shortest(row, row["gold"]) for row in rows])),
            "predictions": len(rows)}  # fmt: skip


def sentence_bleus(runs_rows):
    """Sentence BLEU (0-100; sacrebleu.sentence_bleu against all the source's references, its
    default exponential smoothing) of every output: float array (seeds, sources)."""
    return np.array([[sacrebleu.sentence_bleu(row["prediction"], row["references"]).score for row in rows]
                     for rows in runs_rows])  # fmt: skip


def lowest_bleu(runs_rows, k=10):
    """The k test sources whose outputs score the lowest sentence BLEU, by their mean over seeds
    (ties in test order).

    Returns:
        DataFrame with columns source, prediction and bleu (the seed's output that scores lowest),
        mean_bleu (over seeds), references (list).
    """
    scores = sentence_bleus(runs_rows)
    order = np.argsort(scores.mean(0), kind="stable")[:k]
    rows = []
    for i in order:
        seed = int(scores[:, i].argmin())
        row = runs_rows[seed][i]
        rows.append({"source": row["source"], "prediction": row["prediction"], "bleu": scores[seed, i],
                     "mean_bleu": scores[:, i].mean(), "references": row["references"]})  # fmt: skip
    return pd.DataFrame(rows, columns=["source", "prediction", "bleu", "mean_bleu", "references"])


def length_stats(runs_rows):
    """Lengths in words (white-space separated) of the outputs, pooled over seeds, and of the
    references (per source: the mean over its references).

    Returns:
        (DataFrame indexed "output", "reference" with columns mean, std (sample), median, p10, p90,
        min, max; dict: outputs (count), empty (outputs without a word), shorter / longer (the share
        of outputs shorter than the shortest / longer than the longest reference of their source),
        distinct (distinct outputs per seed, mean over seeds), sources).
    """
    outputs = np.array([len(row["prediction"].split()) for rows in runs_rows for row in rows])
    reference_words = [[len(ref.split()) for ref in row["references"]] for row in runs_rows[0]]
    shortest = np.tile([min(words) for words in reference_words], len(runs_rows))
    longest = np.tile([max(words) for words in reference_words], len(runs_rows))
    lengths = {"output": outputs, "reference": np.array([np.mean(words) for words in reference_words])}
    table = pd.DataFrame({
        name: {"mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else np.nan,
               "median": np.median(values), "p10": np.percentile(values, 10), "p90": np.percentile(values, 90),
               "min": values.min(), "max": values.max()}
        for name, values in lengths.items()
    }).T  # fmt: skip
    facts = {"outputs": len(outputs), "empty": int((outputs == 0).sum()), "shorter": float((outputs < shortest).mean()),
             "longer": float((outputs > longest).mean()), "sources": len(runs_rows[0]),
             "distinct": float(np.mean([len({row["prediction"] for row in rows}) for rows in runs_rows]))}  # fmt: skip
    return table, facts
