"""Specification of run_baseline.py: the baselines run on the data, prompts and metrics of run_cls.py /
run_gen.py, learn, and score answer choices as documented.

End-to-end runs call `run_baseline.main(argv)` in-process with tiny random models (roberta-tiny,
glm-tiny, bart-tiny, t5-tiny) and a BPE trained on the slice (`--tokenizer_name train`), on slices
of ../shared/data (skipped when absent). Scoring rules are checked on stub models whose
probabilities are written out here.
"""

import argparse
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import accelerate
import datasets
import huggingface_hub.constants
import pytest
import torch
import transformers
from accelerate.state import PartialState
from conftest import read_jsonl, run_main, write_csv

import run_baseline as rb
import run_cls
import run_gen
from modeling_glm import GLMForConditionalGeneration, GLMForSequenceClassification
from glm_utils import train_tokenizer
from data import load_raw_datasets
from metrics import generation_metrics
from templates import PromptTemplate, build_prompted_examples, group_references, load_templates, select_template
from training import TrainingTracker, results_record

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TREC, E2E = SHARED / "data" / "trec", SHARED / "data" / "e2e_nlg_cleaned"
BPE_FILES = SHARED / "tokenizers" / "glm-roberta-large"
needs_trec = pytest.mark.skipif(not (TREC / "train.csv").is_file(), reason="../shared/data/trec not present")
needs_e2e = pytest.mark.skipif(not (E2E / "train.csv").is_file(), reason="../shared/data/e2e_nlg_cleaned not present")
needs_bpe = pytest.mark.skipif(not (BPE_FILES / "vocab.json").is_file(), reason="../shared/tokenizers not present")

# run_cls.py's results.json, key for key and in order: results_record's schema, then the key
# run_cls.py adds (data).
SCHEMA_KEYS = [*results_record(argparse.Namespace(), "cls", "any", script="any", prompt_id=None, prompt_name=None,
                               total_train_batch_size=1, tracker=TrainingTracker("accuracy"), plan=None,
                               validation=None, test=None, baselines={}, trainable_params=1, total_params=1), "data"]
TREC_CHOICES = ["Description", "Entity", "Abbreviation", "Person", "Quantity", "Location"]


def run(argv):
    return run_main(rb, argv)  # a fresh Accelerate state, as a new process would have it


@pytest.fixture(scope="module")
def trec(tmp_path_factory):
    """The first 48 TREC training rows (train AND validation: a run must fit what it trains on) and
    the first 37 test rows."""
    folder = tmp_path_factory.mktemp("trec")
    train = list(csv.DictReader(open(TREC / "train.csv", encoding="utf-8")))
    test = list(csv.DictReader(open(TREC / "test.csv", encoding="utf-8")))
    return {"train": write_csv(folder / "train48.csv", train[:48]), "test": write_csv(folder / "test37.csv", test[:37]),
            "texts": [row["text"] for row in test[:37]]}


def trec_run(trec, out, method, model, steps, eval_steps):
    return run(["--method", method, "--model_name_or_path", model, "--tokenizer_name", "train",
                "--dataset_name", "trec", "--train_file", trec["train"], "--validation_file", trec["train"],
                "--test_file", trec["test"], "--output_dir", out, "--seed", 0, "--learning_rate", 1e-3,
                "--per_device_train_batch_size", 16, "--max_train_steps", steps, "--eval_steps", eval_steps])


def assert_learned(record, steps, eval_steps):
    """Training loss falls and the best validation (= the 48 training rows) beats the majority class."""
    losses = [epoch["train_loss"] for epoch in record["epochs"]]
    assert [epoch["step"] for epoch in record["epochs"]] == list(range(eval_steps, steps + 1, eval_steps))
    assert losses[-1] < losses[0] - 0.5, losses
    majority = 12 / 48  # the commonest class of the 48 rows
    assert record["validation"]["accuracy"] >= majority + 0.25, record["epochs"]


