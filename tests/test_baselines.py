"""Specification of baselines.py: the scoring rules of each baseline method, checked on stub models whose
probabilities are written out here and on tiny random models; its inputs, tokenizers, tiny configurations,
LoRA and the model checks. End-to-end runs of run_baseline.py are in test_run_baseline.py.
"""

from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import transformers
from accelerate.state import PartialState

import run_baseline as rb
from baselines import (
    apply_baseline_peft,
    check_method_and_model,
    collate_mlm,
    collate_rank,
    default_text_columns,
    encode_mlm,
    load_baseline_model,
    max_model_positions,
    model_family,
    rank_choices,
    roberta_bpe_tokenizer,
    score_mlm_choices,
    tiny_config,
)
from templates import PromptTemplate, load_templates, select_template
from tokenization_glm import train_tokenizer

BPE_FILES = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "glm-roberta-large"
needs_bpe = pytest.mark.skipif(not (BPE_FILES / "vocab.json").is_file(), reason="../shared/tokenizers not present")


# ----------------------------------------------------------------------------- scoring rules and inputs


class StubSeq2Seq(torch.nn.Module):
    """Ignores the input: the decoder's next-token distribution at target position t is P[t]."""

    P = torch.tensor([[0.1, 0.1, 0.2, 0.6], [0.05, 0.05, 0.05, 0.85], [0.2, 0.2, 0.1, 0.5]])

    def prepare_decoder_input_ids_from_labels(self, labels):
        return labels

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        B, T = decoder_input_ids.shape
        return SimpleNamespace(logits=self.P.log()[None, :T].expand(B, -1, -1))


def rank_batch(features, num_choices):
    return collate_rank(features, pad_token_id=0, num_choices=num_choices)


def test_rank_classification_sums_the_choice_log_probabilities_and_picks_the_highest():
    # Example 0 has choices X = [1] and Y = [2, 3, 3]; example 1 has only Z = [3, 3].
    features = [{"index": 0, "input_ids": [5, 6], "choice_labels": [[1], [2, 3, 3]], "label": 0},
                {"index": 1, "input_ids": [7], "choice_labels": [[3, 3]], "label": 0}]
    batch = rank_batch(features, 2)
    x, y, z = 0.1, 0.2 * 0.85 * 0.5, 0.6 * 0.85  # p(X) = P[0][1]; p(Y) = P[0][2] P[1][3] P[2][3]; ...
    scores = rank_choices(StubSeq2Seq(), batch, "sum")
    torch.testing.assert_close(scores, torch.tensor([[x, y], [z, 0.0]]).log().index_put_(
        (torch.tensor([1]), torch.tensor([1])), torch.tensor(float("-inf"))))  # a padding choice never wins
    assert scores.argmax(-1).tolist() == [0, 0]  # log 0.1 = -2.30 beats log 0.085 = -2.47
    # Length-normalised, the 3-token Y wins: -2.47 / 3 = -0.82 > -2.30.
    normalised = rank_choices(StubSeq2Seq(), batch, "mean")
    torch.testing.assert_close(normalised[0], torch.tensor([x, y]).log() / torch.tensor([1.0, 3.0]))
    assert normalised.argmax(-1).tolist() == [1, 0]


