"""GLM's pretraining layout (paper, Figure 1): the builder against hand-worked tensors, span statistics."""

import pytest
import torch

from glm_utils import build_blank_infilling_inputs, sample_spans
from modeling_glm import GLMConfig, GLMForConditionalGeneration, expand_attention_mask
from test_glm_utils import EOP, SOP, WordTokenizer

MASK, PAD = WordTokenizer.mask_token_id, WordTokenizer.pad_token_id


def test_figure_1_layout_written_out():
    # x1..x6 = a b c x y z; spans [x5 x6] then [x3], in that (shuffled) order.
    a, b, c, x, y, z = range(6, 12)
    batch = build_blank_infilling_inputs(WordTokenizer(), [[a, b, c, x, y, z]], spans=[[(4, 6), (2, 3)]])
    #                                <s> x1 x2 [M]  x4 [M]  </s> | sop x5 x6 | sop x3
    assert batch["input_ids"].tolist() == [[0, a, b, MASK, x, MASK, 2, SOP, y, z, SOP, c]]
    assert batch["position_ids"][0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 5, 5, 3, 3]
    assert batch["position_ids"][0, 1].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    assert batch["labels"].tolist() == [[-100] * 7 + [y, z, EOP, c, EOP]]
    A = [1] * 7 + [0] * 5  # Part A rows see Part A only
    expected = [A] * 7 + [[1] * 7 + [1] * (i + 1) + [0] * (4 - i) for i in range(5)]
    full = expand_attention_mask(batch["attention_mask"], 1, 12, 12, "cpu")
    assert full[0, 0].int().tolist() == expected


def test_padding_is_invisible_to_every_real_token():
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(GLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4,
                                                  vocab_size=16, max_sequence_length=32)).eval()
    texts, spans = [[6, 7, 8, 9, 10, 11, 12, 13], [6, 7, 8]], [[(5, 7), (1, 2)], [(1, 2)]]
    batch = build_blank_infilling_inputs(WordTokenizer(), texts, spans=spans)
    short = build_blank_infilling_inputs(WordTokenizer(), texts[1:], spans=spans[1:])
    n = short["input_ids"].shape[1]
    assert batch["input_ids"][1, n:].eq(PAD).all() and batch["labels"][1, n:].eq(-100).all()
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
        alone = model(short["input_ids"], short["position_ids"], short["attention_mask"], labels=short["labels"])
    torch.testing.assert_close(padded.logits[1, :n], alone.logits[0])


def test_spans_cover_the_ratio_exactly_with_poisson_lengths_placed_uniformly():
    generator = torch.Generator().manual_seed(0)
    lengths, middle_token_masked = [], 0
    for _ in range(500):
        spans = sample_spans(4000, 0.15, 3.0, generator)
        covered = sorted(spans)
        assert sum(end - start for start, end in spans) == 600
        assert all(end <= next_start for (_, end), (next_start, _) in zip(covered, covered[1:]))
        assert spans != covered  # Part B order is shuffled
        lengths += [end - start for start, end in spans]
        middle_token_masked += any(start <= 2000 < end for start, end in spans)
    # Poisson(3) conditioned on >= 1 has mean 3 / (1 - e^-3) = 3.157 (one cut span in ~190 barely moves it).
    assert sum(lengths) / len(lengths) == pytest.approx(3.157, abs=0.05)
    assert middle_token_masked / 500 == pytest.approx(0.15, abs=0.05)  # uniform placement


def test_the_same_seed_gives_the_same_batch_and_a_long_text_is_cut_to_fit():
    texts = [list(range(6, 14)) * 100]
    one = build_blank_infilling_inputs(WordTokenizer(), texts, max_length=128, generator=torch.Generator().manual_seed(3))
    two = build_blank_infilling_inputs(WordTokenizer(), texts, max_length=128, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one["input_ids"], two["input_ids"]) and one["input_ids"].shape[1] <= 128
    masked = (one["labels"] != -100).sum() - (one["labels"] == EOP).sum()
    part_a_text = one["attention_mask"][0] - 2 - (one["input_ids"][0] == MASK).sum()
    assert masked / (masked + part_a_text) == pytest.approx(0.15, abs=0.01)


def test_overlapping_or_outside_spans_are_refused():
    with pytest.raises(ValueError, match="must be non-empty, apart and inside"):
        build_blank_infilling_inputs(WordTokenizer(), [[6, 7, 8, 9]], spans=[[(0, 2), (1, 3)]])
    with pytest.raises(ValueError, match="must be non-empty, apart and inside"):
        build_blank_infilling_inputs(WordTokenizer(), [[6, 7, 8, 9]], spans=[[(3, 5)]])