def assert_cls_outputs(out, record, method, model, prompt_id):
    saved = json.loads((out / "results.json").read_text())
    assert list(saved) == SCHEMA_KEYS == list(record)
    assert (saved["script"], saved["task"], saved["method"], saved["peft"]) == ("run_baseline.py", "cls", method, None)
    assert (saved["model_name_or_path"], saved["dataset"], saved["prompt_id"]) == (model, "trec", prompt_id)
    assert set(saved["test"]) == set(saved["baselines"]["majority_class"]) == {"accuracy", "macro_f1"}
    assert saved["data"]["train"]["kept"] == 48 and saved["data"]["test"]["kept"] == 37
    assert saved["trainable_params"] == saved["total_params"]
    rows = read_jsonl(out / "predictions_test.jsonl")
    assert len(rows) == 37
    for row in rows:
        assert set(row) == {"input", "gold", "predicted", "scores"} and list(row["scores"]) == TREC_CHOICES
        assert row["predicted"] == max(row["scores"], key=row["scores"].get)
    assert sum(r["predicted"] == r["gold"] for r in rows) / 37 == pytest.approx(saved["test"]["accuracy"])
    return rows


# ----------------------------------------------------------------------------- each method learns


@needs_trec
def test_linear_head_on_roberta_reads_the_raw_text_and_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "linear_head", "roberta-tiny", 40, 10)
    assert_learned(record, 40, 10)
    rows = assert_cls_outputs(tmp_path / "run", record, "linear_head", "roberta-tiny", None)
    # No template: the model read the question itself, and the prompt is recorded as none.
    assert [row["input"] for row in rows] == trec["texts"]
    assert record["prompt_name"] is None and record["args"]["text_column"] is None


@needs_trec
def test_a_process_other_than_the_main_one_finishes_without_writing(trec, tmp_path, monkeypatch):
    # What rank 1 of a 2-process launch does: every step, but no files and no record.
    monkeypatch.setattr(accelerate.Accelerator, "is_main_process", property(lambda self: False))
    assert trec_run(trec, tmp_path / "run", "linear_head", "roberta-tiny", 2, 2) is None
    assert not (tmp_path / "run" / "results.json").exists()


@needs_trec
def test_linear_head_on_glm_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "linear_head", "glm-tiny", 40, 10)
    assert_learned(record, 40, 10)
    assert_cls_outputs(tmp_path / "run", record, "linear_head", "glm-tiny", None)


@needs_trec
def test_mlm_prompt_fills_the_templates_answer_slot_and_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "mlm_prompt", "roberta-tiny", 40, 10)
    assert_learned(record, 40, 10)
    rows = assert_cls_outputs(tmp_path / "run", record, "mlm_prompt", "roberta-tiny", 0)
    assert record["prompt_name"] == "pick_the_best_descriptor"
    assert all(row["input"].startswith("Question: ") and row["input"].endswith("Best Descriptor? [MASK]")
               for row in rows)


@needs_trec
def test_seq2seq_rank_classification_learns(trec, tmp_path):
    record = trec_run(trec, tmp_path / "run", "seq2seq", "bart-tiny", 50, 25)
    assert_learned(record, 50, 25)
    assert_cls_outputs(tmp_path / "run", record, "seq2seq", "bart-tiny", 0)