def test_rank_classification_of_a_real_tiny_t5_is_minus_its_loss_times_the_target_length():
    tokenizer = train_tokenizer(["Who wrote Hamlet ?", "Person", "Location", "Entity"] * 5, vocab_size=300)
    tokenizer.pad_token = "<pad>"
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(tiny_config("t5", tokenizer)).eval()
    source = tokenizer("Who wrote Hamlet ?")["input_ids"]
    choices = tokenizer(["Person", "Location", "Entity"])["input_ids"]
    scores = rank_choices(model, rank_batch([{"index": 0, "input_ids": source, "choice_labels": choices,
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
    batch = collate_mlm([feature], pad_token_id=9, num_choices=4)
    a, b, c = 0.6, 0.5 * 0.8, 0.3
    mean = score_mlm_choices(StubMaskedLM(), batch, "mean")
    expected = [torch.tensor(a).log(), torch.tensor(b).log() / 2, torch.tensor(c).log(), float("-inf")]
    torch.testing.assert_close(mean, torch.tensor([expected]))
    assert mean.argmax(-1).item() == 1  # log 0.4 / 2 = -0.46 beats log 0.6 = -0.51
    total = score_mlm_choices(StubMaskedLM(), batch, "sum")
    assert total.argmax(-1).item() == 0 and total[0, 1].item() == pytest.approx(torch.tensor(b).log().item())


def test_mlm_inputs_hold_one_prompt_per_choice_length_and_keep_the_masks_when_cut():
    tokenizer = train_tokenizer(["Is this a question ? good bad", "really awful movie"] * 5, vocab_size=280)
    example = {"input": "Is this a question ? " * 10, "choices": ["good", "bad", "really awful"], "label": 2}
    lengths = [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in example["choices"]]
    feature = encode_mlm(tokenizer, [example], max_length=24)[0]
    assert len(feature["rows"]) == len(set(lengths)) >= 2
    for (row, start, ids), n in zip(feature["choices"], lengths):
        tokens = feature["rows"][row]
        assert len(tokens) == 24 and tokens[0] == tokenizer.bos_token_id and tokens[-1] == tokenizer.eos_token_id
        assert tokens.count(tokenizer.mask_token_id) == n == len(ids)
        assert tokens[start:start + n] == [tokenizer.mask_token_id] * n and start + n == 23  # the slot ends the prompt


def test_linear_head_text_columns_come_from_the_templates_input_part():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    rows = datasets.Dataset.from_dict({"text": ["q ?"], "label_coarse": [0], "label_fine": [0]})
    assert default_text_columns(trec1, rows) == ["text"]
    pair = PromptTemplate("pair", "{{premise}} Question: {{hypothesis}} ||| {{answer_choices[label]}}",
                             "yes ||| no", True, "test")
    nli = datasets.Dataset.from_dict({"hypothesis": ["h"], "premise": ["p"], "label": [1]})
    assert default_text_columns(pair, nli) == ["premise", "hypothesis"]
    named = PromptTemplate("named", "{{review}} ||| {{sentiment}}", "positive ||| negative", True, "test")
    reviews = datasets.Dataset.from_dict({"review": ["fine"], "sentiment": ["positive"]})
    assert default_text_columns(named, reviews) == ["review"]  # the target's column is no input


# ----------------------------------------------------------------------------- models and tokenizers


@needs_bpe
def test_the_shared_bpe_files_load_as_the_roberta_tokenizer():
    tokenizer = roberta_bpe_tokenizer(BPE_FILES)
    assert len(tokenizer) == 50265
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id] == [0, 1, 2, 3, 50264]
    ids = tokenizer("Hello world <mask><mask>?")["input_ids"]
    assert ids == [0, 31414, 232, 50264, 50264, 116, 2]  # <mask> absorbs the space before it, as in RoBERTa
    assert tokenizer(" Description", add_special_tokens=False)["input_ids"] == [33425]


def test_tiny_configs_take_their_special_ids_from_the_tokenizer():
    tokenizer = train_tokenizer(["a b c d"] * 5, vocab_size=270)
    tokenizer.pad_token = "<pad>"
    t5, bart = tiny_config("t5", tokenizer), tiny_config("bart", tokenizer)
    roberta = tiny_config("roberta", tokenizer, num_labels=6, max_positions=256)
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
    model = load_baseline_model(args, family, tokenizer, 6 if method == "linear_head" else None)
    model = apply_baseline_peft(model, args, family)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in trained if "lora_" in n]
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == adapted
    assert not any(head and head in n for n in lora)  # the head is trained in full, not adapted
    assert sorted(set(trained) - set(lora)) == sorted(n for n in trained if head and head in n)
    assert (head is None) or any(head in n for n in trained)


@pytest.mark.parametrize("method, model, message", [
    ("mlm_prompt", "glm-tiny", "run_cls.py"), ("mlm_prompt", "t5-tiny", "--method seq2seq"),
    ("seq2seq", "roberta-tiny", "--method linear_head"), ("seq2seq", "glm-tiny", "run_gen.py"),
])  # fmt: skip
def test_a_model_that_cannot_run_the_method_is_refused_with_what_fits(method, model, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        check_method_and_model(method, model_family(model), model)


def test_roberta_positions_start_after_its_padding_index(tmp_path):
    transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1).save_pretrained(tmp_path)
    transformers.BartConfig(max_position_embeddings=1024).save_pretrained(tmp_path / "bart")
    assert max_model_positions(str(tmp_path), model_family(str(tmp_path))) == 512
    assert max_model_positions(str(tmp_path / "bart"), "bart") == 1024
    assert max_model_positions("t5-tiny", "t5") is None  # built to fit the flags
