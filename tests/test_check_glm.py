"""The check of real weights: the special-row self-check the scripts run at load (tokenization_glm) and
check_glm.py, on a small checkpoint saved in the released layout whose "trained" rows (the
tokenizer's 0..50266) have one scale and whose padding rows (50267..50303) another."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import check_glm
from modeling_glm import GLMConfig, GLMForConditionalGeneration
from tokenization_glm import check_special_rows, load_tokenizer

REAL_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "glm-roberta-large"
pytestmark = pytest.mark.skipif(not REAL_TOKENIZER.exists(), reason="needs ../shared/tokenizers/glm-roberta-large")

TRAINED_ROWS, VOCAB_ROWS, HIDDEN = 50267, 50304, 32


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    """pytorch_model.bin with `glm.` keys + config.json (the released field names) + the tokenizer files."""
    directory = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    config = GLMConfig(num_layers=1, hidden_size=HIDDEN, num_attention_heads=4, vocab_size=VOCAB_ROWS)
    state = GLMForConditionalGeneration(config).state_dict()
    rows = torch.randn(VOCAB_ROWS, HIDDEN) / HIDDEN**0.5     # L2 norm about 1
    rows[TRAINED_ROWS:] *= 0.02                             # padding rows: about 0.02
    state["glm.word_embeddings.weight"] = rows
    torch.save(state, directory / "pytorch_model.bin")
    released_config = {k: v for k, v in config.to_dict().items() if k not in ("layernorm_epsilon", "initializer_range")}
    released_config["auto_map"] = {"AutoModel": "modeling_glm.GLMModel"}
    (directory / "config.json").write_text(json.dumps(released_config))
    for name in ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"):
        (directory / name).write_bytes((REAL_TOKENIZER / name).read_bytes())
    return directory


@pytest.mark.parametrize("mask_token_id, warned", [(50264, False), (50267, True)])
def test_untrained_mask_row_is_warned_about(released_dir, caplog, mask_token_id, warned):
    tokenizer = load_tokenizer(str(released_dir), mask_token_id=mask_token_id)
    model = GLMForConditionalGeneration.from_pretrained(str(released_dir), vocab_size=len(tokenizer))
    with caplog.at_level("INFO", logger="tokenization_glm"):
        check_special_rows(model, tokenizer, str(released_dir))
    table = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert len(table) == 1 and f"[MASK]                    {mask_token_id}" in table[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert len(warnings) == 1 and "untrained" in warnings[0] and "row 50267" in warnings[0]
    else:
        assert warnings == []


def test_glm_tiny_is_not_checked(caplog):
    tokenizer = SimpleNamespace(mask_token_id=50267, sop_token_id=50265, eop_token_id=50266)
    model = GLMForConditionalGeneration.from_pretrained("glm-tiny", vocab_size=50268)
    with caplog.at_level("INFO", logger="tokenization_glm"):
        check_special_rows(model, tokenizer, "glm-tiny")
    assert caplog.records == []


def test_check_glm_on_a_released_layout(released_dir, capsys):
    verdict = check_glm.main(["--model_name_or_path", str(released_dir)])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("[MASK]=", "<|"))}
    assert rows["[MASK]=50264"].endswith(" trained") and rows["<|endofpiece|>"].endswith(" trained")
    assert rows["[MASK]=50267"].endswith(" UNTRAINED (like a padding row)")
    for sentence, _ in check_glm.CLOZE_SENTENCES + [example[:2] for example in check_glm.SENTIMENT_EXAMPLES]:
        assert sentence in out
    lines = out.splitlines()
    for mask_id in (50264, 50267):  # 5 fills and 2 sentiment scores with each id
        assert sum(line.startswith(f"    [MASK]={mask_id}: ") for line in lines) == 7
    assert out.rstrip().endswith(verdict) and verdict.startswith("Verdict: ")


def test_check_glm_runs_on_glm_tiny(capsys):
    verdict = check_glm.main(["--model_name_or_path", "glm-tiny", "--tokenizer_name", str(REAL_TOKENIZER)])
    assert verdict.startswith("Verdict: glm-tiny is random")


@pytest.mark.parametrize("tokenizer", [["--tokenizer_name", "nowhere"], []])  # []: glm-tiny, a name the hub lacks
def test_a_mistake_is_one_line_and_exit_2(tokenizer):
    done = subprocess.run([sys.executable, "check_glm.py", "--model_name_or_path", "glm-tiny", *tokenizer],
                          cwd=Path(check_glm.__file__).parent, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("check_glm.py: error: ") and len(done.stderr.strip().splitlines()) == 1
