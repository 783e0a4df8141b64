"""Error analysis of one system from the saved test predictions of its runs (used by report.py).

Classification (predictions_test.jsonl rows): per-class scores, confusion matrix, most confident errors.
Generation (generations_test.jsonl rows): the lowest sentence BLEU, lengths. `runs_rows`: one list of rows per
seed, the same test examples in the same order: counts pool the seeds; example lists show each example once.
"""

import numpy as np
import pandas as pd
import sacrebleu
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def choices_vary(runs_rows):
    """Whether the examples have their own answer choices (the choice sets of the rows differ)."""
    return len({tuple(row["scores"]) for rows in runs_rows for row in rows}) > 1


def per_class(runs_rows):
    """Per-class scores of the predictions pooled over seeds, by choice position ("choice 1", ...) when the
    examples have their own choices: (DataFrame class, precision, recall, f1 (0 where undefined, as metrics.py),
    predicted (share of the predictions), support (gold test examples); confusion matrix (classes, classes),
    rows gold, summed over seeds). Classes in order of first appearance (the template's order)."""
    rows = [row for rows in runs_rows for row in rows]
    if choices_vary(runs_rows):
        gold, predicted = ([f"choice {list(row['scores']).index(row[key]) + 1}" for row in rows]
                           for key in ("gold", "predicted"))  # fmt: skip
        classes = [f"choice {i + 1}" for i in range(max(len(row["scores"]) for row in rows))]
    else:
        gold, predicted = ([row[key] for row in rows] for key in ("gold", "predicted"))
        classes = list(dict.fromkeys(choice for row in rows for choice in row["scores"]))
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=classes,
                                                                     zero_division=0)  # fmt: skip
    matrix = confusion_matrix(gold, predicted, labels=classes)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                          "predicted": matrix.sum(0) / len(gold), "support": support // len(runs_rows)})  # fmt: skip
    return table, matrix


def confident_errors(runs_rows, k=10):
    """The k wrongly predicted test examples with the largest margin (the predicted choice's score minus the
    gold's, in the run's own scores), each once at its largest margin, ties in test order: DataFrame input,
    gold, predicted, margin, wrong_seeds (how many seeds got it wrong), seeds."""
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
    """How often a shortest choice (the rows' choice_tokens) is predicted and is gold, pooled over seeds:
    {"predicted_shortest": share, "gold_shortest": share, "predictions": count}, or None without
    choice_tokens. Summed log-probabilities favour short choices, so a model can follow length."""
    rows = [row for rows in runs_rows for row in rows]
    if not all("choice_tokens" in row for row in rows):
        return None

    def is_shortest(row, answer):
        return row["choice_tokens"][list(row["scores"]).index(answer)] == min(row["choice_tokens"])

    return {"predicted_shortest": float(np.mean([is_shortest(row, row["predicted"]) for row in rows])),
            "gold_shortest": float(np.mean([is_shortest(row, row["gold"]) for row in rows])),
            "predictions": len(rows)}  # fmt: skip


def lowest_bleu(runs_rows, k=10):
    """The k test sources whose outputs score the lowest sacrebleu.sentence_bleu, mean over seeds (ties in test
    order): DataFrame source, prediction and bleu (of the seed that scores lowest), mean_bleu, references."""
    scores = np.array([[sacrebleu.sentence_bleu(row["prediction"], row["references"]).score for row in rows]
                       for rows in runs_rows])  # fmt: skip
    order = np.argsort(scores.mean(0), kind="stable")[:k]
    rows = []
    for i in order:
        seed = int(scores[:, i].argmin())
        row = runs_rows[seed][i]
        rows.append({"source": row["source"], "prediction": row["prediction"], "bleu": scores[seed, i],
                     "mean_bleu": scores[:, i].mean(), "references": row["references"]})  # fmt: skip
    return pd.DataFrame(rows, columns=["source", "prediction", "bleu", "mean_bleu", "references"])


def length_stats(runs_rows):
    """Lengths in words of the outputs (pooled over seeds) and of the references (per source, the mean):
    (DataFrame indexed output, reference with columns mean, std, median, p10, p90, min, max; dict of outputs,
    empty, shorter / longer (share of outputs shorter / longer than every reference of their source),
    distinct (distinct outputs per seed, mean over seeds), sources)."""
    outputs = np.array([len(row["prediction"].split()) for rows in runs_rows for row in rows])
    reference_words = [[len(ref.split()) for ref in row["references"]] for row in runs_rows[0]]
    shortest = np.tile([min(words) for words in reference_words], len(runs_rows))
    longest = np.tile([max(words) for words in reference_words], len(runs_rows))
    lengths = {"output": outputs, "reference": [np.mean(words) for words in reference_words]}
    table = pd.DataFrame({name: pd.Series(values, dtype=float).describe([0.1, 0.5, 0.9])
                          for name, values in lengths.items()}).T  # fmt: skip
    table = table.rename(columns={"50%": "median", "10%": "p10", "90%": "p90"})
    facts = {"outputs": len(outputs), "empty": int((outputs == 0).sum()), "shorter": float((outputs < shortest).mean()),
             "longer": float((outputs > longest).mean()), "sources": len(runs_rows[0]),
             "distinct": float(np.mean([len({row["prediction"] for row in rows}) for rows in runs_rows]))}  # fmt: skip
    return table[["mean", "std", "median", "p10", "p90", "min", "max"]], facts
