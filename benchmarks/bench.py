"""Speed of the GLM toolkit as RATIOS, each measured side by side in one run.

    python benchmarks/bench.py                           # small preset, CPU: about 4 CPU-minutes
    python benchmarks/bench.py --size large --device cuda --dtype bf16
    python benchmarks/bench.py --threads 1 --rows 1,3    # a busy CPU: one thread avoids OpenMP stalls

Every row times two things, A and B, in the same process: each is warmed up once, then A and B
alternate `--repeats` times and the median of each is kept (time.perf_counter, with
torch.cuda.synchronize on a GPU). Ratios travel between machines better than times do.

    1  choice scoring   A = one forward per answer choice, B = all choices packed in one forward
    2  decoding         A = recompute the whole sequence each step, B = K/V-cached incremental steps
    3  training step    A = native GLM, B = transformers' RobertaForMaskedLM of the same shape
    4  FLOP/s           A = a GLM training step's achieved FLOP/s, B = this machine's torch.matmul
    5  data side        A = random batches, B = length-grouped batches (padding and examples/s)

Models are randomly initialised (speed does not depend on the weights); inputs are random token
ids passed through the real input builders by a tokenizer stand-in (`IdTokenizer`). The script
prints a markdown table; nothing is written to disk.
"""

import argparse
import csv
import os
import platform
import random
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from modeling_glm import GLMConfig, GLMForConditionalGeneration  # noqa: E402
from glm_utils import (  # noqa: E402
    build_blank_infilling_inputs,
    generate_spans,
    generation_inputs_from_text,
    max_infilling_text_length,
    multiple_choice_inputs_from_text,
    sample_spans,
    score_choices,
)
from training import EpochSampler  # noqa: E402

# Model shapes. `small` fits a 2-core CPU; `large` is glm-roberta-large itself.
SIZES = {
    "small": dict(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=8192),
    "base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=50304),
    "large": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=50304),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def padding_fraction(lengths, batches):
    """Share of the token slots of `batches` (lists of indices into `lengths`), each padded to its
    longest, that are padding: a float in [0, 1) (0.0 for no tokens)."""
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    tokens = sum(lengths[i] for batch in batches for i in batch)
    return 0.0 if slots == 0 else (slots - tokens) / slots


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small", help="model shape preset")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="autocast dtype (auto: fp32 on CPU, bf16 on CUDA); weights stay fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median kept)")
    parser.add_argument("--rows", default="1,2,3,4,5", help="comma-separated rows to run, e.g. 1,3 (6: a run_pretrain.py step)")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per batch in rows 1, 3, 4")
    parser.add_argument("--data_examples", type=int, default=128,
                        help="row 5 times a forward+backward over this many examples each way")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.rows = [key.strip() for key in args.rows.split(",")]
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"--rows: unknown rows {sorted(unknown)}; choose among {sorted(ROWS)}")
    return args


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


class IdTokenizer:
    """Tokenizer stand-in for the input builders: a text is token ids written as numbers.

    "17 905 [MASK] 33" encodes to [<s>, 17, 905, [MASK], 33, </s>]; the special ids sit at the
    top of the vocabulary and random "words" are drawn below them.
    """

    cls_token_id, pad_token_id, eos_token_id = 0, 1, 2

    def __init__(self, vocab_size):
        self.mask_token_id, self.sop_token_id, self.eop_token_id = vocab_size - 3, vocab_size - 2, vocab_size - 1
        self.word_ids = range(4, vocab_size - 3)

    def __call__(self, text, add_special_tokens=True):
        ids = [self.mask_token_id if word == "[MASK]" else int(word) for word in text.split()]
        return {"input_ids": [self.cls_token_id, *ids, self.eos_token_id] if add_special_tokens else ids}

    def words(self, rng, n):
        return " ".join(str(rng.choice(self.word_ids)) for _ in range(n))


