"""Shared test helpers: one torch thread per test process, scripts run in-process, small files."""

import csv
import json
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import PreTrainedTokenizerFast


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a shared 2-core machine two OpenMP threads
    # can be ten times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(module, argv):
    """`module.main(argv)` in a fresh Accelerate state, as a new process would have it."""
    try:
        return module.main([str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def write_csv(path, rows):
    """Writes `rows` (dicts with the same keys) as a csv file with a header; returns `path`."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write(path, text):
    """Writes `text` to `path` (utf-8); returns `path`."""
    path.write_text(text, encoding="utf-8")
    return path


def count_tokenizer_calls(monkeypatch):
    """The texts that GLM tokenizers encode from now on (each `tokenizer(text)` call appends its text)."""
    calls, encode = [], PreTrainedTokenizerFast.__call__

    def counting(self, text, *args, **kwargs):
        calls.append(text)
        return encode(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", counting)
    return calls


def hub_unreachable(monkeypatch):
    """Makes the Hugging Face hub unreachable and the libraries online again; returns the list of the
    URLs asked (each reachability question appends one)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    asked = []

    class NoNetwork:
        def head(self, url, timeout):
            asked.append(url)
            raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", NoNetwork)
    return asked
