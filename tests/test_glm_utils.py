"""The GLM model, tokenizer (tokenization_glm.py) and input builders (glm_utils.py), checked against hand-worked tensors
and against independent computations (packed vs one-by-one, padded vs alone, cached vs recomputed)."""

import json
import pickle
from pathlib import Path

import pytest
import torch

import glm_peft
import glm_utils
from modeling_glm import GLMConfig, GLMForConditionalGeneration
from glm_utils import (
    build_generation_inputs,
    build_multiple_choice_inputs,
    encode_choices,
    SpanNoRepeatNGramLogitsProcessor,
    generate_spans,
    generation_inputs_from_text,
    multiple_choice_inputs_from_text,
    score_choices,
    truncate_around,
)
from modeling_glm import UsageError, expand_attention_mask
from transformers import GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from tokenization_glm import load_or_train_tokenizer, load_tokenizer, train_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_TOKENIZER = SHARED / "tokenizers" / "glm-roberta-large"


class WordTokenizer:
    """A whitespace tokenizer with hand-known ids, so expected tensors can be written out."""

    words = ["<s>", "<pad>", "</s>", "[MASK]", "<sop>", "<eop>", "a", "b", "c", "x", "y", "z", "w", "v"]
    cls_token_id, pad_token_id, eos_token_id, mask_token_id, sop_token_id, eop_token_id = 0, 2, 2, 3, 4, 5

    def __call__(self, text, add_special_tokens=True):
        ids = [self.words.index(w) for w in text.split()]
        return {"input_ids": [0, *ids, 2] if add_special_tokens else ids}

    def __len__(self):
        return len(self.words)


A, B_, C_, X, Y, Z, W, V = range(6, 14)
SOP, EOP, M, PAD = 4, 5, 3, 2


@pytest.fixture
def tok():
    return WordTokenizer()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GLMForConditionalGeneration(GLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4,
                                                 vocab_size=16, max_sequence_length=64)).eval()


def test_multiple_choice_inputs_hand_worked(tok):
    """Token ids in, the Figure 2a layout out: "a [MASK] b" with the spans "x y" and "z" (no eop),
    "[MASK] c" with the span "w"."""
    batch = build_multiple_choice_inputs(tok, [[0, A, M, B_, 2], [0, M, C_, 2]], [[[X, Y], [Z]], [[W]]],
                                         max_length=32)
    assert batch["input_ids"].tolist() == [[0, A, M, B_, 2, SOP, X, SOP],
                                           [0, M, C_, 2, SOP, PAD, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[[0, 1, 2, 3, 4, 2, 2, 2], [0, 0, 0, 0, 0, 1, 2, 1]],
                                              [[0, 1, 2, 3, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0]]]
    assert batch["target_ids"].tolist() == [[-100] * 5 + [X, Y, Z], [-100] * 4 + [W, -100, -100, -100]]
    assert batch["choice_index"].tolist() == [[-1] * 5 + [0, 0, 1], [-1] * 4 + [0, -1, -1, -1]]
    assert batch["choice_mask"].tolist() == [[True, True], [True, False]]
    expected_first = [  # rows: queries, columns: keys
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],  # sop of "x y": context + itself
        [1, 1, 1, 1, 1, 1, 1, 0],  # x: context + its block so far
        [1, 1, 1, 1, 1, 0, 0, 1],  # sop of "z": never sees the other choice
    ]
    expected_second = [
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [0] * 8, [0] * 8, [0] * 8,  # padding sees nothing and is seen by nobody
    ]
    assert batch["attention_mask"][:, 0].int().tolist() == [expected_first, expected_second]


def test_choices_get_eop_by_glms_rule_or_when_forced(tok):
    """GLM's rule (choice_eop=None): an example with a two-token choice closes each of its choices
    with eop; one with one-token choices only gets none; True / False force it."""
    assert encode_choices(tok, ["x y", "z"]) == [[X, Y, EOP], [Z, EOP]]
    assert encode_choices(tok, ["w", "v"]) == [[W], [V]]
    assert encode_choices(tok, ["w", "v"], choice_eop=True) == [[W, EOP], [V, EOP]]
    assert encode_choices(tok, ["x y", "z"], choice_eop=False) == [[X, Y], [Z]]


