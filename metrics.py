"""Evaluation for run_cls, run_gen and run_baseline (run_pretrain and report read the metric tables): the
loops that score or decode a prepared DataLoader, accuracy and macro-F1 (scikit-learn), BLEU (sacrebleu),
ROUGE (rouge-score), the trivial baselines, what generated texts are like, and contextual calibration."""

import math
import re
from collections import Counter

import numpy
import torch
from tqdm.auto import tqdm

# ----- Metrics (scikit-learn, sacrebleu, rouge_score) ---------------------------------------


# Whether a larger value is better: for the best step of training and report.py's rankings.
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "bleu": True, "rouge1": True, "rouge2": True, "rougeL": True,
                    "token_accuracy": True, "loss": False, "perplexity": False}
# What --metric_for_best_model may name, per script.
CLS_METRICS = ("accuracy", "macro_f1")
GEN_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
PRETRAIN_METRICS = ("token_accuracy", "loss", "perplexity")


def higher_is_better(metric):
    """HIGHER_IS_BETTER[metric]; KeyError for a metric no script reports."""
    return HIGHER_IS_BETTER[metric]


def classification_metrics(predictions, labels, num_classes=None):
    """{"accuracy", "macro_f1"} in [0, 1] (scikit-learn) of int class ids. Macro-F1 averages over
    range(num_classes) when given (an absent class counts as F1 0), else over the classes present.

    Raises:
        ValueError: empty or different-length inputs, or a label that is no class id (None, a hidden -1
            that scikit-learn would score as a class of its own, or past the classes).
    """
    from sklearn.metrics import accuracy_score, f1_score

    if not labels or len(predictions) != len(labels):
        raise ValueError(f"Need equal, non-zero numbers of predictions and labels, got {len(predictions)} and "
                         f"{len(labels)}.")
    upper = num_classes if num_classes is not None else math.inf
    not_ids = sorted({repr(y) for y in labels if y is None or not 0 <= y < upper})
    if not_ids:
        classes = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        raise ValueError(f"Labels {', '.join(not_ids)} are not class ids ({classes}): a split whose labels are "
                         "hidden (-1 or empty) gets predictions, never metrics.")
    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]
    classes = list(range(num_classes)) if num_classes is not None else sorted(set(labels) | set(predictions))
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0))}


def majority_class_baseline(train_labels, eval_labels, num_classes):
    """classification_metrics of always the most frequent training label (ties: lowest id) on eval_labels.
    Raises ValueError without training labels."""
    if not train_labels:
        raise ValueError("majority_class_baseline needs at least one training label.")
    counts = Counter(int(y) for y in train_labels)
    majority = min(counts, key=lambda label: (-counts[label], label))
    return classification_metrics([majority] * len(eval_labels), eval_labels, num_classes)


CHOICE_BASELINES = ("first_choice", "shortest_choice", "longest_choice", "uniform_chance")


def choice_baselines(choice_lengths, labels, num_choices):
    """The trivial baselines of examples with their own choices (`choice_lengths`: each one's token counts):
    classification_metrics of always the first, the shortest and the longest choice (ties: the first), and
    "uniform_chance": {"accuracy": mean of 1 / number of choices}."""
    def pick(key):
        return [min(range(len(lengths)), key=lambda i: (key(lengths[i]), i)) for lengths in choice_lengths]

    return {
        "first_choice": classification_metrics([0] * len(labels), labels, num_choices),
        "shortest_choice": classification_metrics(pick(lambda n: n), labels, num_choices),
        "longest_choice": classification_metrics(pick(lambda n: -n), labels, num_choices),
        "uniform_chance": {"accuracy": sum(1 / len(lengths) for lengths in choice_lengths) / len(labels)},
    }


def generation_metrics(predictions, references_list):
    """{"bleu", "rouge1", "rouge2", "rougeL"} on 0-100 and "gen_len" (mean words) of one prediction per source
    against all its references: sacrebleu's corpus BLEU (13a; a missing reference is None, which sacrebleu
    drops, where "" would count), and rouge_score's stemmed F-measure, best reference, averaged over sources.

    Raises:
        ValueError: empty inputs, different lengths, or a source with no reference (hidden references).
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions or len(predictions) != len(references_list):
        raise ValueError(f"Need one prediction per source and at least one source, got {len(predictions)} "
                         f"predictions for {len(references_list)} sources.")
    if any(not refs for refs in references_list):
        raise ValueError("Every source needs at least one reference: a split whose references are hidden (all "
                         "empty) gets predictions, never metrics.")
    most = max(len(refs) for refs in references_list)
    streams = [[refs[i] if i < len(refs) else None for refs in references_list] for i in range(most)]
    bleu = sacrebleu.corpus_bleu(predictions, streams).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = Counter()
    for prediction, refs in zip(predictions, references_list):
        for key, score in scorer.score_multi(refs, prediction).items():
            totals[key] += score.fmeasure
    result = {"bleu": float(bleu)}
    result.update({key: 100.0 * totals[key] / len(predictions) for key in ("rouge1", "rouge2", "rougeL")})
    result["gen_len"] = sum(len(p.split()) for p in predictions) / len(predictions)
    return result


def most_frequent_target(train_targets):
    """The most frequent training target (ties: the first seen). ValueError when there is none."""
    if not train_targets:
        raise ValueError("The most frequent training target needs at least one training target.")
    return Counter(train_targets).most_common(1)[0][0]


def most_frequent_reference_baseline(train_targets, references_list):
    """generation_metrics of the most frequent training target for every source (ValueError: no target)."""
    return generation_metrics([most_frequent_target(train_targets)] * len(references_list), references_list)


# Every run of letters, digits or "_", one character long included (scikit-learn's default drops "5").
_WORD_PATTERN = r"(?u)\b\w+\b"


def nearest_training_targets(train_inputs, train_targets, inputs):
    """For each input, the target of the training example whose input shares the most words: the Jaccard
    index |A & B| / |A | B| of their sets of lowercased words (ties: the earliest). A retrieval baseline:
    fluent in-domain text that states the input's own values only where the neighbour has the same ones.

    Raises:
        ValueError: no training example, or train_inputs and train_targets of different lengths.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    if not train_inputs or len(train_inputs) != len(train_targets):
        raise ValueError(f"Need equal, non-zero numbers of training inputs and targets, got {len(train_inputs)} "
                         f"and {len(train_targets)}.")
    vectorizer = CountVectorizer(binary=True, token_pattern=_WORD_PATTERN).fit([*train_inputs, *inputs])
    train = vectorizer.transform(train_inputs)  # [N_train, V] 0/1
    train_sizes = numpy.asarray(train.sum(axis=1)).ravel()  # [N_train] |B|
    nearest = []
    for start in range(0, len(inputs), 256):  # 256 inputs at once: a [256, N_train] float matrix
        queries = vectorizer.transform(inputs[start : start + 256])  # [n, V]
        shared = (queries @ train.T).toarray()  # [n, N_train] |A & B|
        sizes = numpy.asarray(queries.sum(axis=1))  # [n, 1] |A|
        union = sizes + train_sizes[None, :] - shared
        nearest.extend((shared / numpy.maximum(union, 1)).argmax(axis=1))  # argmax: the first of ties
    return [train_targets[i] for i in nearest]


