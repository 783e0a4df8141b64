"""Levers of cloze classification beyond the prompt itself, used by run_cls.py (issue #26).

- Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): the model's answer
  distribution on content-free inputs, p_cf, divides every prediction (`--calibrate`).
- Demonstrations (Gao et al. 2021, LM-BFF): K training examples per class, each with its answer
  written in, follow the input after its `[MASK]` (`--num_demonstrations K`).
- Label-word search (LM-BFF's automatic label words): per class the N single-token words the model
  finds likeliest at `[MASK]` on that class's training examples, the combination best on
  validation chosen (`--search_verbalizers N`).

Prompt ensembles (PET) need no run: report_levers.py combines saved predictions.
"""

import dataclasses
import itertools
import random

import torch
import yaml

from glm_utils import build_multiple_choice_inputs, encode_choices, encode_context, score_choices
from modeling_glm import UsageError
from templates import GLM_MASK, answer_fields, make_cloze_context, render_example, template_fields

# The paper's content-free inputs are "N/A", "" and "[MASK]"; in GLM "[MASK]" is the answer slot
# itself, so only the first two are used.
CONTENT_FREE_INPUTS = ("N/A", "")


def shared_choices(examples, flag):
    """The answer choices every example has (a list). Raises UsageError naming `flag` when they differ:
    the lever needs one set of classes."""
    choices = {tuple(e["choices"]) for split in examples.values() for e in split}
    if len(choices) != 1:
        raise UsageError(f"{flag} needs the same answer choices for every example; this prompt gives "
                         f"{len(choices)} different sets")
    return list(next(iter(choices)))


# ----------------------------------------------------------------------------------------------
# Contextual calibration
# ----------------------------------------------------------------------------------------------


def content_free_contexts(template, row):
    """The cloze contexts of the template with every input field (the fields read before "|||")
    set to each of CONTENT_FREE_INPUTS; the other fields keep `row`'s values. Returns list[str]."""
    inputs = template_fields(template) - answer_fields(template)
    contexts = []
    for text in CONTENT_FREE_INPUTS:
        input_text, _, _ = render_example(template, {**row, **dict.fromkeys(inputs, text)}, hidden_answer=True)
        contexts.append(make_cloze_context(input_text))
    return contexts


def content_free_distribution(scores):
    """p_cf [C]: the mean over the M content-free inputs of the softmax of their choice scores [M, C]
    (Zhao et al. 2021, section 4)."""
    return scores.softmax(-1).mean(0)


def calibrate(scores, p_cf):
    """Calibrated log-probabilities [N, C] of choice scores [N, C] (summed log-probs): q = p / p_cf
    renormalised, p = softmax(scores), i.e. W = diag(p_cf)^-1 and b = 0 (Zhao et al. 2021, eq. 2)."""
    return (scores.log_softmax(-1) - p_cf.log()).log_softmax(-1)