def test_multiple_choice_inputs_with_eop_hand_worked(tok):
    """Spans closed by eop ("x y eop", "z eop") score it; those without ("w", "v") do not."""
    batch = build_multiple_choice_inputs(tok, [[0, A, M, B_, 2], [0, M, C_, 2]], [[[X, Y, EOP], [Z, EOP]], [[W], [V]]],
                                         max_length=32)
    assert batch["input_ids"].tolist() == [[0, A, M, B_, 2, SOP, X, Y, SOP, Z],
                                           [0, M, C_, 2, SOP, SOP, PAD, PAD, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[[0, 1, 2, 3, 4, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]],
                                              [[0, 1, 2, 3, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]]]
    assert batch["target_ids"].tolist() == [[-100] * 5 + [X, Y, EOP, Z, EOP], [-100] * 4 + [W, V] + [-100] * 4]
    assert batch["choice_index"].tolist() == [[-1] * 5 + [0, 0, 0, 1, 1], [-1] * 4 + [0, 1] + [-1] * 4]
    assert batch["attention_mask"][0, 0].int().tolist() == [
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # sop of "x y eop"
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # x
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # y: predicts eop
        [1, 1, 1, 1, 1, 0, 0, 0, 1, 0],  # sop of "z eop": never sees the other choice
        [1, 1, 1, 1, 1, 0, 0, 0, 1, 1],  # z: predicts eop
    ]


@pytest.mark.parametrize("choice_eop", [None, True, False])
def test_multiple_choice_inputs_from_text_equal_the_token_id_path(tok, choice_eop):
    contexts, choices = ["a [MASK] b", "[MASK] c"], [["x y", "z"], ["w", "v"]]
    context_ids = [[0, A, M, B_, 2], [0, M, C_, 2]]
    spans = [encode_choices(tok, example_choices, choice_eop=choice_eop) for example_choices in choices]
    from_text = multiple_choice_inputs_from_text(tok, contexts, choices, max_length=8, choice_eop=choice_eop)
    from_ids = build_multiple_choice_inputs(tok, context_ids, spans, max_length=8)
    assert from_text.keys() == from_ids.keys()
    for key in from_ids:
        assert torch.equal(from_text[key], from_ids[key]), key


def test_score_with_eop_equals_one_forward_per_choice(tok, model):
    """score(choice) with eop = sum of log p of its tokens and eop, each choice run alone in its own
    forward pass with the separator mask (context bidirectional, then causal): no builder involved."""
    context, choices = "a b [MASK] c", ["x y", "z", "w v x"]
    packed = score_choices(model, multiple_choice_inputs_from_text(tok, [context], [choices]))
    context_ids = [0, A, B_, M, C_, 2]
    for c, choice in enumerate(choices):
        tokens = [tok.words.index(w) for w in choice.split()] + [EOP]
        ids = torch.tensor([context_ids + [SOP] + tokens[:-1]])
        L, n = len(context_ids), len(tokens)
        position_ids = torch.tensor([[list(range(L)) + [3] * n, [0] * L + list(range(1, n + 1))]])
        logp = model(ids, position_ids, torch.tensor([L])).logits[0].log_softmax(-1)
        expected = sum(logp[L + t, token] for t, token in enumerate(tokens))
        torch.testing.assert_close(packed[0, c], expected, atol=1e-5, rtol=0)


def test_generation_inputs_hand_worked(tok):
    """Token ids in, the Figure 2b layout out: "a b [MASK]" with the target "x y", "[MASK]" with "z"."""
    batch = build_generation_inputs(tok, [[0, A, B_, M, 2], [0, M, 2]], [[X, Y], [Z]], max_length=32,
                                    max_target_length=8)
    assert batch["input_ids"].tolist() == [[0, A, B_, M, 2, SOP, X, Y], [0, M, 2, PAD, PAD, SOP, Z, PAD]]
    assert batch["labels"].tolist() == [[-100] * 5 + [X, Y, EOP], [-100] * 5 + [Z, EOP, -100]]
    assert batch["position_ids"].tolist() == [[[0, 1, 2, 3, 4, 3, 3, 3], [0, 0, 0, 0, 0, 1, 2, 3]],
                                              [[0, 1, 2, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 2, 0]]]
    assert batch["attention_mask"][1, 0].int().tolist() == [
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [0] * 8,
        [0] * 8,
        [1, 1, 1, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 1, 1, 0],
        [0] * 8,
    ]
    inference = build_generation_inputs(tok, [[0, A, B_, M, 2]], max_length=32)
    assert inference["input_ids"].tolist() == [[0, A, B_, M, 2, SOP]]
    assert inference["position_ids"].tolist() == [[[0, 1, 2, 3, 4, 3], [0, 0, 0, 0, 0, 1]]]


@pytest.mark.parametrize("targets", [None, ["x y", "z"]])
def test_generation_inputs_from_text_equal_the_token_id_path(tok, targets):
    # WordTokenizer splits on spaces, so the target's leading space (encode_target) changes nothing here.
    target_ids = None if targets is None else [[X, Y], [Z]]
    from_text = generation_inputs_from_text(tok, ["a b [MASK] c", "[MASK]"], targets, max_length=5)
    from_ids = build_generation_inputs(tok, [[0, A, B_, M, C_, 2], [0, M, 2]], target_ids, max_length=5)
    assert from_text.keys() == from_ids.keys()
    for key in from_ids:
        assert torch.equal(from_text[key], from_ids[key]), key


def test_long_target_is_cut(tok):
    batch = build_generation_inputs(tok, [[0, M, 2], [0, M, 2]], [[X, Y, Z, W], [X]], max_target_length=2)
    assert batch["labels"].tolist() == [[-100] * 3 + [X, Y, EOP], [-100] * 3 + [X, EOP, -100]]


def test_builders_refuse_lengths_past_the_position_table(tok):
    with pytest.raises(ValueError, match="max_length 65 is longer than the 64 positions of the model; use at most 64"):
        multiple_choice_inputs_from_text(tok, ["a [MASK]"], [["x"]], max_length=65, max_positions=64)
    with pytest.raises(ValueError, match="max_length 513 is longer than the 512 positions"):
        generation_inputs_from_text(tok, ["a [MASK]"], max_length=513)
    with pytest.raises(ValueError, match="max_target_length 64 gives block positions up to 65, past the 64 positions "
                                         "of the model; use at most 63"):
        generation_inputs_from_text(tok, ["a [MASK]"], ["x"], max_length=64, max_target_length=64, max_positions=64)


def test_lengths_at_the_limit_stay_inside_the_table(tok, model):
    """A context cut to exactly max_sequence_length (64 here) and a target of max_target_length =
    63 tokens run through the model: every position id is a row of its tables."""
    long = [A] * 100
    cloze = build_multiple_choice_inputs(tok, [[0, *long, M, *long, 2]], [[[X, Y, EOP]]], max_length=64,
                                         max_positions=64)
    assert cloze["input_ids"].shape[1] == 64 and cloze["position_ids"].max() == 60  # 61 context + "x y eop"
    score_choices(model, cloze)
    gen = build_generation_inputs(tok, [[0, *long, M, 2]], [[X] * 70], max_length=64, max_target_length=63,
                                  max_positions=64)
    assert gen["position_ids"][:, 0].max() == 63 and gen["position_ids"][:, 1].max() == 64
    model(gen["input_ids"], gen["position_ids"], gen["attention_mask"], labels=gen["labels"])


def test_truncation_cuts_around_the_mask():
    ids, m = truncate_around([0, A, B_, C_, M, X, 2], 4, 5, max_length=5)
    assert ids == [0, C_, M, X, 2] and m == 2  # the longer left side lost its far end
    ids, m = truncate_around([0, A, M, X, Y, Z, W, 2], 2, 3, max_length=6)
    assert ids == [0, A, M, X, Y, 2] and m == 2
    ids, m = truncate_around([0, A, B_, C_, X, Y, Z, M, 2], 7, 8, max_length=3)
    assert ids == [0, M, 2] and m == 1


@pytest.mark.parametrize("context", ["a b c", "a [MASK] b [MASK]"])
def test_context_needs_exactly_one_mask(tok, context):
    with pytest.raises(ValueError, match="exactly one \\[MASK\\], found [02] in: 'a"):
        multiple_choice_inputs_from_text(tok, [context], [["x"]])


@pytest.mark.parametrize("choice_eop", [True, False])
def test_packed_scores_equal_one_forward_per_choice(tok, model, choice_eop):
    contexts, choices = ["a b [MASK] c", "[MASK] a"], [["x y", "z", "w v x"], ["y", "v w"]]
    packed = score_choices(model, multiple_choice_inputs_from_text(tok, contexts, choices, choice_eop=choice_eop))
    for b, (context, example_choices) in enumerate(zip(contexts, choices)):
        for c, choice in enumerate(example_choices):
            alone = multiple_choice_inputs_from_text(tok, [context], [[choice]], choice_eop=choice_eop)
            alone = score_choices(model, alone)
            torch.testing.assert_close(packed[b, c], alone[0, 0], atol=1e-5, rtol=0)
    assert packed[1, 2] == float("-inf")


def test_score_is_the_sum_of_token_log_probs(tok, model):
    batch = multiple_choice_inputs_from_text(tok, ["a [MASK]"], [["x y"]], choice_eop=False)
    logits = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"]).logits.log_softmax(-1)
    # <s> a [MASK] </s> sop x: "x y" is read at 4 (sop, predicts x) and 5 (x, predicts y)
    expected = logits[0, 4, X] + logits[0, 5, Y]
    torch.testing.assert_close(score_choices(model, batch)[0, 0], expected)
    torch.testing.assert_close(score_choices(model, batch, length_normalize=True)[0, 0], expected / 2)


def test_padded_batch_equals_each_example_alone(tok, model):
    contexts, targets = ["a b c [MASK]", "[MASK]", "x [MASK] y"], ["x", "y z w", "v"]
    batch = generation_inputs_from_text(tok, contexts, targets)
    logits = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"]).logits
    for b in range(len(contexts)):
        alone = generation_inputs_from_text(tok, [contexts[b]], [targets[b]])
        alone_logits = model(alone["input_ids"], alone["position_ids"], alone["attention_mask"]).logits[0]
        keep, keep_alone = batch["labels"][b] != -100, alone["labels"][0] != -100
        torch.testing.assert_close(logits[b][keep], alone_logits[keep_alone], atol=1e-5, rtol=0)


def test_loss_is_cross_entropy_on_labelled_positions(tok, model):
    batch = generation_inputs_from_text(tok, ["a [MASK]", "b c [MASK]"], ["x y", "z"])
    out = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    keep = batch["labels"] != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], batch["labels"][keep])
    torch.testing.assert_close(out.loss, expected)
    picked = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"],
                   logits_positions=keep)
    torch.testing.assert_close(picked.loss, expected)
    torch.testing.assert_close(picked.logits, out.logits[keep])


