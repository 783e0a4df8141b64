"""Parameter-efficient tuning (glm_peft.py): P-tuning v2 prefixes and LoRA adapters train only their own
weights, leave the model's other behaviour intact (packing, padding, cached decoding) and round-trip
through small adapter files."""

import argparse
import json
from types import SimpleNamespace

import peft
import pytest
import torch
from transformers.cache_utils import DynamicCache
from test_glm_utils import WordTokenizer, recompute_greedy, span_config

from modeling_glm import GLMConfig, GLMForConditionalGeneration, PrefixEncoder, UsageError
from glm_peft import (
    PEFT_DEFAULT_LEARNING_RATES,
    PEFT_METHODS,
    add_peft_args,
    apply_peft,
    count_parameters,
    load_trainable_weights,
    save_trainable_weights,
)
from glm_utils import generate_spans, generation_inputs_from_text, multiple_choice_inputs_from_text, score_choices

TINY = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=16, max_sequence_length=64)
CONTEXTS, CHOICES = ["a b [MASK] c", "[MASK] a"], [["x y", "z", "w v x"], ["y", "v w"]]
METHODS = [["--peft", "ptuning_v2", "--pre_seq_len", "4"],
           ["--peft", "ptuning_v2", "--pre_seq_len", "4", "--prefix_projection", "--prefix_hidden_size", "8"],
           ["--peft", "lora", "--lora_r", "2"]]
METHOD_IDS = ["ptuning_v2", "ptuning_v2_projection", "lora"]


def peft_args(argv):
    """The PEFT flags of `argv`, with the base model and seed a script's flags would add."""
    parser = add_peft_args(argparse.ArgumentParser())
    parser.set_defaults(model_name_or_path="glm-tiny", seed=0)
    return parser.parse_args(argv)


def base_model(seed=0):
    """The tiny model of test_glm_utils.py; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return GLMForConditionalGeneration(GLMConfig(**TINY)).eval()


def peft_model(argv, seed=0, perturb=True):
    """A tiny model with a method applied; `perturb` makes LoRA's B non-zero so adapters matter."""
    model = apply_peft(base_model(seed), peft_args(argv))
    if perturb:
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    return model


@pytest.fixture
def tok():
    return WordTokenizer()


def cloze_loss(model, tok):
    batch = multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES)
    return torch.nn.functional.cross_entropy(score_choices(model, batch), torch.tensor([1, 0]))


def test_add_peft_args_defaults():
    args = peft_args([])
    assert (args.peft, args.pre_seq_len, args.prefix_projection, args.prefix_hidden_size) == (None, 16, False, 512)
    assert (args.lora_r, args.lora_alpha, args.lora_dropout) == (8, 16, 0.05)
    assert args.lora_target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    assert set(PEFT_DEFAULT_LEARNING_RATES) == {None, *PEFT_METHODS}
    model = base_model()
    assert apply_peft(model, args) is model and count_parameters(model)[0] == count_parameters(model)[1]


def test_prefix_encoder_layout():
    # Each row holds, layer after layer, [key | value]; each of them split into heads of 8.
    encoder = PrefixEncoder(GLMConfig(**TINY), pre_seq_len=3)
    assert encoder.embedding.weight.shape == (3, 2 * 2 * 32)
    past = encoder(batch_size=5)
    assert len(past) == 2 and all(k.shape == v.shape == (5, 4, 3, 8) for k, v in past)
    row = encoder.embedding.weight[1]  # prefix token 1
    torch.testing.assert_close(past[1][0][4, 2, 1], row[2 * 32 + 2 * 8:2 * 32 + 3 * 8])  # layer 1, key, head 2
    torch.testing.assert_close(past[1][1][0, 3, 1], row[3 * 32 + 3 * 8:3 * 32 + 4 * 8])  # layer 1, value, head 3
    projected = PrefixEncoder(GLMConfig(**TINY), pre_seq_len=3, prefix_projection=True, prefix_hidden_size=8)
    assert projected.embedding.weight.shape == (3, 32)
    assert [p.shape for p in projected.trans.parameters()] == [(8, 32), (8,), (128, 8), (128,)]
    assert all(k.shape == (2, 4, 3, 8) for k, _ in projected(batch_size=2))
    with pytest.raises(ValueError, match="pre_seq_len"):
        PrefixEncoder(GLMConfig(**TINY), pre_seq_len=0)