@needs_e2e
def test_seq2seq_generation_on_e2e_decodes_each_source_once_against_all_references(tmp_path):
    out = tmp_path / "e2e"
    record = run(["--task", "gen", "--method", "seq2seq", "--model_name_or_path", "t5-tiny", "--tokenizer_name",
                  "train", "--dataset_name", "e2e_nlg_cleaned", "--train_file", E2E / "train.csv", "--validation_file", E2E / "validation.csv",
                  "--test_file", E2E / "test.csv", "--max_train_samples", 96, "--max_eval_samples", 8,
                  "--max_test_samples", 12, "--output_dir", out, "--learning_rate", 1e-3,
                  "--per_device_train_batch_size", 8, "--max_train_steps", 20, "--eval_steps", 10,
                  "--num_beams", 2, "--max_target_length", 24])
    losses = [epoch["train_loss"] for epoch in record["epochs"]]
    assert losses[-1] < losses[0] - 1.0, losses
    assert list(json.loads((out / "results.json").read_text())) == SCHEMA_KEYS
    assert (record["task"], record["method"], record["dataset"], record["prompt_id"]) == ("gen", "seq2seq",
                                                                                          "e2e_nlg_cleaned", 0)
    assert set(record["test"]) == set(record["baselines"]["most_frequent_reference"]) == {
        "bleu", "rouge1", "rouge2", "rougeL", "gen_len"}
    raw = load_raw_datasets("e2e_nlg_cleaned", test_file=E2E / "test.csv")
    template = load_templates("e2e_nlg_cleaned", task="gen")[0]
    examples, _ = build_prompted_examples(raw["test"].select(range(12)), template, "gen")
    sources, references = group_references(examples)
    rows = read_jsonl(out / "generations_test.jsonl")
    assert [r["source"] for r in rows] == sources and [r["references"] for r in rows] == references
    assert all(row["prediction"] for row in rows)
    assert generation_metrics([r["prediction"] for r in rows], references) == pytest.approx(record["test"])


# ----------------------------------------------------------------------------- scoring rules


class StubSeq2Seq(torch.nn.Module):
    """Ignores the input: the decoder's next-token distribution at target position t is P[t]."""

    P = torch.tensor([[0.1, 0.1, 0.2, 0.6], [0.05, 0.05, 0.05, 0.85], [0.2, 0.2, 0.1, 0.5]])

    def forward(self, input_ids, attention_mask, labels):
        return SimpleNamespace(logits=self.P.log()[None, : labels.shape[1]].expand(labels.shape[0], -1, -1))


def rank_batch(features, num_choices):
    return rb.collate_rank(features, pad_token_id=0, num_choices=num_choices)


def test_rank_classification_sums_the_choice_log_probabilities_and_picks_the_highest():
    # Example 0 has choices X = [1] and Y = [2, 3, 3]; example 1 has only Z = [3, 3].
    features = [{"index": 0, "input_ids": [5, 6], "choice_labels": [[1], [2, 3, 3]], "label": 0},
                {"index": 1, "input_ids": [7], "choice_labels": [[3, 3]], "label": 0}]
    batch = rank_batch(features, 2)
    x, y, z = 0.1, 0.2 * 0.85 * 0.5, 0.6 * 0.85  # p(X) = P[0][1]; p(Y) = P[0][2] P[1][3] P[2][3]; ...
    scores = rb.rank_choices(StubSeq2Seq(), batch, "sum")
    torch.testing.assert_close(scores, torch.tensor([[x, y], [z, 0.0]]).log().index_put_(
        (torch.tensor([1]), torch.tensor([1])), torch.tensor(float("-inf"))))  # a padding choice never wins
    assert scores.argmax(-1).tolist() == [0, 0]  # log 0.1 = -2.30 beats log 0.085 = -2.47
    # Length-normalised, the 3-token Y wins: -2.47 / 3 = -0.82 > -2.30.
    normalised = rb.rank_choices(StubSeq2Seq(), batch, "mean")
    torch.testing.assert_close(normalised[0], torch.tensor([x, y]).log() / torch.tensor([1.0, 3.0]))
    assert normalised.argmax(-1).tolist() == [1, 0]