def test_separator_and_key_padding_masks_match_the_full_mask(model):
    torch.manual_seed(1)
    ids, pos = torch.randint(6, 16, (2, 6)), torch.stack([torch.arange(6), torch.zeros(6, dtype=torch.long)])[None]
    pos = pos.expand(2, -1, -1)
    sep = torch.tensor([3, 5])
    i = torch.arange(6)
    full = ((i[None, None, :] < sep[:, None, None]) | (i[None, :] <= i[:, None])[None])[:, None].int()
    torch.testing.assert_close(model(ids, pos, sep).logits, model(ids, pos, full).logits)
    keys = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(model(ids, pos, keys).logits,
                               model(ids, pos, keys[:, None, None, :].expand(-1, 1, 6, -1)).logits)


def span_config(**kwargs):
    """A GenerationConfig that writes spans of the WordTokenizer (eop ends them)."""
    return GenerationConfig(eos_token_id=EOP, pad_token_id=PAD, do_sample=False, **kwargs)


def recompute_greedy(model, batch, max_new_tokens):
    """Greedy decoding written out, without a cache: each step runs the whole sequence with the
    inference mask grown by hand (the new token sees every real key), position = the mask index,
    block position + 1. Independent of `generate` and of `span_attention_mask`."""
    ids, pos, mask = batch["input_ids"], batch["position_ids"], batch["attention_mask"]
    keys = mask[:, 0].any(dim=1)
    spans, done = [[] for _ in range(len(ids))], [False] * len(ids)
    for _ in range(max_new_tokens):
        next_tokens = model(ids, pos, mask).logits[:, -1].argmax(-1)
        for row, token in enumerate(next_tokens.tolist()):
            done[row] = done[row] or token == EOP
            if not done[row]:
                spans[row].append(token)
        step = pos[:, :, -1:].clone()
        step[:, 1] += 1
        ids, pos = torch.cat([ids, next_tokens[:, None]], 1), torch.cat([pos, step], 2)
        keys = torch.nn.functional.pad(keys, (0, 1), value=True)
        mask = torch.nn.functional.pad(mask, (0, 1, 0, 1))
        mask[:, 0, -1] = keys
    return spans


