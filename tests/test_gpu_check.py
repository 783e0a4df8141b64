"""benchmarks/gpu_check.py runs (small, CPU) and writes the table's figures as JSON; the GPU-only figures are None."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_small_cpu_run_writes_every_figure(tmp_path, capsys):
    output = tmp_path / "check.json"
    gpu_check.main(["--size", "small", "--device", "cpu", "--dtype", "fp32", "--output", str(output)])
    results = json.loads(output.read_text())
    train = results["train_tokens_per_s"]
    assert train["glm"] > 0 and train["roberta_mlm"] > 0
    assert abs(train["glm_over_roberta"] - train["glm"] / train["roberta_mlm"]) < 1e-9
    # ms/token is a difference of two timings (not checked: at this size noise can outweigh it)
    assert isinstance(results["greedy"]["ms_per_token"], float) and results["greedy"]["streaming_limit_ms"] is None
    assert results["greedy"]["weight_mb"] > 0
    assert results["cls_step_peak_mb"] == {"plain": None, "checkpointing": None} and results["ddp_tokens_per_s"] is None
    assert "| GLM / RoBERTa |" in capsys.readouterr().out
