"""GLM's inputs (paper, Figures 1-2), choice scoring, decoding and the levers' scoring for run_cls.py, run_gen.py,
run_pretrain.py, check_glm.py and baselines.py: ids are encoded once (`encode_*`), batched by `build_*` (`*_from_text`
do both). Where GLM's code and the hub's remote code differ this follows GLM's (GLM_NOTES.md): choices end with a
scored eop, generation targets carry a leading space.
"""

import itertools

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import LogitsProcessor, LogitsProcessorList, NoRepeatNGramLogitsProcessor

from modeling_glm import MASK_TOKEN, GLMConfig, UsageError


def encode_context(tokenizer, context: str):
    """Ids of `<s> ... [MASK] ... </s>`, uncut. Raises UsageError unless it has one `[MASK]`."""
    ids = tokenizer(context)["input_ids"]
    count = ids.count(tokenizer.mask_token_id)
    if count != 1:
        raise UsageError(f"A GLM context needs exactly one {MASK_TOKEN}, found {count} in: {context!r}")
    return ids


def truncate_around(ids, start, end, max_length):
    """Cuts `<s> left [start:end] right </s>` to max_length tokens from the far end of the longer side, keeping
    ids[start:end]. Returns (ids, new start). Raises UsageError when those do not fit."""
    if end - start + 2 > max_length:
        raise UsageError(f"{end - start} answer-slot tokens do not fit in --max_seq_length {max_length}")
    left, middle, right = ids[1:start], ids[start:end], ids[end:-1]
    keep = len(left) + len(right) - max(len(ids) - max_length, 0)
    # As if tokens were dropped one at a time from the longer side (the left one on a tie).
    kept_left = max(keep - len(right), min(len(left), keep // 2))
    left, right = left[len(left) - kept_left:], right[:keep - kept_left]
    return [ids[0], *left, *middle, *right, ids[-1]], kept_left + 1


def _cut_context(tokenizer, ids, max_length):
    """(ids cut around the [MASK], index of the mask)."""
    mask = ids.index(tokenizer.mask_token_id)
    return truncate_around(ids, mask, mask + 1, max_length)


def encode_choice(tokenizer, choice: str, prefix_space: bool = True):
    """Ids of an answer choice, mid-sentence (`Ġword`) with `prefix_space`. Raises UsageError if it has none."""
    ids = tokenizer((" " if prefix_space else "") + choice.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise UsageError(f"Answer choice {choice!r} encodes to no token")
    return ids


def encode_choices(tokenizer, choices, prefix_space=True, choice_eop=None):
    """One example's choices as id lists, closed by eop when `choice_eop`, or when None if any has several
    tokens (THUDM/GLM `tasks/superglue/pvp.py`; the hub's remote code never adds it: False)."""
    ids = [encode_choice(tokenizer, c, prefix_space) for c in choices]
    if choice_eop is None:
        choice_eop = any(len(c) > 1 for c in ids)
    return [c + [tokenizer.eop_token_id] for c in ids] if choice_eop else ids


def _check_max_length(max_length, max_positions):
    if max_length > max_positions:
        raise UsageError(f"max_length {max_length} is longer than the {max_positions} positions of the model; "
                         f"use at most {max_positions}")


def _empty_batch(tokenizer, B, S):
    """Padding nobody sees: input_ids [B, S], position_ids [B, 2, S], attention_mask [B, 1, S, S]."""
    return {"input_ids": torch.full((B, S), tokenizer.pad_token_id, dtype=torch.long),
            "position_ids": torch.zeros(B, 2, S, dtype=torch.long),
            "attention_mask": torch.zeros(B, 1, S, S, dtype=torch.bool)}


def _place_context(batch, b, ids):
    """A context at the start of row b: positions 0..L-1, block position 0, bidirectional."""
    L = len(ids)
    batch["input_ids"][b, :L] = torch.tensor(ids)
    batch["position_ids"][b, 0, :L] = torch.arange(L)
    batch["attention_mask"][b, 0, :L, :L] = True


def _place_span(batch, b, start, span_input, mask, context_length):
    """A span (sop first) at columns start.. of row b: position `mask`, block 1..n, sees context, itself causally."""
    n, end = len(span_input), start + len(span_input)
    batch["input_ids"][b, start:end] = torch.tensor(span_input)
    batch["position_ids"][b, 0, start:end] = mask
    batch["position_ids"][b, 1, start:end] = torch.arange(1, n + 1)
    batch["attention_mask"][b, 0, start:end, :context_length] = True
    batch["attention_mask"][b, 0, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()


def build_multiple_choice_inputs(tokenizer, contexts, choices, max_length=256,
                                 max_positions=GLMConfig.max_sequence_length):
    """Packs every answer choice of each example after its context, in ONE sequence.

    contexts: B `encode_context` id lists; choices: B lists of `encode_choices` spans (any number and length).
    Context `<s> x1 [MASK] x2 </s>` (mask index m), choices c1..cn and d1..dk:

        input_ids            <s> x1 [MASK] x2 </s> | sop c1 .. c(n-1) | sop d1 .. d(k-1) | pad
        position_ids[0]       0  1    2     3   4  |  m   m  ..   m   |  m   m  ..   m   |  0
        position_ids[1]       0  0    0     0   0  |  1   2  ..   n   |  1   2  ..   k   |  0
        target_ids           -100 ...                 c1  c2 ..   cn  |  d1  d2 ..   dk  | -100

    A choice token sees the context and its own block up to itself, never another choice; nobody sees
    padding. The context is cut around the mask to fit. Returns input_ids [B, S], position_ids [B, 2, S],
    attention_mask bool [B, 1, S, S], target_ids [B, S] (-100 unscored), choice_index [B, S] (-1 unscored),
    choice_mask bool [B, C]. Raises ValueError for an example without choices or unequal lists; UsageError when
    the choices do not fit max_length or max_length passes `max_positions`.
    """
    _check_max_length(max_length, max_positions)
    rows = []
    for b, (context_ids, spans) in enumerate(zip(contexts, choices, strict=True)):
        if not spans:
            raise ValueError(f"Example {b} has no answer choices")
        span_length = sum(len(span) for span in spans)
        if span_length + 3 > max_length:
            raise UsageError(f"The answer choices take {span_length} tokens; max_length={max_length} is too small")
        rows.append((*_cut_context(tokenizer, context_ids, max_length - span_length), spans))
    S = max(len(ids) + sum(len(span) for span in spans) for ids, _, spans in rows)
    B, C = len(rows), max(len(spans) for _, _, spans in rows)
    batch = {**_empty_batch(tokenizer, B, S), "target_ids": torch.full((B, S), -100, dtype=torch.long),
             "choice_index": torch.full((B, S), -1, dtype=torch.long),
             "choice_mask": torch.zeros(B, C, dtype=torch.bool)}
    for b, (ids, m, spans) in enumerate(rows):
        _place_context(batch, b, ids)
        start = len(ids)
        for c, tokens in enumerate(spans):
            end = start + len(tokens)
            _place_span(batch, b, start, [tokenizer.sop_token_id, *tokens[:-1]], m, len(ids))
            batch["target_ids"][b, start:end] = torch.tensor(tokens)
            batch["choice_index"][b, start:end] = c
            batch["choice_mask"][b, c] = True
            start = end
    return batch


def multiple_choice_inputs_from_text(tokenizer, contexts, choices, max_length=256, choice_prefix_space=True,
                                     choice_eop=None, max_positions=GLMConfig.max_sequence_length):
    """`build_multiple_choice_inputs` from B context strings and B lists of choice strings."""
    return build_multiple_choice_inputs(
        tokenizer, [encode_context(tokenizer, context) for context in contexts],
        [encode_choices(tokenizer, example_choices, choice_prefix_space, choice_eop) for example_choices in choices],
        max_length, max_positions)


def score_choices(model, batch, length_normalize=False):
    """[B, C] log-likelihoods of a `build_multiple_choice_inputs` batch's choices (-inf for padding choices):
    sum_t log p(c_t | context, c_<t) with the closing eop (THUDM/GLM `model/downstream.py`), over the token
    count with `length_normalize`. Cross-entropy over these is the paper's cloze fine-tuning loss."""
    scored = batch["target_ids"] != -100
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                attention_mask=batch["attention_mask"], logits_positions=scored)
    token_logp = out.logits.float().log_softmax(-1).gather(-1, batch["target_ids"][scored][:, None])[:, 0]
    B, C = batch["choice_mask"].shape
    flat_choice = (torch.arange(B, device=scored.device)[:, None] * C + batch["choice_index"])[scored]
    scores = token_logp.new_zeros(B * C).index_add(0, flat_choice, token_logp)
    if length_normalize:
        lengths = token_logp.new_zeros(B * C).index_add(0, flat_choice, torch.ones_like(token_logp))
        scores = scores / lengths.clamp(min=1)
    return scores.view(B, C).masked_fill(~batch["choice_mask"], float("-inf"))


def encode_target(tokenizer, target: str):
    """Ids of `" " + target`, as THUDM/GLM `tasks/seq2seq/dataset.py` encodes it, uncut."""
    return tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]


def build_generation_inputs(tokenizer, contexts, targets=None, max_length=256, max_target_length=64,
                            max_positions=GLMConfig.max_sequence_length):
    """GLM inputs for generating the span of a `[MASK]` (blank infilling, paper Figure 2b).

    contexts: B `encode_context` id lists; targets: B `encode_target` id lists, or None for inference.
    Contexts are cut around the mask to `max_length` and padded to the longest, Lc; the span follows:

        training (targets given)          inference (targets None)
        input_ids   ctx pad | sop t1 .. tn  pad       ctx pad | sop
        labels      -100    | t1  t2 .. eop -100      (none)
        position    0..L-1 0| m   m  .. m             0..L-1 0| m
        block pos   0 ..   0| 1   2  .. n+1           0 ..   0| 1

    Span tokens see the real context and the span up to themselves; targets are cut to `max_target_length`.
    Returns input_ids [B, S], position_ids [B, 2, S], attention_mask bool [B, 1, S, S], labels [B, S]
    (training only). Raises UsageError when max_length or max_target_length + 1 pass `max_positions`.
    """
    _check_max_length(max_length, max_positions)
    if max_target_length + 1 > max_positions:
        raise UsageError(f"max_target_length {max_target_length} gives block positions up to {max_target_length + 1}, "
                         f"past the {max_positions} positions of the model; use at most {max_positions - 1}")
    cut = [_cut_context(tokenizer, ids, max_length) for ids in contexts]
    spans = [[]] * len(contexts) if targets is None else [ids[:max_target_length] for ids in targets]
    Lc = max(len(ids) for ids, _ in cut)
    batch = _empty_batch(tokenizer, len(contexts), Lc + max(len(span) for span in spans) + 1)
    if targets is not None:
        batch["labels"] = torch.full(batch["input_ids"].shape, -100, dtype=torch.long)
    for b, ((ids, m), span) in enumerate(zip(cut, spans)):
        _place_context(batch, b, ids)
        _place_span(batch, b, Lc, [tokenizer.sop_token_id, *span], m, len(ids))
        if targets is not None:
            batch["labels"][b, Lc:Lc + len(span) + 1] = torch.tensor([*span, tokenizer.eop_token_id])
    return batch


def generation_inputs_from_text(tokenizer, contexts, targets=None, max_length=256, max_target_length=64,
                                max_positions=GLMConfig.max_sequence_length):
    """`build_generation_inputs` from B context strings and B target strings or None."""
    return build_generation_inputs(
        tokenizer, [encode_context(tokenizer, context) for context in contexts],
        None if targets is None else [encode_target(tokenizer, target) for target in targets],
        max_length, max_target_length, max_positions)


def sample_spans(num_tokens, mask_ratio, poisson_lambda, rng):
    """Blank-infilling spans (start, end) of a text of `num_tokens` tokens in Part B order (paper, section 2.1):
    lengths ~ Poisson(`poisson_lambda`) given >= 1 (THUDM/GLM's `block_length_distribution`), the last cut so
    that round(mask_ratio * num_tokens) tokens (1 .. num_tokens - 1) are covered; placed uniformly without
    overlap by the numpy Generator `rng`, shuffled. Raises ValueError below 2 tokens."""
    if num_tokens < 2:
        raise ValueError(f"A text of {num_tokens} token(s) cannot have a blank and a context")
    budget = min(max(1, round(mask_ratio * num_tokens)), num_tokens - 1)
    lengths = []
    while sum(lengths) < budget:
        draw = 0
        while draw == 0:
            draw = int(rng.poisson(poisson_lambda))
        lengths.append(min(draw, budget - sum(lengths)))
    # Choosing k slots among (unmasked tokens + k) and reading each slot as "a span starts after
    # this many unmasked tokens" places k spans uniformly without overlap.
    k, unmasked = len(lengths), num_tokens - budget
    slots = sorted(rng.choice(unmasked + k, size=k, replace=False).tolist())
    spans, covered = [], 0
    for i, (slot, length) in enumerate(zip(slots, lengths)):
        start = slot - i + covered
        spans.append((start, start + length))
        covered += length
    return [spans[i] for i in rng.permutation(k)]


def max_infilling_text_length(max_length, mask_ratio):
    """The most text tokens n that fit `max_length` once blanked: `<s> A </s>`, sop and eop per span (at most
    round(mask_ratio * n) spans)."""
    n = max_length - 2
    while n > 2 and n + 2 + 2 * max(1, round(mask_ratio * n)) > max_length:
        n -= 1
    return n


def build_blank_infilling_inputs(tokenizer, texts, spans):
    """GLM's pretraining inputs: autoregressive blank infilling (paper, section 2.1, Figure 1).

    texts: B lists of ids (no specials); spans: per text (start, end) ranges in Part B order (`sample_spans`).
    Figure 1, text x1..x6, spans [x5 x6] then [x3]:

        input_ids        <s> x1 x2 [M] x4 [M] </s> | sop x5 x6  | sop x3
        position_ids[0]   0  1  2   3  4   5   6   |  5   5  5  |  3   3
        position_ids[1]   0  0  0   0  0   0   0   |  1   2  3  |  1   2
        labels           -100 ...                  |  x5  x6 eop|  x3 eop

    Part A sees Part A; a Part B token also every Part B token before it: GLM's separator mask,
    `attention_mask` [B] = each Part A's length (`modeling_glm.expand_attention_mask`); padding trails.
    Returns input_ids [B, S], position_ids [B, 2, S], attention_mask [B] (long), labels [B, S] (-100 on
    Part A and padding). Raises ValueError when a span is empty, overlaps another or leaves its text.
    """
    input_ids, position_ids, labels, part_a_lengths = [], [], [], []
    for ids, example_spans in zip(texts, spans):
        ids, covered = list(ids), sorted(example_spans)
        for (start, end), (next_start, _) in zip(covered, covered[1:] + [(len(ids), None)]):
            if not 0 <= start < end <= next_start:
                raise ValueError(f"Spans {covered} must be non-empty, apart and inside the {len(ids)} tokens")
        part_a, mask_index, cursor = [tokenizer.cls_token_id], {}, 0
        for start, end in covered:
            part_a += ids[cursor:start]
            mask_index[start] = len(part_a)
            part_a.append(tokenizer.mask_token_id)
            cursor = end
        part_a += [*ids[cursor:], tokenizer.eos_token_id]
        row_ids, row_labels, positions = list(part_a), [-100] * len(part_a), [(i, 0) for i in range(len(part_a))]
        for start, end in example_spans:
            span = ids[start:end]
            row_ids += [tokenizer.sop_token_id, *span]
            row_labels += [*span, tokenizer.eop_token_id]
            positions += [(mask_index[start], j) for j in range(1, len(span) + 2)]
        input_ids.append(torch.tensor(row_ids))
        position_ids.append(torch.tensor(positions))
        labels.append(torch.tensor(row_labels))
        part_a_lengths.append(len(part_a))
    return {"input_ids": pad_sequence(input_ids, batch_first=True, padding_value=tokenizer.pad_token_id),
            "position_ids": pad_sequence(position_ids, batch_first=True).transpose(1, 2).contiguous(),  # [B, 2, S]
            "attention_mask": torch.tensor(part_a_lengths),
            "labels": pad_sequence(labels, batch_first=True, padding_value=-100)}


def generation_kwargs(batch):
    """`generate`'s inputs, each [B, S], of an inference `build_generation_inputs` batch (Figure 2b rebuilt)."""
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"][:, 0],
            "block_position_ids": batch["position_ids"][:, 1],
            "attention_mask": batch["attention_mask"][:, 0].any(dim=1)}


class SpanNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """transformers' `NoRepeatNGramLogitsProcessor` on the span after `prompt_length`: the context may be copied."""

    def __init__(self, ngram_size: int, prompt_length: int):
        self.ban, self.prompt_length = NoRepeatNGramLogitsProcessor(ngram_size), prompt_length

    def __call__(self, input_ids, scores):
        return self.ban(input_ids[:, self.prompt_length:], scores)


def generate_spans(model, batch, generation_config, no_repeat_ngram_size=0):
    """B * num_return_sequences spans (id lists cut at eop, `generation_config`'s eos) of an inference
    `build_generation_inputs` batch; `no_repeat_ngram_size` > 0 bans the span's repeated n-grams."""
    inputs = generation_kwargs(batch)
    S = inputs["input_ids"].shape[1]
    processors = LogitsProcessorList(
        [SpanNoRepeatNGramLogitsProcessor(no_repeat_ngram_size, S)] if no_repeat_ngram_size > 0 else [])
    sequences = model.generate(**inputs, generation_config=generation_config, logits_processor=processors)
    eop = generation_config.eos_token_id
    return [row[:row.index(eop)] if eop in row else row for row in sequences[:, S:].tolist()]


# The levers' scoring (run_cls --calibrate, --num_demonstrations, --search_verbalizers).


def score_contexts(model, tokenizer, contexts, choices, max_length, prefix_space, choice_eop):
    """Choice scores [len(contexts), C] of text contexts that share `choices`, in one batch, no gradient."""
    spans = encode_choices(tokenizer, choices, prefix_space, choice_eop)
    batch = build_multiple_choice_inputs(tokenizer, [encode_context(tokenizer, c) for c in contexts],
                                         [spans] * len(contexts), max_length)
    device = next(model.parameters()).device
    with torch.inference_mode():
        return score_choices(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()


def with_demonstrations(context_ids, demonstrations, max_length):
    """`<s> input [MASK] </s>` -> `<s> input [MASK] d1 d2 ... </s>` (LM-BFF's layout; answers as plain text).
    Demonstrations (id lists) are left out from the last while the result would pass max_length, so they go
    before any of the input (which the builder cuts around its [MASK])."""
    ids, room = context_ids[:-1], max_length - len(context_ids)
    for demo in demonstrations:
        if len(demo) > room:
            break
        ids, room = ids + demo, room - len(demo)
    return ids + context_ids[-1:]


def mask_log_probs(model, tokenizer, contexts, max_length, batch_size):
    """Yields per batch of `encode_context` ids [b, V] log-probabilities of the [MASK] span's first token."""
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
    """[C, n] candidate label words, best first: per class, of the `allowed` (bool [V]) words likeliest for
    it in `class_means` ([C, V] mean log-probability at [MASK] over each class's training examples), the n of
    highest mean (LM-BFF, Gao et al. 2021 section 5.2). Raises UsageError when a class has fewer than n."""
    own = class_means.argmax(0)
    candidates = []
    for c in range(class_means.shape[0]):
        usable = allowed & (own == c)
        if int(usable.sum()) < n:
            raise UsageError(f"--search_verbalizers {n}: class {c} has only {int(usable.sum())} candidate words")
        candidates.append(class_means[c].masked_fill(~usable, float("-inf")).topk(n).indices)
    return torch.stack(candidates)


def best_combination(log_probs, labels):
    """The combination of one candidate per class that classifies best: (C candidate positions, accuracy,
    n^C). log_probs [N, C, n] at [MASK] of candidate j of class c on example i; labels [N]. Ties go to the
    first in itertools.product order (better-ranked words)."""
    N, C, n = log_probs.shape
    combinations = torch.tensor(list(itertools.product(range(n), repeat=C)))  # [M, C]
    chosen = log_probs[:, torch.arange(C), combinations]  # [N, M, C]
    accuracy = (chosen.argmax(-1) == labels[:, None]).float().mean(0)  # [M]
    best = int(accuracy.argmax())
    return tuple(combinations[best].tolist()), float(accuracy[best]), len(combinations)


def search_label_words(model, tokenizer, examples, n, max_length, batch_size, prefix_space):
    """LM-BFF's label-word search with the untrained model: candidates from `examples["train"]`, the best
    combination on `examples["validation"]` ("context_ids", "label"). Returns "words", "ids", "candidates" (per
    class, n words), "validation_accuracy", "combinations". UsageError without both splits or enough words."""
    if not {"train", "validation"} <= set(examples):
        raise UsageError("--search_verbalizers needs train and validation examples")
    train = examples["train"]
    C = len(train[0]["choices"])
    labels = torch.tensor([e["label"] for e in train])
    sums = 0
    train_batches = mask_log_probs(model, tokenizer, [e["context_ids"] for e in train], max_length, batch_size)
    for start, batch in zip(range(0, len(train), batch_size), train_batches):
        sums = sums + torch.zeros(C, batch.shape[1]).index_add(0, labels[start:start + len(batch)], batch)
    class_means = sums / torch.bincount(labels, minlength=C).clamp(min=1)[:, None]
    # Whole words of letters in the form choices are encoded with; embedding rows past the tokenizer: no word.
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words = [t.startswith("Ġ") and t[1:].isalpha() if prefix_space else t.isalpha() for t in tokens]
    V = class_means.shape[1]
    allowed = torch.tensor((words + [False] * (V - len(words)))[:V])
    candidates = label_word_candidates(class_means, allowed, n)  # [C, n]
    validation = examples["validation"]
    log_probs = torch.cat([batch[:, candidates] for batch in mask_log_probs(
        model, tokenizer, [e["context_ids"] for e in validation], max_length, batch_size)])  # [N, C, n]
    chosen, accuracy, count = best_combination(log_probs, torch.tensor([e["label"] for e in validation]))
    ids = [int(candidates[c, j]) for c, j in enumerate(chosen)]
    return {"words": [tokenizer.decode([i]).strip() for i in ids], "ids": ids,
            "candidates": [[tokenizer.decode([int(i)]).strip() for i in row] for row in candidates],
            "validation_accuracy": accuracy, "combinations": count}