GENERATION_CONTEXTS = ["a b c [MASK]", "[MASK]", "x [MASK] y z", "y x [MASK] a a b"]
# What the hand-written decoder of glm_utils (deleted with #29) returned on `varied_model` for
# GENERATION_CONTEXTS, 10 new tokens at most: (generate_spans kwargs, without prefix, with a P-tuning
# v2 prefix of 4). Both sides rank beams by sum log p / generated length ** length_penalty.
OLD_DECODER_OUTPUTS = [
    (dict(), [[7, 7, 7, 7, 7, 7, 6, 9, 14, 14], [15, 15, 15, 15, 15, 2, 15, 15, 15, 15], [7, 7, 2, 6, 6, 6, 7, 1, 6, 6],
              [7, 7, 7, 6, 6, 6, 14, 14, 11, 2]],
     [[2, 9, 6, 15, 15, 6, 9, 7, 7, 6], [8, 15, 9, 6, 1, 12, 9, 12, 1, 12], [7, 7, 2, 6, 6, 6, 2], [2]]),
    (dict(num_beams=4),
     [[15, 15, 14, 15, 15, 8, 15, 2, 1, 1], [15, 15, 15, 15, 15, 2, 15, 15, 15, 15], [7, 7, 2, 6, 8, 1, 2, 2, 2, 12],
      [7, 2, 6, 6, 6, 6, 14, 14, 11, 1]],
     [[2, 9, 6, 15, 11, 6, 15, 1, 15, 15], [2, 15, 14, 15, 15, 2, 15, 15, 15, 15], [7, 7, 2, 6, 6, 8, 2, 1, 6, 6],
      [7, 7, 6, 6, 6, 6, 14, 14, 14, 15]]),
    (dict(num_beams=4, length_penalty=0.6),
     [[15, 15, 14, 15, 15, 8, 15, 2, 1, 1], [15, 15, 15, 15, 15, 2, 15, 15, 15, 15], [7, 7, 2, 6, 8, 1, 2, 2, 2, 12],
      [7, 7, 6, 6]],
     [[2, 9, 6, 6], [2, 15, 14, 15, 15, 2, 15, 15, 15, 15], [7, 7, 2, 6, 6, 6, 2], [2]]),
    (dict(no_repeat_ngram_size=2, min_new_tokens=3),
     [[7, 7, 6, 15, 15, 8, 15, 1, 15, 9], [15, 15, 6, 15, 1, 14, 9, 2, 15, 3], [7, 7, 2, 6, 6, 7, 11], [7, 7, 6, 6]],
     [[2, 9, 6, 15, 15, 6, 9, 7, 7, 6], [8, 15, 9, 6, 1, 12, 9, 12, 1, 15], [7, 7, 2, 6, 6, 8, 2, 1, 6, 12],
      [2, 6, 6, 7, 7, 6, 14, 14, 11, 14]]),
    (dict(num_beams=4, no_repeat_ngram_size=2, min_new_tokens=2),
     [[15, 15, 14, 15, 1, 6, 15, 9, 14, 14], [7, 7, 6, 15, 15, 2, 15], [7, 7, 2, 6, 8, 1, 2, 14, 6, 6], [7, 7, 6, 6]],
     [[2, 9, 6, 15, 11, 6, 2, 1, 15, 15], [8, 15, 14, 15, 15, 2, 15, 3, 9, 9], [7, 7, 2, 6, 6, 8, 2, 1, 6, 12],
      [2, 6, 1, 1, 7, 2, 2, 12, 2, 14]]),
]