class Bench:
    """Device, dtype, model shape and the timer every row shares."""

    def __init__(self, args):
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu")
        dtype = args.dtype if args.dtype != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        self.shape = SIZES[args.size]
        self.repeats, self.args = args.repeats, args
        self.tokenizer = IdTokenizer(self.shape["vocab_size"])

    def glm(self, train=False):
        torch.manual_seed(self.args.seed)
        model = GLMForConditionalGeneration(GLMConfig(**self.shape, max_sequence_length=512)).to(self.device)
        return model.train(train)

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, **fns):
        """Median seconds of each function: one warm-up each, then all of them in turn, `repeats` times.

        The last result of each function is kept in `self.outputs[name]`.
        """
        self.outputs = {name: fn() for name, fn in fns.items()}
        times = {name: [] for name in fns}
        for _ in range(self.repeats):
            for name, fn in fns.items():
                self.sync()
                start = time.perf_counter()
                self.outputs[name] = fn()
                self.sync()
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(t) for name, t in times.items()}

    def to_device(self, batch):
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def ms(seconds):
    return f"{seconds * 1e3:.1f} ms"


def row(number, setting, a, b, ratio, target, notes=""):
    return f"| {number} | {setting} | {a} | {b} | {ratio} | {target} | {notes} |"


# ----------------------------------------------------------------------------------------------
# Row 1: packed choice scoring
# ----------------------------------------------------------------------------------------------


def bench_choice_scoring(bench):
    """A/B = time to score C answer choices with one forward per choice / with all C packed in one.

    Batch of `batch_size` examples, each a 64-token context (with `<s>`, `[MASK]`, `</s>`) and the
    same C choices of 1-4 tokens (like verbalizers). Both sides use `score_choices` (vocabulary
    logits only at the scored positions) under inference mode; inputs are built beforehand. The
    packed scores are checked against the one-by-one scores.
    """
    model, tok, rng = bench.glm(), bench.tokenizer, random.Random(bench.args.seed)
    contexts = [tok.words(rng, 30) + " [MASK] " + tok.words(rng, 31) for _ in range(bench.args.batch_size)]
    lines = []
    for num_choices in (2, 6, 20):
        choices = [tok.words(rng, rng.randint(1, 4)) for _ in range(num_choices)]
        # eop closes every choice (GLM's rule for multi-token choices), alone as packed
        packed = bench.to_device(multiple_choice_inputs_from_text(tok, contexts, [choices] * len(contexts),
                                                                  choice_eop=True))
        singles = [bench.to_device(multiple_choice_inputs_from_text(tok, contexts, [[c]] * len(contexts),
                                                                    choice_eop=True))
                   for c in choices]

        @torch.inference_mode()
        def score_packed():
            with bench.autocast():
                return score_choices(model, packed)

        @torch.inference_mode()
        def score_one_by_one():
            with bench.autocast():
                return torch.cat([score_choices(model, single) for single in singles], dim=1)

        t = bench.time(per_choice=score_one_by_one, packed=score_packed)
        out = {name: scores.float() for name, scores in bench.outputs.items()}
        same = torch.allclose(out["packed"], out["per_choice"], atol=1e-3 if bench.dtype == torch.float32 else 0.5)
        lines.append(row(1, f"choice scoring, {num_choices} choices x 1-4 tok, ctx 64, batch {len(contexts)} "
                            f"(packed seq {packed['input_ids'].shape[1]})",
                         ms(t["per_choice"]), ms(t["packed"]), f"{t['per_choice'] / t['packed']:.2f}x",
                         ">= 4x at 6" if num_choices == 6 else "",
                         f"scores equal: {'yes' if same else 'NO'}"))
    return lines


# ----------------------------------------------------------------------------------------------
# Row 2: cached decoding
# ----------------------------------------------------------------------------------------------


# (beams, contexts): greedy on a small and a usual evaluation batch, beam search on 2 contexts (8 hypotheses)
DECODE_SETTINGS = ((1, 2), (1, 8), (4, 2))