def test_rank_classification_of_a_real_tiny_t5_is_minus_its_loss_times_the_target_length():
    tokenizer = train_tokenizer(["Who wrote Hamlet ?", "Person", "Location", "Entity"] * 5, vocab_size=300)
    tokenizer.pad_token = "<pad>"
    torch.manual_seed(0)
    model = rb.transformers.AutoModelForSeq2SeqLM.from_config(rb.tiny_config("t5", tokenizer)).eval()
    source = tokenizer("Who wrote Hamlet ?")["input_ids"]
    choices = tokenizer(["Person", "Location", "Entity"])["input_ids"]
    scores = rb.rank_choices(model, rank_batch([{"index": 0, "input_ids": source, "choice_labels": choices,
                                                  "label": 0}], 3))
    for c, target in enumerate(choices):
        loss = model(input_ids=torch.tensor([source]), labels=torch.tensor([target])).loss
        assert scores[0, c].item() == pytest.approx(-loss.item() * len(target), rel=1e-5)


class StubMaskedLM(torch.nn.Module):
    """A MaskedLMScorer stand-in: the distribution at (row r, position s) is P[(r, s)]."""

    P = {(0, 3): [0.1, 0.6, 0.3], (1, 3): [0.5, 0.2, 0.3], (1, 4): [0.1, 0.1, 0.8]}

    def forward(self, input_ids, attention_mask, score_row, score_pos):
        return torch.tensor([self.P[(r, s)] for r, s in zip(score_row.tolist(), score_pos.tolist())]).log()


def test_mlm_prompt_scores_each_choice_by_the_mean_log_probability_of_its_tokens_one_mask_each():
    # Choices A = [1] and C = [2] are read at the 1-mask prompt (row 0), B = [0, 2] at the 2-mask one.
    feature = {"index": 0, "rows": [[9, 9, 9, 7, 9], [9, 9, 9, 7, 7, 9]], "label": 1,
               "choices": [(0, 3, [1]), (1, 3, [0, 2]), (0, 3, [2])]}
    batch = rb.collate_mlm([feature], pad_token_id=9, num_choices=4)
    a, b, c = 0.6, 0.5 * 0.8, 0.3
    mean = rb.score_mlm_choices(StubMaskedLM(), batch, "mean")
    expected = [torch.tensor(a).log(), torch.tensor(b).log() / 2, torch.tensor(c).log(), float("-inf")]
    torch.testing.assert_close(mean, torch.tensor([expected]))
    assert mean.argmax(-1).item() == 1  # log 0.4 / 2 = -0.46 beats log 0.6 = -0.51
    total = rb.score_mlm_choices(StubMaskedLM(), batch, "sum")
    assert total.argmax(-1).item() == 0 and total[0, 1].item() == pytest.approx(torch.tensor(b).log().item())


def test_mlm_inputs_hold_one_prompt_per_choice_length_and_keep_the_masks_when_cut():
    tokenizer = train_tokenizer(["Is this a question ? good bad", "really awful movie"] * 5, vocab_size=280)
    example = {"input": "Is this a question ? " * 10, "choices": ["good", "bad", "really awful"], "label": 2}
    lengths = [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in example["choices"]]
    feature = rb.encode_mlm(tokenizer, [example], max_length=24)[0]
    assert len(feature["rows"]) == len(set(lengths)) >= 2
    for (row, start, ids), n in zip(feature["choices"], lengths):
        tokens = feature["rows"][row]
        assert len(tokens) == 24 and tokens[0] == tokenizer.bos_token_id and tokens[-1] == tokenizer.eos_token_id
        assert tokens.count(tokenizer.mask_token_id) == n == len(ids)
        assert tokens[start:start + n] == [tokenizer.mask_token_id] * n and start + n == 23  # the slot ends the prompt


def test_linear_head_text_columns_come_from_the_templates_input_part():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    rows = datasets.Dataset.from_dict({"text": ["q ?"], "label_coarse": [0], "label_fine": [0]})
    assert rb.default_text_columns(trec1, rows) == ["text"]
    pair = PromptTemplate("pair", "{{premise}} Question: {{hypothesis}} ||| {{answer_choices[label]}}",
                             "yes ||| no", True, "test")
    nli = datasets.Dataset.from_dict({"hypothesis": ["h"], "premise": ["p"], "label": [1]})
    assert rb.default_text_columns(pair, nli) == ["premise", "hypothesis"]
    named = PromptTemplate("named", "{{review}} ||| {{sentiment}}", "positive ||| negative", True, "test")
    reviews = datasets.Dataset.from_dict({"review": ["fine"], "sentiment": ["positive"]})
    assert rb.default_text_columns(named, reviews) == ["review"]  # the target's column is no input