def varied_model(prefix):
    """The tiny model with larger weights (std 0.4), whose spans vary and often end; with `prefix` a
    P-tuning v2 prefix of 4 (glm_peft's initialisation, seed 0)."""
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(GLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=16,
                                                  max_sequence_length=64, initializer_range=0.4)).eval()
    return glm_peft.add_prefix_encoder(model, 4).eval() if prefix else model


@pytest.mark.parametrize("prefix", [False, True], ids=["no_prefix", "ptuning_v2"])
@pytest.mark.parametrize("case", range(len(OLD_DECODER_OUTPUTS)))
def test_generate_equals_the_old_decoder(tok, prefix, case):
    kwargs, *expected = OLD_DECODER_OUTPUTS[case]
    kwargs = dict(kwargs)
    ngram = kwargs.pop("no_repeat_ngram_size", 0)
    batch = generation_inputs_from_text(tok, GENERATION_CONTEXTS)  # padded: the contexts differ in length
    model = varied_model(prefix)
    for use_cache in (True, False):
        spans = generate_spans(model, batch, span_config(max_new_tokens=10, use_cache=use_cache, **kwargs), ngram)
        assert spans == expected[prefix]


@pytest.mark.parametrize("prefix", [False, True], ids=["no_prefix", "ptuning_v2"])
def test_cached_generate_equals_a_recompute_loop(tok, prefix):
    model = varied_model(prefix)
    batch = generation_inputs_from_text(tok, GENERATION_CONTEXTS)
    assert generate_spans(model, batch, span_config(max_new_tokens=10)) == recompute_greedy(model, batch, 10)