def bench_decoding(bench):
    """A/B = time to write 64 tokens recomputing the whole sequence each step / with the K/V cache.

    Random 128-token contexts ending in `[MASK]` (all of one length, so no padding);
    `min_new_tokens=64` bans eop, so every run writes exactly 64 tokens. Greedy and beam search
    (4 beams) through transformers' `generate` (`glm_utils.generate_spans`). The ratio grows with the batch:
    a cached step costs about the same for 2 rows as for 8 (it reads every weight once, plus fixed per-op
    overhead), while recomputing costs in proportion to the rows.
    """
    model, tok, rng = bench.glm(), bench.tokenizer, random.Random(bench.args.seed)
    lines = []
    for beams, num_contexts in DECODE_SETTINGS:
        contexts = [tok.words(rng, 125) + " [MASK]" for _ in range(num_contexts)]
        batch = bench.to_device(generation_inputs_from_text(tok, contexts, max_length=128))

        def decode(use_cache):
            with bench.autocast():
                config = GenerationConfig(max_new_tokens=64, min_new_tokens=64, num_beams=beams, use_cache=use_cache,
                                          eos_token_id=tok.eop_token_id, pad_token_id=tok.pad_token_id)
                out = generate_spans(model, batch, config)
            assert all(len(tokens) == 64 for tokens in out), [len(tokens) for tokens in out]
            return out

        t = bench.time(recompute=lambda: decode(False), cached=lambda: decode(True))
        same = bench.outputs["recompute"] == bench.outputs["cached"]
        lines.append(row(2, f"decoding 64 tokens after ctx {batch['input_ids'].shape[1] - 1}, "
                            f"{'greedy' if beams == 1 else f'beam {beams}'}, batch {num_contexts}",
                         ms(t["recompute"]), ms(t["cached"]), f"{t['recompute'] / t['cached']:.2f}x", ">= 5x",
                         f"same tokens: {'yes' if same else 'no (float ties)'}"))
    return lines


# ----------------------------------------------------------------------------------------------
# Rows 3 and 4: training step
# ----------------------------------------------------------------------------------------------

TRAIN_SEQ_LEN = 128


def training_inputs(bench, batch_size, seq_len=TRAIN_SEQ_LEN):
    """Random ids and a GLM pretraining layout: Part A (85%) bidirectional, Part B (15%) causal.

    The Part B positions carry the labels, like the ~15% masked positions of an MLM batch.
    """
    g = torch.Generator().manual_seed(bench.args.seed)
    V, part_b = bench.shape["vocab_size"], round(0.15 * seq_len)
    input_ids = torch.randint(4, V - 3, (batch_size, seq_len), generator=g)
    position_ids = torch.stack([torch.arange(seq_len).expand(batch_size, -1),
                                torch.zeros(batch_size, seq_len, dtype=torch.long)], dim=1)
    labels = torch.full((batch_size, seq_len), -100)
    labels[:, -part_b:] = torch.randint(4, V - 3, (batch_size, part_b), generator=g)
    sep = torch.full((batch_size,), seq_len - part_b)
    return bench.to_device(dict(input_ids=input_ids, position_ids=position_ids, sep=sep, labels=labels))