# ----------------------------------------------------------------------------- models, tokenizers, flags


@needs_bpe
def test_the_shared_bpe_files_load_as_the_roberta_tokenizer():
    tokenizer = rb.roberta_bpe_tokenizer(BPE_FILES)
    assert len(tokenizer) == 50265
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id] == [0, 1, 2, 3, 50264]
    ids = tokenizer("Hello world <mask><mask>?")["input_ids"]
    assert ids == [0, 31414, 232, 50264, 50264, 116, 2]  # <mask> absorbs the space before it, as in RoBERTa
    assert tokenizer(" Description", add_special_tokens=False)["input_ids"] == [33425]


def test_tiny_configs_take_their_special_ids_from_the_tokenizer():
    tokenizer = train_tokenizer(["a b c d"] * 5, vocab_size=270)
    tokenizer.pad_token = "<pad>"
    t5, bart = rb.tiny_config("t5", tokenizer), rb.tiny_config("bart", tokenizer)
    roberta = rb.tiny_config("roberta", tokenizer, num_labels=6, max_positions=256)
    assert (t5.vocab_size, t5.pad_token_id, t5.eos_token_id, t5.decoder_start_token_id) == (len(tokenizer), 1, 2, 1)
    assert (bart.pad_token_id, bart.bos_token_id, bart.eos_token_id, bart.decoder_start_token_id) == (1, 0, 2, 2)
    assert (roberta.num_labels, roberta.max_position_embeddings, roberta.pad_token_id) == (6, 258, 1)
    assert (t5.num_layers, t5.d_model, t5.num_heads, t5.d_ff) == (2, 256, 4, 1024)


@pytest.mark.parametrize("method, family, adapted, head", [
    ("linear_head", "roberta", {"query", "key", "value", "dense"}, "classifier"),  # dense: attention + FFN output
    ("seq2seq", "t5", {"q", "k", "v", "o", "wi", "wo"}, None),
    ("linear_head", "glm", {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}, "classifier"),
])  # fmt: skip
def test_lora_adapts_the_projections_of_each_architecture_and_trains_a_new_head_in_full(method, family, adapted,
                                                                                        head):
    PartialState()  # the script logs through Accelerate
    tokenizer = train_tokenizer(["a b c d"] * 5, vocab_size=270)
    name = {"roberta": "roberta-tiny", "t5": "t5-tiny", "glm": "glm-tiny"}[family]
    args = rb.parse_args(["--method", method, "--peft", "lora", "--output_dir", "unused", "--model_name_or_path", name,
                          "--tokenizer_name", "train"])
    model = rb.load_baseline_model(args, family, tokenizer, 6 if method == "linear_head" else None)
    model = rb.apply_baseline_peft(model, args, family)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in trained if "lora_" in n]
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == adapted
    assert not any(head and head in n for n in lora)  # the head is trained in full, not adapted
    assert sorted(set(trained) - set(lora)) == sorted(n for n in trained if head and head in n)
    assert (head is None) or any(head in n for n in trained)