@pytest.mark.parametrize("argv", METHODS, ids=METHOD_IDS)
def test_training_changes_only_the_method_weights(tok, argv):
    model = apply_peft(base_model(), peft_args(argv)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefix_encoder.") or "lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # all of them, on purpose
    for _ in range(2):  # LoRA's A only gets a gradient once B is no longer zero
        optimizer.zero_grad(), cloze_loss(model, tok).backward(), optimizer.step()
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_fresh_lora_is_the_base_model(tok):
    batch = multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES)
    base = score_choices(base_model(), batch)
    model = peft_model(["--peft", "lora"], perturb=False)
    assert torch.equal(score_choices(model, batch), base)  # B = 0
    model = peft_model(["--peft", "lora"])
    assert not torch.allclose(score_choices(model, batch), base)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_prefix_changes_the_output(tok):
    batch = multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES)
    base = score_choices(base_model(), batch)
    model = peft_model(["--peft", "ptuning_v2", "--pre_seq_len", "4"])
    assert not torch.allclose(score_choices(model, batch), base)


def test_prefix_is_visible_to_every_query_and_hides_nothing(tok):
    # With the prefix, the separator and key-padding mask forms still equal the full mask (past_length
    # counts the prefix), and the prefix encoder does what passing its output as a cache does.
    model = peft_model(["--peft", "ptuning_v2", "--pre_seq_len", "4"])
    ids = torch.tensor([[0, 6, 3, 7, 2, 4, 9], [0, 8, 3, 2, 4, 10, 11]])
    pos = torch.tensor([[0, 1, 2, 3, 4, 2, 2], [0, 0, 0, 0, 0, 1, 2]])[None].expand(2, -1, -1)
    sep = torch.tensor([5, 4])
    i = torch.arange(7)
    full = ((i[None, None, :] < sep[:, None, None]) | (i[None, :] <= i[:, None])[None])[:, None]
    with_prefix = model(ids, pos, full).logits
    torch.testing.assert_close(model(ids, pos, sep).logits, with_prefix)
    # The same backbone without the prefix encoder, given the prefix as a cache of keys and values.
    torch.testing.assert_close(base_model()(ids, pos, full, cache=DynamicCache(model.prefix_encoder(2)),
                                            use_cache=True).logits, with_prefix)
    out = model(ids, pos, full, use_cache=True)
    assert out.cache.layers[0].keys.shape == (2, 4, 4 + 7, 8)  # the cache begins with the prefix


