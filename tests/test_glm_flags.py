"""--mask_token_id and --choice_eop as a user runs them: run_cls.py with glm-tiny and the released
tokenizer files on slices of TREC (whose verbalizers include multi-token words, so GLM's rule
closes every choice with eop)."""

import csv
import json
from pathlib import Path

import pytest

import run_cls
from conftest import read_jsonl, run_main, write_csv

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TREC, REAL_TOKENIZER = SHARED / "data" / "trec", SHARED / "tokenizers" / "glm-roberta-large"
pytestmark = pytest.mark.skipif(not ((TREC / "train.csv").is_file() and REAL_TOKENIZER.is_dir()),
                                reason="needs ../shared/data/trec and ../shared/tokenizers/glm-roberta-large")


@pytest.fixture(scope="module")
def trec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trec")
    rows = list(csv.DictReader(open(TREC / "train.csv", encoding="utf-8")))
    return write_csv(folder / "train16.csv", rows[:16]), write_csv(folder / "test8.csv", rows[16:24])


def cls_args(trec, output_dir, *extra):
    train, test = trec
    return ["--model_name_or_path", "glm-tiny", "--tokenizer_name", REAL_TOKENIZER, "--dataset_name", "trec",
            "--train_file", train, "--validation_file", test, "--test_file", test, "--output_dir", output_dir, "--seed", 0,
            "--per_device_train_batch_size", 4, "--learning_rate", 1e-3, *extra]  # fmt: skip


def test_choice_eop_changes_the_scores_and_is_recorded(trec, tmp_path):
    scores = {}
    for mode in ("auto", "on", "off"):
        record = run_main(run_cls, cls_args(trec, tmp_path / mode, "--no-do_train", "--choice_eop", mode))
        assert record["args"]["choice_eop"] == mode
        assert json.loads((tmp_path / mode / "results.json").read_text())["args"]["choice_eop"] == mode
        scores[mode] = [row["scores"] for row in read_jsonl(tmp_path / mode / "predictions_test.jsonl")]
    assert scores["auto"] == scores["on"] and scores["on"] != scores["off"]


def test_mask_token_id_reaches_the_tokenizer_and_a_resume_must_share_it(trec, tmp_path, caplog, capsys):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="tokenization_glm"):
        record = run_main(run_cls, cls_args(trec, out, "--mask_token_id", 50267, "--max_train_steps", 2,
                                            "--checkpointing_steps", 1))
    assert record["args"]["mask_token_id"] == 50267
    assert "[MASK] is id 50267, as --mask_token_id says" in caplog.text
    (out / "results.json").unlink()
    with pytest.raises(SystemExit):
        run_main(run_cls, cls_args(trec, out, "--mask_token_id", 50264, "--max_train_steps", 2,
                                   "--checkpointing_steps", 1, "--resume_from_checkpoint", "latest"))
    assert "--mask_token_id 50267 there, 50264 here" in capsys.readouterr().err