@pytest.mark.parametrize("flags, message", [
    (["--method", "linear_head", "--peft", "ptuning_v2"], "incompatible with the baselines"),
    (["--task", "gen", "--method", "linear_head"], "does cls only"),
    (["--task", "gen", "--method", "mlm_prompt"], "does cls only"),
    ([], "--method is required"),
    (["--method", "seq2seq", "--do_sample", "--num_beams", "4"], "1 with --do_sample"),
    (["--method", "mlm_prompt", "--text_column", "text"], "--text_column is for --method linear_head"),
    (["--task", "gen", "--method", "seq2seq", "--num_shots", "8"], "--num_shots draws K examples per class: "
                                                                  "classification only"),
])  # fmt: skip
def test_incompatible_flags_fail_at_parsing(flags, message, capsys):
    with pytest.raises(SystemExit):
        rb.parse_args([*flags, "--output_dir", "unused"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method, model, message", [
    ("mlm_prompt", "glm-tiny", "run_cls.py"), ("mlm_prompt", "t5-tiny", "--method seq2seq"),
    ("seq2seq", "roberta-tiny", "--method linear_head"), ("seq2seq", "glm-tiny", "run_gen.py"),
])  # fmt: skip
def test_a_model_that_cannot_run_the_method_is_refused_with_what_fits(method, model, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        rb.check_method_and_model(method, rb.model_family(model), model)


def test_a_hub_model_offline_fails_before_any_work_naming_the_tiny_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="roberta-large.*roberta-tiny\\|t5-tiny\\|bart-tiny\\|glm-tiny.*--tokenizer_name"):
        run(["--method", "linear_head", "--output_dir", tmp_path / "never"])  # default model: roberta-large
    assert not (tmp_path / "never").exists()
    with pytest.raises(OSError, match="tokenizer 't5-large'.*t5-tiny"):
        rb.load_baseline_tokenizer(rb.parse_args(["--method", "seq2seq", "--output_dir", "x"]), "t5", [], tmp_path)


def test_a_tiny_model_without_a_tokenizer_says_which_to_pass(capsys):
    with pytest.raises(SystemExit):
        rb.parse_args(["--method", "seq2seq", "--model_name_or_path", "bart-tiny", "--output_dir", "x"])
    assert "bart-tiny has no tokenizer: pass --tokenizer_name train" in capsys.readouterr().err