def score_contexts(model, tokenizer, contexts, choices, max_length, prefix_space, choice_eop):
    """Choice scores [len(contexts), C] of text contexts (each with its answer slot) that all share
    `choices`, in one batch on the model's device (no gradient)."""
    spans = encode_choices(tokenizer, choices, prefix_space, choice_eop)
    batch = build_multiple_choice_inputs(tokenizer, [encode_context(tokenizer, c) for c in contexts],
                                         [spans] * len(contexts), max_length)
    device = next(model.parameters()).device
    with torch.inference_mode():
        return score_choices(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()


# ----------------------------------------------------------------------------------------------
# Demonstrations
# ----------------------------------------------------------------------------------------------


def draw_demonstrations(train_labels, k, seed, split, index):
    """Indices of the training examples shown with example `index` of `split`: k per class (fewer when
    a class has fewer), drawn at random with a generator seeded by (seed, split, index), never the
    example itself (split "train"), in random order. Only training examples are ever drawn.

    Args:
        train_labels: the label of each training example (list[int]).
    Returns:
        list[int] of indices into the training examples.
    """
    rng = random.Random(f"{seed}/{split}/{index}")
    by_class = {}
    for i, label in enumerate(train_labels):
        if not (split == "train" and i == index):
            by_class.setdefault(label, []).append(i)
    drawn = [i for label in sorted(by_class) for i in rng.sample(by_class[label], min(k, len(by_class[label])))]
    rng.shuffle(drawn)
    return drawn


def demonstration_text(example):
    """A training example as a demonstration: its cloze context with the answer in place of [MASK]."""
    return example["context"].replace(GLM_MASK, example["target"])


def with_demonstrations(context_ids, demonstrations, max_length):
    """`<s> input [MASK] </s>` -> `<s> input [MASK] d1 d2 ... </s>` (LM-BFF's layout with GLM's one
    answer slot: the demonstrations' answers are plain text). Whole demonstrations are left out from
    the last one while the result would pass max_length, so that they go before any of the input;
    an input still too long is cut around its [MASK] by the builder (`truncate_around`).

    Args:
        context_ids: `encode_context` ids. demonstrations: lists of token ids (no special tokens).
    Returns:
        list of token ids.
    """
    ids, room = context_ids[:-1], max_length - len(context_ids)
    for demo in demonstrations:
        if len(demo) > room:
            break
        ids, room = ids + demo, room - len(demo)
    return ids + context_ids[-1:]


def demonstration_ids(tokenizer, examples, k, seed):
    """Per split, per example, the token ids of its drawn demonstrations (`draw_demonstrations`),
    each `" " + demonstration_text` of a training example. Raises UsageError without a train split."""
    if "train" not in examples:
        raise UsageError("--num_demonstrations draws from the training examples: pass --train_file")
    train = examples["train"]
    encoded = [tokenizer(" " + demonstration_text(e), add_special_tokens=False)["input_ids"] for e in train]
    labels = [e["label"] for e in train]
    return {split: [[encoded[i] for i in draw_demonstrations(labels, k, seed, split, index)]
                    for index in range(len(split_examples))]
            for split, split_examples in examples.items()}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Label-word search
# ----------------------------------------------------------------------------------------------


def word_vocabulary(tokenizer, prefix_space):
    """bool [len(tokenizer)]: the tokens that are a whole word of letters, in the form choices are
    encoded with (`Ġword` with `prefix_space`, else `word`)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if prefix_space:
        return torch.tensor([t.startswith("Ġ") and t[1:].isalpha() for t in tokens])
    return torch.tensor([t.isalpha() for t in tokens])


def mask_log_probs(model, tokenizer, contexts, max_length, batch_size):
    """Yields, per batch of contexts (`encode_context` ids), [b, V] log-probabilities of the first
    token of the [MASK]'s span (what a one-token answer is scored with), without gradient."""
    device = next(model.parameters()).device
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        batch = build_multiple_choice_inputs(tokenizer, chunk, [[[tokenizer.eop_token_id]]] * len(chunk), max_length)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                        attention_mask=batch["attention_mask"], logits_positions=batch["target_ids"] != -100)
        yield out.logits.float().log_softmax(-1).cpu()


def label_word_candidates(class_means, allowed, n):
    """The n candidate label words of each class: among the allowed words whose mean log-probability
    is highest for this class (not likelier for another), the n with the highest mean (LM-BFF's
    automatic label words, Gao et al. 2021 section 5.2, with its class-exclusive filter).

    Args:
        class_means: [C, V] mean log-probability at [MASK] over each class's training examples.
        allowed: bool [V] (`word_vocabulary`).
    Returns:
        [C, n] token ids, best first. Raises UsageError when a class has fewer than n such words.
    """
    own = class_means.argmax(0)
    candidates = []
    for c in range(class_means.shape[0]):
        usable = allowed & (own == c)
        if int(usable.sum()) < n:
            raise UsageError(f"--search_verbalizers {n}: class {c} has only {int(usable.sum())} candidate words")
        candidates.append(class_means[c].masked_fill(~usable, float("-inf")).topk(n).indices)
    return torch.stack(candidates)