def roberta_mlm(bench):
    """transformers' RobertaForMaskedLM with GLM's shape (random init, its default attention)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    s = bench.shape
    config = RobertaConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                           num_hidden_layers=s["num_layers"], num_attention_heads=s["num_attention_heads"],
                           intermediate_size=4 * s["hidden_size"], max_position_embeddings=514, type_vocab_size=1)
    torch.manual_seed(bench.args.seed)
    return RobertaForMaskedLM(config).to(bench.device).train()


def train_step_fn(bench, model, loss_fn):
    """One forward + backward + AdamW step of `model` with the loss `loss_fn(model)`.

    No GradScaler under fp16: an overflowing loss would not change the time of a step.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with bench.autocast():
            loss = loss_fn(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def adamw_only_fn(model):
    """An AdamW step alone over copies of `model`'s parameters with random gradients."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return torch.optim.AdamW(params, lr=1e-4).step


def bench_training_step(bench):
    """A/B = time of a training step (forward, backward, AdamW) of the native GLM / of RoBERTa-MLM.

    Same layers, hidden size, heads, vocabulary, batch and sequence length (128); both compute
    the full [B, S, V] logits and a cross-entropy over the ~15% labelled positions. GLM gets its
    own mask (Part A bidirectional, Part B causal: a bool [B, 1, S, S] for SDPA); RoBERTa gets no
    padding, which transformers turns into no mask at all. RoBERTa does a little more work (an
    embedding layer norm, a dense + layer norm before its LM head, an output bias). Extra rows:
    GLM computing logits only at the labelled positions (`logits_positions`), and the cost of a
    bool mask inside SDPA.
    """
    x = training_inputs(bench, bench.args.batch_size)
    scored = x["labels"] != -100
    glm, roberta = bench.glm(train=True), roberta_mlm(bench)
    glm_full = train_step_fn(bench, glm, lambda m: m(x["input_ids"], x["position_ids"], x["sep"],
                                                      labels=x["labels"]).loss)
    glm_scored = train_step_fn(bench, glm, lambda m: m(x["input_ids"], x["position_ids"], x["sep"],
                                                        labels=x["labels"], logits_positions=scored).loss)
    glm_nomask = train_step_fn(bench, glm, lambda m: m(x["input_ids"], x["position_ids"], None,
                                                        labels=x["labels"]).loss)
    roberta_step = train_step_fn(bench, roberta, lambda m: m(input_ids=x["input_ids"],
                                                             attention_mask=torch.ones_like(x["input_ids"]),
                                                             labels=x["labels"]).loss)
    t = bench.time(glm=glm_full, glm_scored=glm_scored, glm_nomask=glm_nomask, roberta=roberta_step)
    B, S = x["input_ids"].shape
    setting = f"train step B={B} S={S}"
    lines = [
        row(3, f"{setting}, full [B,S,V] logits: GLM (bool GLM mask) / RoBERTa-MLM "
               f"({roberta.config._attn_implementation})", ms(t["glm"]), ms(t["roberta"]),
            f"{t['glm'] / t['roberta']:.3f}", "<= 1.05",
            f"GLM without a mask: {ms(t['glm_nomask'])} ({t['glm_nomask'] / t['roberta']:.3f})"),
        row(3, f"{setting}: GLM logits at the 15% labelled positions / RoBERTa-MLM full logits",
            ms(t["glm_scored"]), ms(t["roberta"]), f"{t['glm_scored'] / t['roberta']:.3f}", "(extra)"),
    ]
    return lines + [bench_sdpa_mask(bench, B, S)]


def bench_sdpa_mask(bench, batch_size, seq_len):
    """A/B = SDPA forward+backward with a bool [B, 1, S, S] mask / with attn_mask=None (GLM's heads)."""
    s = bench.shape
    heads, head_dim = s["num_attention_heads"], s["hidden_size"] // s["num_attention_heads"]
    q, k, v = (torch.randn(batch_size, heads, seq_len, head_dim, device=bench.device, requires_grad=True)
               for _ in range(3))
    sep = torch.full((batch_size,), seq_len - round(0.15 * seq_len), device=bench.device)
    i = torch.arange(seq_len, device=bench.device)
    mask = ((i[None, None, :] < sep[:, None, None]) | (i[None, None, :] <= i[None, :, None]))[:, None]

    def attend(attn_mask):
        with bench.autocast():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y.float().sum().backward()

    t = bench.time(bool_mask=lambda: attend(mask), no_mask=lambda: attend(None))
    return row(3, f"SDPA fwd+bwd [{batch_size},{heads},{seq_len},{head_dim}] x {s['num_layers']} layers: "
                  "bool [B,1,S,S] mask / None", ms(t["bool_mask"] * s["num_layers"]),
               ms(t["no_mask"] * s["num_layers"]), f"{t['bool_mask'] / t['no_mask']:.2f}", "(info)",
               "per-step cost of GLM's mask inside attention")


def bench_flops(bench):
    """A/B = achieved FLOP/s of a GLM training step / FLOP/s of one large square torch.matmul.

    Counted FLOPs of a step on T = B*S tokens (multiply-add = 2; backward = 2x forward):
        6 * N * T              N = weights of the layers (12 H^2 + biases + norms per layer)
      + 12 * L * B * S^2 * H   attention scores and weighted values (QK^T, PV), forward + backward
      + 6 * T * H * V          the tied LM head over the full [B, S, V] logits
    Embedding look-ups, softmax, norms, GELU, dropout and AdamW are counted as zero: they are what
    keeps the percentage below 100 (with GEMMs too small to reach the peak at small sizes).
    """
    x = training_inputs(bench, bench.args.batch_size)
    glm = bench.glm(train=True)
    step = train_step_fn(bench, glm, lambda m: m(x["input_ids"], x["position_ids"], x["sep"],
                                                  labels=x["labels"]).loss)
    s = bench.shape
    L, H, V = s["num_layers"], s["hidden_size"], s["vocab_size"]
    (B, S), n_layers = x["input_ids"].shape, sum(p.numel() for p in glm.glm.transformer.layers.parameters())
    flops = 6 * n_layers * B * S + 12 * L * B * S * S * H + 6 * B * S * H * V

    n = 8192 if bench.device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=bench.device, dtype=bench.dtype) for _ in range(2))
    t = bench.time(step=step, matmul=lambda: torch.matmul(a, b), adamw=adamw_only_fn(glm))
    achieved, peak = flops / t["step"], 2 * n ** 3 / t["matmul"]
    return [row(4, f"GLM train step B={B} S={S} ({flops / 1e9:.1f} GFLOP) / matmul {n}x{n} {bench.dtype_name}",
                f"{achieved / 1e9:.1f} GFLOP/s", f"{peak / 1e9:.1f} GFLOP/s", f"{100 * achieved / peak:.0f}%",
                "(info)", f"AdamW alone {100 * t['adamw'] / t['step']:.0f}% of the step; "
                          f"LM head {100 * 6 * B * S * H * V / flops:.0f}% of the FLOPs")]