def test_glm_linear_head_puts_a_new_head_on_the_checkpoints_body_and_round_trips(tmp_path):
    torch.manual_seed(0)
    GLMForConditionalGeneration.from_pretrained("glm-tiny", vocab_size=300).save_pretrained(tmp_path / "lm")
    lm = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "lm"))
    model = GLMForSequenceClassification.from_pretrained(str(tmp_path / "lm"), num_labels=3).eval()
    for name, value in lm.glm.state_dict().items():
        assert torch.equal(model.glm.state_dict()[name], value), name
    ids = torch.tensor([[0, 11, 12, 13, 2], [0, 14, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    logits = model(ids, mask, labels=torch.tensor([0, 2])).logits
    # The head reads <s> only, and padding changes nothing.
    torch.testing.assert_close(model(ids[1:, :3]).logits, logits[1:])
    model.save_pretrained(tmp_path / "cls")
    again = GLMForSequenceClassification.from_pretrained(str(tmp_path / "cls")).eval()
    torch.testing.assert_close(again(ids, mask).logits, logits)
    with pytest.raises(ValueError, match="3-class head, not 4"):
        GLMForSequenceClassification.from_pretrained(str(tmp_path / "cls"), num_labels=4)


def test_list_prompts_needs_no_method_and_lists_the_tasks_prompts(capsys):
    assert rb.main(["--task", "gen", "--dataset_name", "e2e_nlg_cleaned", "--list_prompts"]) is None
    assert capsys.readouterr().out.splitlines()[0] == "0: coherent_text [promptsource]"


# ----------------------------------------------------------------------------- positions, hidden labels


def test_a_length_past_the_models_positions_is_refused_before_the_data(tmp_path):
    with pytest.raises(ValueError) as error:
        run(["--method", "linear_head", "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train",
             "--dataset_name", "fine_foods", "--max_seq_length", 600, "--output_dir", tmp_path / "never"])
    assert str(error.value) == "--max_seq_length 600 is longer than the 512 positions of glm-tiny; use at most 512"
    assert not (tmp_path / "never").exists()


def test_roberta_positions_start_after_its_padding_index(tmp_path):
    transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1).save_pretrained(tmp_path)
    transformers.BartConfig(max_position_embeddings=1024).save_pretrained(tmp_path / "bart")
    assert rb.max_model_positions(str(tmp_path), rb.model_family(str(tmp_path))) == 512
    assert rb.max_model_positions(str(tmp_path / "bart"), "bart") == 1024
    assert rb.max_model_positions("t5-tiny", "t5") is None  # built to fit the flags


def test_hidden_test_labels_give_predictions_only(tmp_path):
    rows = [{"text": f"{'great tasty' if i % 2 else 'awful bland'} {i}", "label_coarse": i % 6, "label_fine": 0}
            for i in range(12)]
    train = write_csv(tmp_path / "train.csv", rows)
    hidden = write_csv(tmp_path / "test.csv", [{**row, "label_coarse": -1} for row in rows[:5]])
    record = run(["--method", "linear_head", "--model_name_or_path", "roberta-tiny", "--tokenizer_name", "train",
                  "--dataset_name", "trec", "--train_file", train, "--validation_file", train, "--test_file", hidden,
                  "--max_train_steps", 1, "--output_dir", tmp_path / "run"])
    assert (record["test"], record["test_labels_hidden"], record["baselines"]) == (None, True, {})
    rows = read_jsonl(tmp_path / "run" / "predictions_test.jsonl")
    assert len(rows) == 5 and all(row["gold"] is None and row["predicted"] in TREC_CHOICES for row in rows)


def test_run_gen_refuses_num_shots_in_one_line(capsys):
    with pytest.raises(SystemExit):
        run_gen.parse_args(["--num_shots", "8", "--output_dir", "unused"])
    assert "--num_shots draws K examples per class: classification only" in capsys.readouterr().err


@needs_trec
def test_few_shot_cloze_and_linear_head_train_and_validate_on_the_same_rows(trec, tmp_path):
    def few_shot(script, out, *flags):
        return run_main(script, ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name",
                                 "train", "--train_file", trec["train"], "--test_file", trec["test"], "--num_shots", 2,
                                 "--shots_seed", 7, "--max_train_steps", 1, "--max_test_samples", 4,
                                 "--output_dir", tmp_path / out, *flags])  # fmt: skip

    cloze = few_shot(run_cls, "cloze", "--seed", 3, "--prompt_id", 1)
    head = few_shot(rb, "head", "--method", "linear_head", "--seed", 5)  # another training seed, the same draw

    assert cloze["few_shot"]["train_rows"] == head["few_shot"]["train_rows"]
    assert cloze["few_shot"]["validation_rows"] == head["few_shot"]["validation_rows"]
    # The 48 rows hold 12, 11, 2, 11, 8, 4 of the classes 0-5 (label_coarse, read here without data.py):
    # 2 of each for train, 2 more for validation but none of class 2 (ABBR), which had only 2.
    labels = [row["label_coarse"] for row in csv.DictReader(open(trec["train"], encoding="utf-8"))]
    for record in (cloze, head):
        train, validation = record["few_shot"]["train_rows"], record["few_shot"]["validation_rows"]
        assert not set(train) & set(validation)
        assert sorted(labels[i] for i in train) == ["0", "0", "1", "1", "2", "2", "3", "3", "4", "4", "5", "5"]
        assert sorted(labels[i] for i in validation) == ["0", "0", "1", "1", "3", "3", "4", "4", "5", "5"]
        assert record["few_shot"]["short_classes"] == ["2"]
        assert (record["data"]["train"]["kept"], record["data"]["validation"]["kept"]) == (12, 10)
        assert (record["args"]["num_shots"], record["args"]["shots_seed"]) == (2, 7)
    assert json.loads((tmp_path / "cloze" / "results.json").read_text())["few_shot"] == cloze["few_shot"]
