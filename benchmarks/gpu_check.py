"""A prepared GPU check of GLM at full size (random weights, bf16): one table, also written as JSON.

    python benchmarks/gpu_check.py                      # one GPU, full size: under 8 minutes on an H100
    python benchmarks/gpu_check.py --size small --device cpu --dtype fp32   # seconds: the code path, no figures

What it measures (issue #29), each in this process unless said:
    train_tokens_per_s    GLM training step (forward, backward, AdamW) vs transformers' RobertaForMaskedLM
                          of the same shape (large: 24 x 1024), batch 16 x 256 tokens, 15% of them scored.
    cls_step_peak_mb      peak GPU memory of a run_cls.py step (6 packed choices, batch 16, 256 tokens),
                          without and with gradient checkpointing (`activation_checkpointing_enable`).
    greedy_ms_per_token   cached greedy decoding through `model.generate` (batch 1, context 128, 64 tokens),
                          against the weight-streaming limit: bytes of weights / memory bandwidth (measured
                          here with a large device copy), the least time a step that reads every weight can take.
    ddp_tokens_per_s      with 2+ GPUs: the training step in 2 processes (accelerate launch), total tokens/s.

Mixed precision is autocast to --dtype with fp32 weights, as `accelerate launch --mixed_precision bf16`.
On a CPU the memory figures are None (no allocator statistics) and timings mean little: --size small
exists so that the code runs in the tests.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, RobertaConfig, RobertaForMaskedLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench import Bench, IdTokenizer, train_step_fn  # noqa: E402
from glm_utils import (  # noqa: E402
    generate_spans,
    generation_inputs_from_text,
    multiple_choice_inputs_from_text,
    score_choices,
)
from modeling_glm import GLMConfig, GLMForConditionalGeneration  # noqa: E402

# batch x tokens of the training rows, choices of the cls row, context and new tokens of decoding
SIZES = {
    "large": dict(model=dict(num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=50304),
                  batch=16, seq=256, choices=6, context=128, new_tokens=64, steps=10),
    "small": dict(model=dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512),
                  batch=2, seq=32, choices=6, context=16, new_tokens=4, steps=2),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="large")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="autocast dtype (weights stay fp32)")
    parser.add_argument("--output", default="gpu_check.json", help="where the JSON goes")
    parser.add_argument("--ddp_worker", action="store_true", help=argparse.SUPPRESS)  # one process of the DDP row
    return parser.parse_args(argv)


class Check:
    def __init__(self, args):
        self.args, self.size = args, SIZES[args.size]
        self.device, self.dtype = torch.device(args.device), DTYPES[args.dtype]
        self.tok = IdTokenizer(self.size["model"]["vocab_size"])

    autocast, sync = Bench.autocast, Bench.sync  # they read only self.device and self.dtype

    def glm(self):
        torch.manual_seed(0)
        return GLMForConditionalGeneration(GLMConfig(**self.size["model"])).to(self.device)

    def roberta(self):
        m = self.size["model"]
        torch.manual_seed(0)
        config = RobertaConfig(vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                               num_hidden_layers=m["num_layers"], num_attention_heads=m["num_attention_heads"],
                               intermediate_size=4 * m["hidden_size"], max_position_embeddings=514)
        return RobertaForMaskedLM(config).to(self.device)

    def timed_steps(self, step):
        """Seconds per call of `step` (one warm-up call, then `steps` timed calls)."""
        step()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.size["steps"]):
            step()
        self.sync()
        return (time.perf_counter() - start) / self.size["steps"]

    def mlm_batch(self):
        """Random ids with 15% of the positions scored (GLM: block positions 0, one bidirectional context)."""
        B, S = self.size["batch"], self.size["seq"]
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(4, self.size["model"]["vocab_size"] - 3, (B, S), generator=generator)
        labels = torch.where(torch.rand(B, S, generator=generator) < 0.15, ids, torch.full_like(ids, -100))
        positions = torch.zeros(B, 2, S, dtype=torch.long)
        positions[:, 0] = torch.arange(S)
        return ids.to(self.device), positions.to(self.device), labels.to(self.device)

    def glm_loss(self):
        ids, positions, labels = self.mlm_batch()
        return lambda model: model(ids, positions, labels=labels, logits_positions=labels != -100).loss

    def roberta_loss(self):
        ids, _, labels = self.mlm_batch()
        return lambda model: model(input_ids=ids, labels=labels).loss

    def training(self):
        tokens = self.size["batch"] * self.size["seq"]
        glm = tokens / self.timed_steps(train_step_fn(self, self.glm().train(), self.glm_loss()))
        roberta = tokens / self.timed_steps(train_step_fn(self, self.roberta().train(), self.roberta_loss()))
        return {"glm": glm, "roberta_mlm": roberta, "glm_over_roberta": glm / roberta}

    def cls_batch(self):
        rng = random.Random(0)
        B, S, C = self.size["batch"], self.size["seq"], self.size["choices"]
        choices = [[self.tok.words(rng, 2) for _ in range(C)] for _ in range(B)]
        contexts = [self.tok.words(rng, S - 3 * C - 3) + " [MASK]" for _ in range(B)]
        batch = multiple_choice_inputs_from_text(self.tok, contexts, choices, max_length=S)
        return {k: v.to(self.device) for k, v in batch.items()}

    def cls_peak_mb(self, checkpointing):
        """Peak memory (MB) of one cloze step as run_cls.py takes it: packed choice scores, cross-entropy
        over them, backward, AdamW; None off a GPU."""
        model = self.glm().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        batch, labels = self.cls_batch(), torch.zeros(self.size["batch"], dtype=torch.long, device=self.device)
        step = train_step_fn(self, model, lambda m: F.cross_entropy(score_choices(m, batch), labels))
        step()  # AdamW's state exists from here on, as in every later step
        if self.device.type != "cuda":
            step()
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        del model, step
        torch.cuda.empty_cache()
        return peak

    def bandwidth_gb_per_s(self):
        """Device memory bandwidth from copying 1 GiB (reads + writes), best of 5; None off a GPU."""
        if self.device.type != "cuda":
            return None
        source = torch.empty(2**28, dtype=torch.float32, device=self.device)
        target = torch.empty_like(source)
        best = float("inf")
        for _ in range(5):
            torch.cuda.synchronize()
            start = time.perf_counter()
            target.copy_(source)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return 2 * source.numel() * source.element_size() / best / 1e9

    def decoding(self):
        model = self.glm().eval().to(self.dtype)  # decoding reads the weights in --dtype
        rng = random.Random(0)
        batch = generation_inputs_from_text(self.tok, [self.tok.words(rng, self.size["context"] - 3) + " [MASK]"],
                                            max_length=self.size["context"])
        batch = {k: v.to(self.device) for k, v in batch.items()}

        def decode(n):
            config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, eos_token_id=self.tok.eop_token_id,
                                      pad_token_id=self.tok.pad_token_id, do_sample=False)
            self.sync()
            start = time.perf_counter()
            spans = generate_spans(model, batch, config)
            self.sync()
            assert len(spans[0]) == n
            return time.perf_counter() - start

        n = self.size["new_tokens"]
        decode(n)  # warm-up
        # The prefill and the first token cost the same in both runs: their difference is n cached steps.
        ms = (min(decode(n + 1) for _ in range(3)) - min(decode(1) for _ in range(3))) / n * 1000
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bandwidth = self.bandwidth_gb_per_s()
        limit = None if bandwidth is None else weight_bytes / (bandwidth * 1e9) * 1000
        return {"ms_per_token": ms, "weight_mb": weight_bytes / 2**20, "bandwidth_gb_per_s": bandwidth,
                "streaming_limit_ms": limit, "over_limit": None if limit is None else ms / limit}

    def ddp(self):
        """Total training tokens/s of 2 processes (accelerate launch), or None with fewer than 2 GPUs."""
        if self.device.type != "cuda" or torch.cuda.device_count() < 2:
            return None
        output = Path(self.args.output).with_suffix(".ddp.json")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--mixed_precision",
                   self.args.dtype if self.args.dtype != "fp32" else "no", __file__, "--size", self.args.size,
                   "--dtype", "fp32", "--ddp_worker", "--output", str(output)]
        subprocess.run(command, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"})
        return json.loads(output.read_text())["tokens_per_s"]


def ddp_worker(args):
    """One process of the DDP row: the GLM training step under Accelerate, both processes' tokens/s."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    check = Check(argparse.Namespace(**{**vars(args), "device": str(accelerator.device)}))
    model = check.glm().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = check.glm_loss()

    def step():
        with accelerator.autocast():
            loss = loss_fn(model)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = check.timed_steps(step)
    if accelerator.is_main_process:
        tokens = check.size["batch"] * check.size["seq"] * accelerator.num_processes
        Path(args.output).write_text(json.dumps({"tokens_per_s": tokens / seconds}))


