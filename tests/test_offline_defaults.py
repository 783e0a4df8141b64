"""The README's two offline commands, as written there, run end to end (shortened to a few steps)."""

import json
import re
import shlex
from pathlib import Path

import pytest

import run_cls
import run_gen
from conftest import run_main

README = Path(__file__).resolve().parents[1] / "README.md"
SHORTEN = ["--max_train_steps", 4, "--max_train_samples", 64, "--max_eval_samples", 16, "--max_test_samples", 16,
           "--per_device_train_batch_size", 8]


def readme_command(script):
    """The first `python SCRIPT ...` command of the README, continuation lines joined, as argv."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    line = re.search(rf"^python {script} (.*)$", text, flags=re.MULTILINE).group(1)
    return shlex.split(line)


@pytest.mark.parametrize("script, module, metric, extra", [("run_cls.py", run_cls, "accuracy", []),
                                                           ("run_gen.py", run_gen, "bleu", ["--num_beams", 1])])
def test_readme_offline_command_runs(script, module, metric, extra, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = readme_command(script)
    assert "glm-tiny" in argv and "train" in argv
    assert argv[argv.index("--dataset_name") + 1] in ("fine_foods", "wildlife_strikes")
    run_main(module, [*argv, *SHORTEN, *extra, "--output_dir", tmp_path / "run"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0 <= results["test"][metric] <= 100 and results["baselines"]
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