# ----------------------------------------------------------------------------------------------
# Row 5: data side
# ----------------------------------------------------------------------------------------------


def dataset_lengths(name):
    """Token lengths of the training sequences of the TREC cloze task and of E2E generation.

    TREC: `<s> {question} Which kind of answer? [MASK] </s>` plus 6 packed one-token choices.
    E2E:  `<s> {meaning representation} [MASK] </s>` plus `sop {reference}`.
    The real GLM tokenizer is used when present, else a BPE trained on the texts.
    Returns None when the data file is absent.
    """
    path = SHARED / "data" / name / "train.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if name == "trec":
        texts, extra = [r["text"] + " Which kind of answer? [MASK]" for r in rows], [6] * len(rows)
    else:
        texts = [r["meaning_representation"] + " [MASK]" for r in rows]
        extra = [1 + len(ids) for ids in _tokenize([r["human_reference"] for r in rows], add_special_tokens=False)]
    return [len(ids) + n for ids, n in zip(_tokenize(texts), extra)]


_TOKENIZER = []


def _tokenize(texts, add_special_tokens=True):
    from tokenization_glm import load_tokenizer, train_tokenizer

    if not _TOKENIZER:
        real = SHARED / "tokenizers" / "glm-roberta-large"
        _TOKENIZER.append(load_tokenizer(str(real)) if real.exists() else train_tokenizer(texts))
    return _TOKENIZER[0](texts, add_special_tokens=add_special_tokens)["input_ids"]


def bench_data_side(bench):
    """A/B = examples/s of a GLM forward+backward over random batches / over length-grouped batches.

    Batches of 16 from the real TREC and E2E training lengths, arranged by a random shuffle or by
    `training.EpochSampler` with --group_by_length; the padding fraction (`padding_fraction`) is
    that of the whole training set. The timing runs both arrangements over the SAME
    `data_examples` randomly chosen examples (so only the padding differs): random ids padded to
    each batch's longest sequence, a key-padding mask, logits at 15% of the real tokens.
    """
    model, lines, batch_size, seed = bench.glm(train=True), [], 16, bench.args.seed
    for name in ("trec", "e2e_nlg_cleaned"):
        lengths = dataset_lengths(name)
        if lengths is None:
            lines.append(row(5, name, "-", "-", "-", "-", f"skipped: ../shared/data/{name}/train.csv absent"))
            continue
        pad = {side: padding_fraction(lengths, arrange(side, lengths, batch_size, seed))
               for side in ("random", "grouped")}
        subset = random.Random(seed).sample(range(len(lengths)), min(bench.args.data_examples, len(lengths)))
        sub_lengths = [lengths[i] for i in subset]
        timed = {side: padded_batches(bench, sub_lengths, arrange(side, sub_lengths, batch_size, seed))
                 for side in ("random", "grouped")}
        t = bench.time(**{side: lambda b=batches: forward_backward(bench, model, b) for side, batches in timed.items()})
        rate = {side: len(subset) / t[side] for side in t}
        lines.append(row(5, f"{name} train ({len(lengths)} ex, batch {batch_size}, mean len "
                            f"{sum(lengths) / len(lengths):.0f}, max {max(lengths)}): random / length-grouped",
                         f"{rate['random']:.0f} ex/s, pad {100 * pad['random']:.0f}%",
                         f"{rate['grouped']:.0f} ex/s, pad {100 * pad['grouped']:.0f}%",
                         f"{t['random'] / t['grouped']:.2f}x", "(info)",
                         f"fwd+bwd timed on the same {len(subset)} examples both ways"))
    return lines