# A slot's value in E2E's meaning-representation notation "key[value], key[value]".
_SLOT_VALUE = re.compile(r"\[([^\[\]]+)\]")


def output_statistics(outputs, sources):
    """What a system's texts (one per source) are like beyond n-gram overlap, on 0-100: distinct_outputs,
    the share of different texts; values_copied, the share of the sources' slot values (`key[value]`) that
    their text states as whole words, ignoring case and spaces ("5" is not in "15"; None: no slot). A
    rephrased value counts as missing, so the references' own rate is the ceiling to read it against.

    Raises:
        ValueError: no outputs, or outputs and sources of different lengths.
    """
    if not outputs or len(outputs) != len(sources):
        raise ValueError(f"Need one text per source and at least one, got {len(outputs)} texts for {len(sources)} "
                         "sources.")
    stated = total = 0
    for output, source in zip(outputs, sources):
        text = " ".join(output.lower().split())
        for value in _SLOT_VALUE.findall(source):
            value = " ".join(value.lower().split())
            total += 1
            stated += re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None
    return {"distinct_outputs": 100.0 * len(set(outputs)) / len(outputs),
            "values_copied": 100.0 * stated / total if total else None}


# ----- The evaluation loops of the scripts (run_cls, run_gen, run_baseline) -----------------


def evaluate_choices(accelerator, model, dataloader, score, num_choices, labelled=True):
    """Scores every example of a prepared DataLoader once with `score` (batch -> [B, C]; batches carry
    "class_labels" [B], -1 hidden, and "index" [B]). Returns (classification_metrics, or None when not
    `labelled`; {example index: its C scores}); RuntimeError when an example was missed or repeated."""
    was_training = model.training
    model.eval()
    indices, scores, labels = [], [], []
    with torch.inference_mode():
        for batch in dataloader:
            batch_scores, batch_labels, batch_index = accelerator.gather_for_metrics(
                (score(batch), batch["class_labels"], batch["index"]))
            scores.append(batch_scores.float().cpu())
            labels += batch_labels.tolist()
            indices += batch_index.tolist()
    model.train(was_training)
    if sorted(indices) != list(range(len(dataloader.dataset))):
        raise RuntimeError(f"Evaluation scored {len(indices)} examples for {len(dataloader.dataset)}: some were "
                           "missed or repeated across processes.")
    scores = torch.cat(scores)
    metrics = classification_metrics(scores.argmax(-1).tolist(), labels, num_choices) if labelled else None
    return metrics, dict(zip(indices, scores.tolist()))


def evaluate_generation(accelerator, model, dataloader, generate, tokenizer, references, description=None):
    """Decodes every source of a prepared DataLoader once with `generate` (batch -> [B, L] ids padded with
    pad_token_id; batches carry "index" [B]). Returns (generation_metrics against `references`, None when
    they are hidden; the predictions in source order)."""
    was_training = model.training
    model.eval()
    predictions = [None] * len(dataloader.dataset)
    with torch.inference_mode():
        for batch in tqdm(dataloader, desc=description, leave=False, disable=not accelerator.is_local_main_process):
            generated = accelerator.pad_across_processes(generate(batch), dim=1, pad_index=tokenizer.pad_token_id)
            generated, index = accelerator.gather_for_metrics((generated, batch["index"]))
            for ids, i in zip(generated.tolist(), index.tolist()):
                predictions[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    model.train(was_training)
    return None if references is None else generation_metrics(predictions, references), predictions


# ----- Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"; run_cls --calibrate) ---


def content_free_distribution(scores):
    """p_cf [C]: the mean over the M content-free inputs of the softmax of their choice scores [M, C]
    (Zhao et al. 2021, section 4)."""
    return scores.softmax(-1).mean(0)


def calibrate(scores, p_cf):
    """Calibrated log-probabilities [N, C] of choice scores [N, C] (summed log-probs): q = p / p_cf
    renormalised, p = softmax(scores), i.e. W = diag(p_cf)^-1 and b = 0 (Zhao et al. 2021, eq. 2)."""
    return (scores.log_softmax(-1) - p_cf.log()).log_softmax(-1)