def best_combination(log_probs, labels):
    """The combination of one candidate per class that classifies validation best.

    Args:
        log_probs: [N, C, n] log-probability at [MASK] of candidate j of class c on example i.
        labels: [N] gold classes.
    Returns:
        (tuple of C candidate positions, its accuracy, number of combinations n^C). Ties go to the
        first combination in itertools.product order (the better-ranked words).
    """
    N, C, n = log_probs.shape
    combinations = torch.tensor(list(itertools.product(range(n), repeat=C)))  # [M, C]
    chosen = log_probs[:, torch.arange(C), combinations]  # [N, M, C]
    accuracy = (chosen.argmax(-1) == labels[:, None]).float().mean(0)  # [M]
    best = int(accuracy.argmax())
    return tuple(combinations[best].tolist()), float(accuracy[best]), len(combinations)


def search_label_words(model, tokenizer, examples, n, max_length, batch_size, prefix_space):
    """LM-BFF's label-word search with the untrained model: candidates from the training examples
    (`label_word_candidates`), the combination best on validation (`best_combination`).

    Args:
        examples: {"train": [...], "validation": [...]} with "context_ids" and "label".
    Returns:
        dict: "words" (the chosen word of each class), "ids" (their token ids), "candidates" (per class,
        its n words), "validation_accuracy", "combinations".
    Raises:
        UsageError: no train or validation split, or too few candidate words.
    """
    if not {"train", "validation"} <= set(examples):
        raise UsageError("--search_verbalizers needs train and validation examples")
    train = examples["train"]
    C = len(train[0]["choices"])
    labels = torch.tensor([e["label"] for e in train])
    sums = 0
    for start, batch in zip(range(0, len(train), batch_size),
                            mask_log_probs(model, tokenizer, [e["context_ids"] for e in train], max_length, batch_size)):
        sums = sums + torch.zeros(C, batch.shape[1]).index_add(0, labels[start:start + len(batch)], batch)
    class_means = sums / torch.bincount(labels, minlength=C).clamp(min=1)[:, None]
    vocabulary = word_vocabulary(tokenizer, prefix_space)
    V = class_means.shape[1]
    allowed = torch.cat([vocabulary[:V], vocabulary.new_zeros(max(V - len(vocabulary), 0))])  # rows past it: no word
    candidates = label_word_candidates(class_means, allowed, n)  # [C, n]
    validation = examples["validation"]
    log_probs = torch.cat([batch[:, candidates] for batch in mask_log_probs(
        model, tokenizer, [e["context_ids"] for e in validation], max_length, batch_size)])  # [N, C, n]
    chosen, accuracy, count = best_combination(log_probs, torch.tensor([e["label"] for e in validation]))
    ids = [int(candidates[c, j]) for c, j in enumerate(chosen)]

    def word(token_id):
        return tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)]).strip()

    return {"words": [word(i) for i in ids], "ids": ids,
            "candidates": [[word(int(i)) for i in row] for row in candidates],
            "validation_accuracy": accuracy, "combinations": count}


def searched_template(template, words):
    """The template with `words` as its answer choices, named "<name> (searched label words)"."""
    return dataclasses.replace(template, name=f"{template.name} (searched label words)",
                               answer_choices=" ||| ".join(words), source="label-word search")


def use_label_words(examples, raw_datasets, template, ids, tokenizer, choice_eop):
    """Every example rendered again with the searched template (a prompt may list its choices):
    context, context_ids, choices, target, and choice_ids the searched token ids (closed by eop only
    with --choice_eop on). `raw_datasets`: the rows the examples were rendered from ("row")."""
    spans = [[i, tokenizer.eop_token_id] if choice_eop else [i] for i in ids]
    for split, split_examples in examples.items():
        for example in split_examples:
            hidden = example["label"] is None
            input_text, target, choices = render_example(template, raw_datasets[split][example["row"]], hidden)
            example.update(context=make_cloze_context(input_text), choices=choices, choice_ids=spans,
                           target=None if hidden else target)
            example["context_ids"] = encode_context(tokenizer, example["context"])


def write_template(template, path):
    """Writes `template` to `path` as a prompts/*.yaml file (for --prompts_dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"name": template.name, "jinja": template.jinja, "answer_choices": template.answer_choices,
             "original_task": True}
    path.write_text(yaml.safe_dump({"templates": [entry]}, sort_keys=False, allow_unicode=True), encoding="utf-8")