def table(results):
    def fmt(value, digits=1):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    t, d, m = results["train_tokens_per_s"], results["greedy"], results["cls_step_peak_mb"]
    rows = [
        ("training tokens/s, GLM", fmt(t["glm"], 0)),
        ("training tokens/s, RobertaForMaskedLM", fmt(t["roberta_mlm"], 0)),
        ("GLM / RoBERTa", fmt(t["glm_over_roberta"], 2)),
        ("run_cls step peak MB, no checkpointing", fmt(m["plain"], 0)),
        ("run_cls step peak MB, gradient checkpointing", fmt(m["checkpointing"], 0)),
        ("greedy ms/token", fmt(d["ms_per_token"], 2)),
        ("weight-streaming limit ms/token", fmt(d["streaming_limit_ms"], 2)),
        ("greedy / limit", fmt(d["over_limit"], 2)),
        ("2-process training tokens/s", fmt(results["ddp_tokens_per_s"], 0)),
    ]
    head = f"GLM check: {results['device_name']}, size {results['size']}, {results['dtype']}"
    return "\n".join([head, "| measure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv=None):
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    check = Check(args)
    device_name = torch.cuda.get_device_name(check.device) if check.device.type == "cuda" else "cpu"
    results = {"device_name": device_name, "size": args.size, "dtype": args.dtype, "torch": torch.__version__,
               "train_tokens_per_s": check.training(),
               "cls_step_peak_mb": {"plain": check.cls_peak_mb(False), "checkpointing": check.cls_peak_mb(True)},
               "greedy": check.decoding(), "ddp_tokens_per_s": check.ddp()}
    print(table(results))
    Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