@pytest.mark.parametrize("argv", METHODS, ids=METHOD_IDS)
def test_packed_scores_equal_one_forward_per_choice(tok, argv):
    model = peft_model(argv)
    packed = score_choices(model, multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES, choice_eop=True))
    for b, (context, example_choices) in enumerate(zip(CONTEXTS, CHOICES)):
        for c, choice in enumerate(example_choices):
            alone = score_choices(model, multiple_choice_inputs_from_text(tok, [context], [[choice]], choice_eop=True))
            torch.testing.assert_close(packed[b, c], alone[0, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("argv", METHODS, ids=METHOD_IDS)
def test_cached_decoding_equals_recomputing(tok, argv):
    model = peft_model(argv)
    batch = generation_inputs_from_text(tok, ["a b [MASK]", "[MASK] c"])
    assert generate_spans(model, batch, span_config(max_new_tokens=6)) == recompute_greedy(model, batch, 6)
    for beams in (1, 3):
        assert generate_spans(model, batch, span_config(max_new_tokens=6, num_beams=beams)) == \
            generate_spans(model, batch, span_config(max_new_tokens=6, num_beams=beams, use_cache=False))


@pytest.mark.parametrize("argv", METHODS, ids=METHOD_IDS)
def test_batched_generation_equals_one_by_one(tok, argv):
    model = peft_model(argv)
    contexts = ["a b c [MASK]", "[MASK]", "x [MASK] y z"]
    for beams in (1, 3):
        config = span_config(max_new_tokens=7, num_beams=beams)
        together = generate_spans(model, generation_inputs_from_text(tok, contexts), config, no_repeat_ngram_size=2)
        assert together == [generate_spans(model, generation_inputs_from_text(tok, [c]), config, 2)[0]
                            for c in contexts]


@pytest.mark.parametrize("argv", METHODS, ids=METHOD_IDS)
def test_save_and_reload_onto_a_fresh_base_model(tmp_path, tok, argv):
    args = peft_args(argv)
    model = apply_peft(base_model(), args).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad(), cloze_loss(model, tok).backward(), optimizer.step()
    model.eval()
    save_trainable_weights(model, tmp_path / "adapter", args)
    config = json.loads((tmp_path / "adapter" / "glm_peft.json").read_text())
    assert config["peft"] == args.peft and config["base_model_name_or_path"] == "glm-tiny"
    method_flags = {"lora": {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"},
                    "ptuning_v2": {"pre_seq_len", "prefix_projection", "prefix_hidden_size"}}[args.peft]
    assert set(config) == {"peft", "base_model_name_or_path", "seed"} | method_flags
    weights = {"lora": "adapter_model.safetensors", "ptuning_v2": "prefix_encoder.safetensors"}[args.peft]
    reloaded = load_trainable_weights(base_model(), tmp_path / "adapter").eval()
    batch = multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES)
    assert torch.equal(score_choices(reloaded, batch), score_choices(model, batch))
    base_model().save_pretrained(tmp_path / "model")
    adapter_bytes = (tmp_path / "adapter" / weights).stat().st_size
    assert adapter_bytes < (tmp_path / "model" / "model.safetensors").stat().st_size / 4


def test_reload_errors_are_clear(tmp_path):
    with pytest.raises(UsageError, match="has no glm_peft.json .* nor peft's adapter_config.json"):
        load_trainable_weights(base_model(), tmp_path)
    lora_args = peft_args(["--peft", "lora", "--lora_r", "2"])
    save_trainable_weights(peft_model(["--peft", "lora", "--lora_r", "2"]), tmp_path / "lora", lora_args)
    with pytest.raises(ValueError, match="Method mismatch: .* holds lora weights but the model carries ptuning_v2"):
        load_trainable_weights(peft_model(["--peft", "ptuning_v2"]), tmp_path / "lora")
    with pytest.raises(ValueError, match="args.peft is 'ptuning_v2' but the model carries 'lora'"):
        save_trainable_weights(peft_model(["--peft", "lora"]), tmp_path / "x", peft_args(["--peft", "ptuning_v2"]))
    prefix_args = peft_args(["--peft", "ptuning_v2", "--pre_seq_len", "4"])
    save_trainable_weights(peft_model(["--peft", "ptuning_v2", "--pre_seq_len", "4"]), tmp_path / "p", prefix_args)
    with pytest.raises(ValueError, match="other shapes"):  # same method, another pre_seq_len
        load_trainable_weights(peft_model(["--peft", "ptuning_v2", "--pre_seq_len", "5"]), tmp_path / "p")
    config = json.loads((tmp_path / "p" / "glm_peft.json").read_text())
    config["prefix_projection"] = True
    (tmp_path / "p" / "glm_peft.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing keys \\['prefix_encoder.trans.0.bias'.*unexpected keys \\[\\]"):
        load_trainable_weights(base_model(), tmp_path / "p")
    with pytest.raises(ValueError, match="already carries lora"):
        apply_peft(peft_model(["--peft", "lora"]), peft_args(["--peft", "ptuning_v2"]))


def test_bf16_autocast_with_a_prefix_runs_close_to_fp32(tok):
    model = peft_model(["--peft", "ptuning_v2", "--pre_seq_len", "4"])
    batch = multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES)
    fp32 = score_choices(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = score_choices(model, batch)
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)


def test_full_size_trainable_share_is_below_one_percent():
    with torch.device("meta"):
        prefix = apply_peft(GLMForConditionalGeneration(GLMConfig()), peft_args(["--peft", "ptuning_v2"]))
        lora = apply_peft(GLMForConditionalGeneration(GLMConfig()), peft_args(["--peft", "lora"]))
    trainable, total = count_parameters(prefix)
    assert trainable == 16 * 24 * 2 * 1024 and total == 354_873_344 + trainable
    assert trainable / total < 0.01  # 0.22%
    trainable, total = count_parameters(lora)
    assert trainable == 24 * 8 * ((1024 + 3072) + (1024 + 1024) + (1024 + 4096) + (4096 + 1024))
    assert trainable / total < 0.01  # 0.88%


def test_lora_folder_is_peft_format_both_ways(tmp_path, tok):
    # Ours -> peft: PeftModel.from_pretrained reads the folder. Peft -> ours: a LoRA folder written by
    # peft's own save_pretrained (no glm_peft.json) loads with load_trainable_weights.
    from peft import PeftModel, get_peft_model

    args = peft_args(["--peft", "lora", "--lora_r", "2"])
    model = peft_model(["--peft", "lora", "--lora_r", "2"])
    save_trainable_weights(model, tmp_path / "ours", args)
    batch = multiple_choice_inputs_from_text(tok, CONTEXTS, CHOICES)
    expected = score_choices(model, batch)
    assert expected.isfinite().any() and not torch.equal(score_choices(base_model(), batch), expected)
    assert torch.equal(score_choices(PeftModel.from_pretrained(base_model(), tmp_path / "ours").eval(), batch),
                       expected)
    theirs = get_peft_model(base_model(), peft.LoraConfig(r=3, lora_alpha=8, target_modules=["query_key_value"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    theirs.eval().save_pretrained(tmp_path / "theirs")
    assert not (tmp_path / "theirs" / "glm_peft.json").exists()
    loaded = load_trainable_weights(base_model(), tmp_path / "theirs").eval()
    assert torch.equal(score_choices(loaded, batch), score_choices(theirs, batch))


def test_lora_targets_that_match_no_layer_are_a_usage_error():
    model = GLMForConditionalGeneration.from_pretrained("glm-tiny", vocab_size=64)
    args = SimpleNamespace(peft="lora", lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_target_modules=["nope"],
                           peft_weights=None)
    with pytest.raises(UsageError, match="--lora_target_modules: .*nope"):
        apply_peft(model, args)
