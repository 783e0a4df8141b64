"""GLM's pretraining layout (paper, Figure 1): the builder against hand-worked tensors, span statistics."""

import math
from pathlib import Path

import datasets
import numpy
import pytest
import torch
from safetensors.torch import load_file

import run_cls
import run_pretrain
from conftest import run_main
from glm_utils import build_blank_infilling_inputs, max_infilling_text_length, sample_spans
from modeling_glm import GLMConfig, GLMForConditionalGeneration, expand_attention_mask
from test_glm_utils import EOP, SOP, WordTokenizer
from tokenization_glm import load_tokenizer

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
    rng = numpy.random.default_rng(0)
    lengths, middle_token_masked = [], 0
    for _ in range(500):
        spans = sample_spans(4000, 0.15, 3.0, rng)
        covered = sorted(spans)
        assert sum(end - start for start, end in spans) == 600
        assert all(end <= next_start for (_, end), (next_start, _) in zip(covered, covered[1:]))
        assert spans != covered  # Part B order is shuffled
        lengths += [end - start for start, end in spans]
        middle_token_masked += any(start <= 2000 < end for start, end in spans)
    # Poisson(3) conditioned on >= 1 has mean 3 / (1 - e^-3) = 3.157 (one cut span in ~190 barely moves it).
    assert sum(lengths) / len(lengths) == pytest.approx(3.157, abs=0.05)
    assert middle_token_masked / 500 == pytest.approx(0.15, abs=0.05)  # uniform placement


def test_a_text_cut_to_the_longest_that_fits_fills_max_length_at_most():
    n = max_infilling_text_length(128, 0.15)
    assert n + 2 + 2 * round(0.15 * n) <= 128 < (n + 1) + 2 + 2 * round(0.15 * (n + 1))
    rng = numpy.random.default_rng(3)
    text = list(range(6, 14)) * 20
    spans = [sample_spans(n, 0.15, 3.0, rng)]
    batch = build_blank_infilling_inputs(WordTokenizer(), [text[:n]], spans)
    assert batch["input_ids"].shape[1] <= 128 and batch["position_ids"].max() < 128


def test_overlapping_or_outside_spans_are_refused():
    with pytest.raises(ValueError, match="must be non-empty, apart and inside"):
        build_blank_infilling_inputs(WordTokenizer(), [[6, 7, 8, 9]], spans=[[(0, 2), (1, 3)]])
    with pytest.raises(ValueError, match="must be non-empty, apart and inside"):
        build_blank_infilling_inputs(WordTokenizer(), [[6, 7, 8, 9]], spans=[[(3, 5)]])


TREC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trec"
needs_trec = pytest.mark.skipif(not (TREC / "train.csv").is_file(), reason="../shared/data/trec not present")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """glm-tiny pretrained for 30 steps on TREC questions (no labels); its folder and results.json."""
    out = tmp_path_factory.mktemp("pretrained")
    record = run_main(run_pretrain, [
        "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train", "--tokenizer_vocab_size", 2000,
        "--dataset_name", "trec", "--train_file", TREC / "train.csv", "--text_column", "text",
        "--max_train_samples", 1000, "--max_eval_samples", 100, "--learning_rate", 2e-3, "--max_train_steps", 30,
        "--eval_steps", 15, "--output_dir", out,
    ])
    return out, record


@needs_trec
def test_blank_infilling_loss_falls_on_trec_questions(pretrained):
    _, record = pretrained
    before, after = record["baselines"]["before_training"], record["validation"]
    assert after["loss"] < before["loss"] - 2.0  # random init starts at about ln(2000) = 7.6
    assert after["token_accuracy"] > 0.2 and after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    assert [e["step"] for e in record["epochs"]] == [15, 30]


@needs_trec
def test_a_resumed_pretraining_ends_like_the_uninterrupted_one_and_keeps_its_before_score(pretrained, tmp_path):
    _, fresh = pretrained
    args = ["--model_name_or_path", "glm-tiny", "--tokenizer_name", "train", "--tokenizer_vocab_size", 2000,
            "--dataset_name", "trec", "--train_file", TREC / "train.csv", "--text_column", "text",
            "--max_train_samples", 1000, "--max_eval_samples", 100, "--learning_rate", 2e-3, "--max_train_steps", 30,
            "--eval_steps", 15, "--output_dir", tmp_path, "--checkpointing_steps", 15]
    full = run_main(run_pretrain, args)
    (tmp_path / "results.json").unlink()  # as if the run had died after its step_15 checkpoint
    resumed = run_main(run_pretrain, [*args, "--resume_from_checkpoint", tmp_path / "step_15"])
    assert resumed["epochs"] == full["epochs"] and resumed["validation"] == full["validation"]
    # "Before training" scores the model as loaded (the untrained glm-tiny), not the checkpoint resumed from.
    assert resumed["baselines"] == full["baselines"] == fresh["baselines"]


@needs_trec
def test_the_saved_model_is_the_trained_one_and_run_cls_fine_tunes_it(pretrained, tmp_path):
    out, record = pretrained
    model = GLMForConditionalGeneration.from_pretrained(str(out)).eval()
    tokenizer = load_tokenizer(str(out))
    texts = [t for t in datasets.load_dataset("csv", data_files=str(TREC / "train.csv"))["train"]["text"][:3]]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    spans = [sample_spans(len(i), 0.15, 3.0, numpy.random.default_rng(k)) for k, i in enumerate(ids)]
    batch = build_blank_infilling_inputs(tokenizer, ids, spans)
    state = load_file(out / "model.safetensors")
    assert torch.equal(state["glm.word_embeddings.weight"], model.glm.word_embeddings.weight)
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    assert loss < record["baselines"]["before_training"]["loss"] - 2.0
    result = run_main(run_cls, [
        "--model_name_or_path", out, "--dataset_name", "trec", "--train_file", TREC / "train.csv",
        "--test_file", TREC / "test.csv", "--max_train_samples", 64, "--max_eval_samples", 32,
        "--max_test_samples", 32, "--max_train_steps", 2, "--learning_rate", 1e-3, "--output_dir", tmp_path / "cls",
    ])
    assert result["model_name_or_path"] == str(out) and result["total_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("flags, message", [
    (["--metric_for_best_model", "bleu"], "invalid choice: 'bleu' (choose from 'token_accuracy', 'loss', 'perplexity')"),
    (["--num_train_epochs", "0"], "run_pretrain.py trains: --num_train_epochs and --max_train_steps must be >= 1"),
    (["--no-do_train"], "unrecognized arguments: --no-do_train"),
    (["--test_file", "t.csv"], "unrecognized arguments: --test_file t.csv"),
    (["--list_prompts"], "unrecognized arguments: --list_prompts"),
    (["--no-skip_empty"], "unrecognized arguments: --no-skip_empty"),
])  # fmt: skip
def test_flags_pretraining_would_ignore_or_crash_on_are_refused_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_pretrain.parse_args(["--output_dir", str(tmp_path), "--train_file", __file__, "--dataset_name", "t",
                                 *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and len(err.splitlines()) == 1