def arrange(side, lengths, batch_size, seed):
    """Batches of indices into `lengths`: a random shuffle, or the length-grouped order of training cut into batches."""
    order = list(EpochSampler(len(lengths), seed, lengths if side == "grouped" else None, batch_size))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padded_batches(bench, lengths, batches):
    """Random-id tensors for the batches: each padded to its longest, 15% of real tokens scored."""
    g = torch.Generator().manual_seed(bench.args.seed)
    out = []
    for batch in batches:
        lens = torch.tensor([min(lengths[i], 512) for i in batch])
        B, S = len(batch), int(lens.max())
        real = torch.arange(S)[None, :] < lens[:, None]
        out.append(bench.to_device(dict(
            input_ids=torch.randint(4, bench.shape["vocab_size"] - 3, (B, S), generator=g),
            position_ids=torch.stack([torch.arange(S).expand(B, -1), torch.zeros(B, S, dtype=torch.long)], 1),
            attention_mask=real.long(), scored=real & (torch.rand(B, S, generator=g) < 0.15))))
    return out


def forward_backward(bench, model, batches):
    for b in batches:
        with bench.autocast():
            labels = b["input_ids"].masked_fill(~b["scored"], -100)
            loss = model(b["input_ids"], b["position_ids"], b["attention_mask"], labels=labels,
                         logits_positions=b["scored"]).loss
        loss.backward()
    model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Row 6: a run_pretrain.py step
# ----------------------------------------------------------------------------------------------


def bench_pretraining(bench):
    """Tokens per second of a blank-infilling training step as run_pretrain.py takes it: texts of
    512 tokens with their blanks (15%, Poisson(3) spans), logits at the span positions only,
    forward + backward + AdamW. A/B = counted FLOPs per token / seconds per token; the FLOPs are
    those of row 4 (6 N per token, attention over the whole sequence) with the LM head over the
    scored positions only.
    """
    rng = np.random.default_rng(bench.args.seed)
    n = max_infilling_text_length(512, 0.15)
    texts = [rng.integers(4, bench.shape["vocab_size"] - 3, n).tolist() for _ in range(bench.args.batch_size)]
    batch = build_blank_infilling_inputs(bench.tokenizer, texts, [sample_spans(n, 0.15, 3.0, rng) for _ in texts])
    batch = bench.to_device(batch)
    scored = batch["labels"] != -100
    glm = bench.glm(train=True)
    step = train_step_fn(bench, glm, lambda m: m(batch["input_ids"], batch["position_ids"], batch["attention_mask"],
                                                  labels=batch["labels"], logits_positions=scored).loss)
    s = bench.shape
    L, H, V = s["num_layers"], s["hidden_size"], s["vocab_size"]
    (B, S), n_layers = batch["input_ids"].shape, sum(p.numel() for p in glm.glm.transformer.layers.parameters())
    flops = 6 * n_layers * B * S + 12 * L * B * S * S * H + 6 * int(scored.sum()) * H * V
    seconds = bench.time(step=step)["step"]
    return [row(6, f"run_pretrain.py step, B={B} texts of S={S} tokens", f"{flops / (B * S) / 1e9:.2f} GFLOP/token",
                f"{seconds / (B * S) * 1e3:.1f} ms/token", f"{B * S / seconds:.1f} tokens/s", "(info)",
                f"{flops / seconds / 1e9:.1f} GFLOP/s achieved")]


ROWS = {"1": bench_choice_scoring, "2": bench_decoding, "3": bench_training_step, "4": bench_flops,
        "5": bench_data_side, "6": bench_pretraining}


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    where = torch.cuda.get_device_name(bench.device) if bench.device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"GLM benchmarks: size={args.size} {bench.shape}, device={bench.device} ({where}), "
          f"dtype={bench.dtype_name}, torch {torch.__version__}, median of {args.repeats} after 1 warm-up\n")
    if bench.device.type == "cpu" and os.getloadavg()[0] >= os.cpu_count():
        print(f"WARNING: the CPU is busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs): times are "
              "inflated and multi-threaded small ops stall; prefer --threads 1, and trust ratios less.\n")
    print("| row | setting | A | B | A/B | target | notes |")
    print("|---|---|---|---|---|---|---|")
    for key in args.rows:
        for line in ROWS[key](bench):
            print(line, flush=True)
    # Other processes on the machine distort CPU timings (and ratios less so): the load shows it.
    print(f"\nTotal time: {time.perf_counter() - start:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