def test_batched_generation_equals_one_by_one(tok, model):
    contexts = ["a b c [MASK]", "[MASK]", "x [MASK] y z"]
    for beams in (1, 3):
        config = span_config(max_new_tokens=7, num_beams=beams)
        together = generate_spans(model, generation_inputs_from_text(tok, contexts), config, no_repeat_ngram_size=2)
        assert together == [generate_spans(model, generation_inputs_from_text(tok, [c]), config, 2)[0]
                            for c in contexts]


def test_span_ngram_ban_ignores_the_context():
    # Context "x y" then the span "x y z x": the span's bigram (x, y) bans y after x; the
    # context's own (x, y) alone bans nothing, so a span may copy context words.
    ban = SpanNoRepeatNGramLogitsProcessor(2, prompt_length=2)
    scores = ban(torch.tensor([[X, Y, X, Y, Z, X]]), torch.zeros(1, 16))
    assert (scores[0] == float("-inf")).nonzero().flatten().tolist() == [Y]
    assert ban(torch.tensor([[X, Y, X]]), torch.zeros(1, 16)).isfinite().all()


class BigramModel(GLMForConditionalGeneration):
    """Next-token log-probs that depend on the last token only, from a hand-written table."""

    def __init__(self, table):
        super().__init__(GLMConfig(num_layers=1, hidden_size=8, num_attention_heads=1, vocab_size=16))
        self.table = table

    def forward(self, input_ids, position_ids=None, attention_mask=None, cache=None, use_cache=None, **kwargs):
        return CausalLMOutputWithPast(logits=self.table[input_ids], cache=cache)  # the cache stays empty


def test_beam_search_finds_what_greedy_misses(tok):
    # After sop: x 0.6, y 0.4. After x: four tokens at 0.25 (then eop). After y: z 0.9 (then eop).
    # Greedy takes x (0.6 * 0.25 = 0.15); beam search finds y z (0.4 * 0.9 = 0.36).
    table = torch.full((16, 16), 1e-9)
    table[SOP, X], table[SOP, Y] = 0.6, 0.4
    table[X, [A, B_, C_, W]] = 0.25
    table[Y, Z], table[Y, W] = 0.9, 0.1
    table[[A, B_, C_, W, Z], EOP] = 1.0
    model = BigramModel(table.log())
    batch = generation_inputs_from_text(tok, ["a [MASK]"])
    assert generate_spans(model, batch, span_config(max_new_tokens=5)) == [[X, A]]
    assert generate_spans(model, batch, span_config(max_new_tokens=5, num_beams=2, length_penalty=0.0)) == [[Y, Z]]


def test_checkpoint_round_trip(tmp_path, model):
    ids = torch.tensor([[0, 6, 3, 7, 2, 4, 9]])
    pos = torch.tensor([[[0, 1, 2, 3, 4, 2, 2], [0, 0, 0, 0, 0, 1, 2]]])
    expected = model(ids, pos, torch.tensor([5])).logits
    released = {k[len("glm."):]: v for k, v in model.state_dict().items()}
    for name, state in [("no_prefix", released), ("glm_prefix", model.state_dict())]:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text(
            '{"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 16, '
            '"max_sequence_length": 64, "model_type": "glm", "auto_map": {"AutoModel": "GLMModel"}}')
        torch.save(state, directory / "pytorch_model.bin")
        loaded = GLMForConditionalGeneration.from_pretrained(str(directory)).eval()
        torch.testing.assert_close(loaded(ids, pos, torch.tensor([5])).logits, expected)
    model.save_pretrained(tmp_path / "saved")
    reloaded = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "saved")).eval()
    torch.testing.assert_close(reloaded(ids, pos, torch.tensor([5])).logits, expected, atol=0, rtol=0)


def test_checkpoint_with_wrong_keys_is_reported(tmp_path, model):
    state = model.state_dict()
    state["glm.extra.weight"] = state.pop("glm.transformer.final_layernorm.bias")
    (tmp_path / "config.json").write_text('{"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, '
                                          '"vocab_size": 16, "max_sequence_length": 64}')
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing keys \\['glm.transformer.final_layernorm.bias'\\].*"
                                         "unexpected keys \\['glm.extra.weight'\\]"):
        GLMForConditionalGeneration.from_pretrained(str(tmp_path))


class RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_pickle_that_runs_code_is_refused(tmp_path, model):
    (tmp_path / "config.json").write_text('{"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, '
                                          '"vocab_size": 16, "max_sequence_length": 64}')
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"payload": RunsCode()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        GLMForConditionalGeneration.from_pretrained(str(tmp_path))


def test_hub_failure_names_the_local_flags(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="--model_name_or_path DIR.*--model_name_or_path glm-tiny"):
        GLMForConditionalGeneration.from_pretrained("BAAI/glm-roberta-large")


def test_full_size_config_has_355m_parameters():
    with torch.device("meta"):
        model = GLMForConditionalGeneration(GLMConfig())
    assert sum(p.numel() for p in model.parameters()) == 354_873_344  # ~355M, as published


def test_bf16_autocast_runs_close_to_fp32(tok, model):
    batch = multiple_choice_inputs_from_text(tok, ["a b [MASK] c"], [["x y", "z"]])
    fp32 = score_choices(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = score_choices(model, batch)
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)


def test_a_few_cloze_steps_learn(tok, model):
    model.train()
    batch = multiple_choice_inputs_from_text(tok, ["a [MASK]", "b [MASK]"], [["x", "y z"], ["x", "y z"]])
    labels = torch.tensor([1, 0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(score_choices(model, batch), labels)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    model.eval()
    assert score_choices(model, batch).argmax(-1).tolist() == [1, 0]


def test_trained_tokenizer_round_trip(tmp_path):
    texts = ["the food was great", "the service was slow", "great food and good service"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded("the food [MASK]")["input_ids"] == tokenizer("the food [MASK]")["input_ids"]
    ids = loaded("the food [MASK]")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(loaded.mask_token_id) == 1
    assert loaded.sop_token_id != loaded.eop_token_id and loaded.pad_token_id == 2


needs_real_tokenizer = pytest.mark.skipif(not REAL_TOKENIZER.exists(),
                                          reason="needs ../shared/tokenizers/glm-roberta-large")


@needs_real_tokenizer
def test_real_tokenizer_ids(caplog):
    with caplog.at_level("INFO", logger="tokenization_glm"):
        t = load_tokenizer(str(REAL_TOKENIZER))
    assert "[MASK] is id 50264" in caplog.text and "added_tokens.json's 50267" in caplog.text
    assert (t.cls_token_id, t.pad_token_id, t.eos_token_id) == (0, 2, 2)
    assert (t.sop_token_id, t.eop_token_id, t.mask_token_id) == (50265, 50266, 50264)
    assert len(t) == 50267
    assert t("Hello world")["input_ids"] == [0, 31414, 232, 2]
    for text in ["Hello [MASK] world", "Hello[MASK] world", "Hello  [MASK] world"]:
        assert t(text)["input_ids"] == [0, 31414, 50264, 232, 2]
    assert t("Hello [MASK]world")["input_ids"] == [0, 31414, 50264, 8331, 2]
    assert glm_utils.encode_choice(t, "good") == [205]            # "Ġgood", mid-sentence form
    assert glm_utils.encode_choice(t, "good", prefix_space=False) == [8396]


@needs_real_tokenizer
def test_mask_token_id_override_gives_the_hub_id(tmp_path):
    hub = load_tokenizer(str(REAL_TOKENIZER), mask_token_id=50267)
    assert (hub.sop_token_id, hub.eop_token_id, hub.mask_token_id, len(hub)) == (50265, 50266, 50267, 50268)
    assert hub("Hello [MASK] world")["input_ids"] == [0, 31414, 50267, 232, 2]
    assert load_tokenizer(str(REAL_TOKENIZER), mask_token_id=50264)("Hello [MASK] world")["input_ids"] == \
        [0, 31414, 50264, 232, 2]
    with pytest.raises(ValueError, match="--mask_token_id 50300: \\[MASK\\] can be 50264 .* or 50267"):
        load_tokenizer(str(REAL_TOKENIZER), mask_token_id=50300)
    # A run saves its tokenizer (tokenizer.json): reloaded, it keeps its ids and refuses another [MASK] id.
    hub.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))("Hello [MASK] world")["input_ids"] == [0, 31414, 50267, 232, 2]
    with pytest.raises(ValueError, match="saved tokenizer whose \\[MASK\\] is id 50267"):
        load_tokenizer(str(tmp_path), mask_token_id=50264)


@needs_real_tokenizer
def test_saved_real_tokenizer_keeps_50264(tmp_path):
    load_tokenizer(str(REAL_TOKENIZER)).save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert (loaded.mask_token_id, loaded.sop_token_id, loaded.eop_token_id, len(loaded)) == (50264, 50265, 50266, 50267)
    assert loaded("Hello [MASK] world")["input_ids"] == [0, 31414, 50264, 232, 2]


@needs_real_tokenizer
def test_added_tokens_that_disagree_on_sop_are_refused(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((REAL_TOKENIZER / name).read_bytes())
    (tmp_path / "added_tokens.json").write_text('{"<|startofpiece|>": 50266, "<|endofpiece|>": 50265, "[MASK]": 50267}')
    with pytest.raises(ValueError, match="<\\|startofpiece\\|> should have id 50266 but gets 50265"):
        load_tokenizer(str(tmp_path))


def test_mask_token_id_with_a_trained_tokenizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--mask_token_id .* trained by --tokenizer_name train has its own"):
        load_or_train_tokenizer("train", "glm-tiny", ["a b c"], tmp_path, mask_token_id=50264)


@needs_real_tokenizer
def test_generation_target_has_a_leading_space():
    """GLM's seq2seq data encodes a target as " " + text: the first label of "The cat" is " The" (20)."""
    t = load_tokenizer(str(REAL_TOKENIZER))
    batch = generation_inputs_from_text(t, ["Say it: [MASK]"], ["The cat"])
    labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labels == [20, 4758, t.eop_token_id] and t("The")["input_ids"][1] == 133
    assert t.decode(labels[:-1]) == " The cat"  # callers strip the decoded span


def test_mask_that_hides_nothing_becomes_no_mask(model):
    """An all-visible mask (a batch without padding, a decoding step) is dropped, which lets SDPA
    use its fastest kernel; a mask that hides something is kept."""
    expand = expand_attention_mask
    assert expand(torch.ones(2, 4, dtype=torch.long), 2, 4, 4, "cpu") is None
    assert expand(torch.ones(2, 1, 1, 6, dtype=torch.bool), 2, 1, 6, "cpu") is None
    assert expand(torch.tensor([4]), 1, 4, 4, "cpu") is None          # separator after every token
    assert expand(torch.tensor([[1, 1, 1, 0]]), 1, 4, 4, "cpu")[0, 0].int().tolist() == [[1, 1, 1, 0]] * 4
    ids = torch.tensor([[6, 7, 8, 9]])
    position_ids = torch.stack([torch.arange(4)[None], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(ids, position_ids, torch.ones(1, 4)).logits, model(ids, position_ids).logits)


def test_save_pretrained_round_trips_exactly_in_bf16(tmp_path, model):
    ids = torch.tensor([[0, 6, 3, 7, 2, 4, 9]])
    pos = torch.tensor([[[0, 1, 2, 3, 4, 2, 2], [0, 0, 0, 0, 0, 1, 2]]])
    bf16 = model.to(torch.bfloat16)
    bf16.save_pretrained(tmp_path)
    reloaded = GLMForConditionalGeneration.from_pretrained(str(tmp_path), dtype=torch.bfloat16).eval()
    assert reloaded.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(bf16.state_dict().values(), reloaded.state_dict().values()))
    assert torch.equal(reloaded(ids, pos, torch.tensor([5])).logits, bf16(ids, pos, torch.tensor([5])).logits)


def test_config_has_its_own_model_type_not_glm4s(tmp_path, model):
    # transformers 5 registers "glm" for GLM-4; the released config.json says "glm" all the same.
    import transformers

    assert GLMConfig.model_type != "glm" and transformers.AutoConfig.for_model("glm").__class__ is not GLMConfig
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == GLMConfig.model_type


@pytest.mark.parametrize("prefix", [False, True], ids=["full", "ptuning_v2"])
def test_gradient_checkpointing_keeps_loss_and_gradients(tok, prefix):
    batch = generation_inputs_from_text(tok, ["a b [MASK]", "x [MASK] y z"], ["x y", "z"])

    def loss_and_grads(checkpointing):
        model = varied_model(prefix).train()  # dropout on: checkpointing must replay the same masks
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.glm.transformer.layers)
        torch.manual_seed(1)
        loss = model(**batch).loss
        loss.backward()
        return loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (loss, grads), (checkpointed_loss, checkpointed_grads) = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(loss, checkpointed_loss) and grads.keys() == checkpointed_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)
