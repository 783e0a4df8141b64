"""The levers (issue #26: calibration in metrics.py, demonstrations and label words in templates.py and
glm_utils.py) on hand-worked numbers: contextual calibration, demonstrations and label-word search; and
run_cls.py's --calibrate / --num_demonstrations / --search_verbalizers end to end."""

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import report
import run_cls
from conftest import read_jsonl, run_main, write_csv
from data import draw_demonstrations
from glm_utils import (
    best_combination,
    label_word_candidates,
    search_label_words,
    truncate_around,
    with_demonstrations,
)
from metrics import calibrate, content_free_distribution
from reporting.levers import ensemble_mean, ensemble_vote
from modeling_glm import UsageError
from templates import PromptTemplate, content_free_contexts, demonstration_ids, load_templates
from training import write_json_atomic, write_jsonl_atomic

from test_report import record, table_rows
from test_run_cls import TREC, needs_trec

# ----------------------------------------------------------------------------- calibration


def test_calibration_divides_by_the_content_free_distribution_and_renormalises():
    # Two content-free inputs with choice distributions (0.6, 0.2, 0.2) and (0.4, 0.3, 0.3): p_cf = (0.5, 0.25, 0.25).
    content_free = torch.tensor([[0.6, 0.2, 0.2], [0.4, 0.3, 0.3]]).log() + torch.tensor([[-3.0], [-7.0]])
    p_cf = content_free_distribution(content_free)
    assert torch.allclose(p_cf, torch.tensor([0.5, 0.25, 0.25]))
    # p = (0.5, 0.3, 0.2): p / p_cf = (1, 1.2, 0.8), renormalised by 3.
    q = calibrate(torch.tensor([[0.5, 0.3, 0.2]]).log() - 2.0, p_cf).exp()
    assert torch.allclose(q, torch.tensor([[1 / 3, 0.4, 0.8 / 3]]))
    # The content-free input itself becomes uniform (a single one: its own p_cf).
    alone = content_free[:1]
    assert torch.allclose(calibrate(alone, content_free_distribution(alone)).exp(), torch.full((1, 3), 1 / 3))


def test_content_free_contexts_blank_the_input_fields_and_keep_the_answer_slot():
    template = PromptTemplate("t", "Question: {{text}} Topic? ||| {{answer_choices[label]}}", "a ||| b", True, "test")
    contexts = content_free_contexts(template, {"text": "Who is he ?", "label": 1})
    assert contexts == ["Question: N/A Topic? [MASK]", "Question:  Topic? [MASK]"]


# ----------------------------------------------------------------------------- demonstrations


def test_demonstrations_are_k_per_class_from_train_never_the_example_itself():
    labels = [0, 0, 1, 1, 2]
    rows = {0: [0, 1], 1: [2, 3], 2: [4]}
    for index in range(5):
        drawn = draw_demonstrations(rows, 1, seed=7, split="train", index=index)
        assert index not in drawn
        assert sorted(labels[i] for i in drawn) == ([0, 1] if index == 4 else [0, 1, 2])  # 4: class 2's only one
    # Class 0 of example 0 can only be example 1; two per class take all a class has.
    assert 1 in draw_demonstrations(rows, 1, 7, "train", 0)
    assert sorted(draw_demonstrations(rows, 2, 7, "test", 0)) == [0, 1, 2, 3, 4]
    assert draw_demonstrations(rows, 1, 7, "test", 3) == draw_demonstrations(rows, 1, 7, "test", 3)  # seeded


def test_demonstration_ids_are_training_examples_with_their_answer_and_no_evaluation_row():
    class Words:  # one id per word
        vocabulary = {}

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [self.vocabulary.setdefault(w, len(self.vocabulary)) for w in text.split()]}

    def example(text, label):
        return {"context": f"{text} is [MASK]", "target": "ab"[label], "label": label}

    examples = {"train": [example("t0", 0), example("t1", 1), example("t2", 0)],
                "validation": [example("v0", 0)], "test": [example("s0", 1), example("s1", 0)]}
    tokenizer = Words()
    drawn = demonstration_ids(tokenizer, examples, 1, seed=0)
    words = {i: w for w, i in tokenizer.vocabulary.items()}
    texts = {split: [[" ".join(words[i] for i in demo) for demo in per_example] for per_example in lists]
             for split, lists in drawn.items()}  # fmt: skip
    allowed = {"t0 is a", "t1 is b", "t2 is a"}
    for split, per_example in texts.items():
        for index, demos in enumerate(per_example):
            # One per class, answers written in (train example 1 is the only one of its class).
            assert len(demos) == (1 if (split, index) == ("train", 1) else 2) and set(demos) <= allowed
            if split == "train":
                assert examples["train"][index]["context"].replace("[MASK]", "ab"[examples["train"][index]["label"]]) \
                    not in demos
    assert sorted(texts["train"][0]) == ["t1 is b", "t2 is a"]  # example 0's class has only t2 besides it


def test_demonstrations_follow_the_mask_and_are_dropped_first_when_too_long():
    context = [0, 6, 3, 7, 2]  # <s> x [MASK] y </s>
    demos = [[8, 9], [10, 11, 12]]
    assert with_demonstrations(context, demos, 10) == [0, 6, 3, 7, 8, 9, 10, 11, 12, 2]
    assert with_demonstrations(context, demos, 9) == [0, 6, 3, 7, 8, 9, 2]  # the second does not fit
    # An input longer than the budget: no demonstration, then the builder's cut keeps [MASK].
    long_context = [0, *range(20, 30), 3, *range(30, 40), 2]
    kept = with_demonstrations(long_context, demos, 8)
    assert kept == long_context
    cut, mask = truncate_around(kept, 11, 12, 8)
    assert len(cut) == 8 and cut[mask] == 3


# ----------------------------------------------------------------------------- label-word search


def test_label_word_candidates_rank_each_class_words_without_those_likelier_elsewhere():
    # Words 0..4; word 4 is not allowed (e.g. punctuation).
    class_means = torch.tensor([[-1.0, -2.0, -0.5, -4.0, 0.0],
                                [-3.0, -1.5, -0.1, -2.0, 0.0]])
    allowed = torch.tensor([True, True, True, True, False])
    # Word 2 is likeliest in both classes but higher for class 1: it is class 1's alone.
    assert label_word_candidates(class_means, allowed, 1).tolist() == [[0], [2]]
    with pytest.raises(UsageError, match="class 0 has only 1 candidate"):
        label_word_candidates(class_means, allowed, 2)


def test_the_best_combination_is_chosen_on_validation_among_all_of_them():
    # 3 examples, 2 classes, 2 candidates each: log_probs[i, c, j].
    log_probs = torch.tensor([[[-1.0, -3.0], [-2.0, -0.5]],   # gold 0
                              [[-1.0, -3.0], [-0.5, -4.0]],   # gold 1
                              [[-2.0, -1.0], [-3.0, -3.0]]])  # gold 0
    # (0, 0): predicts 0, 1, 0 -> 3/3; (0, 1): 1, 0, 0 -> 1/3; (1, 0): 0, 1, 0 -> 3/3 (later); (1, 1): 1, 0, 0.
    assert best_combination(log_probs, torch.tensor([0, 1, 0])) == ((0, 0), 1.0, 4)
    assert best_combination(log_probs, torch.tensor([1, 0, 0])) == ((0, 1), 1.0, 4)


class PlantedModel(torch.nn.Module):
    """[MASK] logits set by hand: a context holding word "x" makes " great" likely (then " fine"), one
    holding "y" makes " awful" likely (then " bad"); "!" and "x" (no word form) are likeliest of all."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, position_ids, attention_mask, logits_positions):
        rows = []
        for ids in input_ids:
            logits = torch.zeros(len(PlantedTokenizer.tokens))
            logits[[10, 11]] = 9.0
            logits[[6, 8] if 11 in ids.tolist() else [7, 9]] = torch.tensor([5.0, 4.0])
            rows.append(logits)
        return SimpleNamespace(logits=torch.stack(rows))  # one scored position per row


class PlantedTokenizer:
    tokens = ["<s>", "<pad>", "</s>", "[MASK]", "<sop>", "<eop>", "Ġgreat", "Ġawful", "Ġfine", "Ġbad", "Ġ!", "x", "y"]
    pad_token_id, mask_token_id, sop_token_id, eop_token_id = 1, 3, 4, 5

    def __len__(self):
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids] if isinstance(ids, list) else self.tokens[ids]

    def decode(self, ids):
        return "".join(self.tokens[i] for i in ids).replace("Ġ", " ")


def test_label_word_search_picks_the_words_planted_in_the_mask_logits():
    def example(marker, label):
        return {"context_ids": [0, 11 if marker == "x" else 12, 3, 2], "label": label, "choices": ["a", "b"]}

    examples = {"train": [example("x", 0), example("y", 1), example("x", 0)],
                "validation": [example("y", 1), example("x", 0)]}
    found = search_label_words(PlantedModel(), PlantedTokenizer(), examples, 2, 16, 2, prefix_space=True)
    assert found["candidates"] == [["great", "fine"], ["awful", "bad"]]
    assert found["words"] == ["great", "awful"] and found["ids"] == [6, 7]
    assert found["validation_accuracy"] == 1.0 and found["combinations"] == 4


# ----------------------------------------------------------------------------- run_cls.py


@pytest.fixture(scope="module")
def trec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trec_levers")
    train = list(csv.DictReader(open(TREC / "train.csv", encoding="utf-8")))
    test = list(csv.DictReader(open(TREC / "test.csv", encoding="utf-8")))
    return {"train": write_csv(folder / "train.csv", train[:36]), "test": write_csv(folder / "test.csv", test[:20])}


def tiny(out, trec, *extra):
    return ["--dataset_name", "trec", "--model_name_or_path", "glm-tiny", "--tokenizer_name", "train",
            "--train_file", trec["train"], "--validation_file", trec["train"], "--test_file", trec["test"],
            "--output_dir", out, "--seed", 0, *extra]  # fmt: skip


@needs_trec
def test_calibrate_reports_both_metric_sets_and_keeps_both_scores(trec, tmp_path, capsys):
    out = tmp_path / "zs"
    record = run_main(run_cls, tiny(out, trec, "--no-do_train", "--calibrate"))
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"; calibrated {record['calibration']['test']['accuracy']:.4f}; results in" in last_line
    calibration = record["calibration"]
    p_cf = torch.tensor(list(calibration["p_cf"].values()))
    assert math.isclose(float(p_cf.sum()), 1.0, rel_tol=1e-5)
    rows = read_jsonl(out / "predictions_test.jsonl")
    raw = torch.tensor([list(row["scores"].values()) for row in rows])
    saved = torch.tensor([list(row["calibrated_scores"].values()) for row in rows])
    assert torch.allclose(saved, calibrate(raw, p_cf), atol=1e-5)
    gold = torch.tensor([list(row["scores"]).index(row["gold"]) for row in rows])
    assert calibration["test"]["accuracy"] == pytest.approx(float((saved.argmax(-1) == gold).float().mean()))
    assert record["test"]["accuracy"] == pytest.approx(float((raw.argmax(-1) == gold).float().mean()))
    assert json.loads((out / "results.json").read_text())["calibration"] == calibration
    assert set(calibration) == {"content_free_inputs", "p_cf", "validation", "test"}


@needs_trec
def test_demonstrations_lengthen_the_inputs_and_change_the_scores(trec, tmp_path):
    plain = run_main(run_cls, tiny(tmp_path / "plain", trec, "--no-do_train"))
    shown = run_main(run_cls, tiny(tmp_path / "demos", trec, "--no-do_train", "--num_demonstrations", 1))
    assert shown["args"]["num_demonstrations"] == 1 and plain["args"]["num_demonstrations"] == 0
    plain_rows = read_jsonl(tmp_path / "plain" / "predictions_test.jsonl")
    demo_rows = read_jsonl(tmp_path / "demos" / "predictions_test.jsonl")
    assert [r["input"] for r in plain_rows] == [r["input"] for r in demo_rows]
    assert all(a["scores"] != b["scores"] for a, b in zip(plain_rows, demo_rows))


@needs_trec
def test_search_verbalizers_writes_a_template_that_prompts_dir_loads(trec, tmp_path):
    out = tmp_path / "search"
    record = run_main(run_cls, tiny(out, trec, "--no-do_train", "--search_verbalizers", 2))
    found = record["label_word_search"]
    assert len(found["words"]) == 6 and len(found["candidates"]) == 6
    assert all(word in candidates for word, candidates in zip(found["words"], found["candidates"]))
    assert found["combinations"] == 2 ** 6
    rows = read_jsonl(out / "predictions_test.jsonl")
    assert list(rows[0]["scores"]) == found["words"]
    # The run's prompts list the searched words (the template "pick_the_best_descriptor" lists its choices).
    assert all(f"Descriptors: {', '.join(found['words'])}" in row["input"] for row in rows)
    assert record["prompt_name"] == "pick_the_best_descriptor (searched label words)"
    templates = load_templates("trec", None, out / "searched_prompts", "cls")
    searched = [t for t in templates if t.name == record["prompt_name"]]
    assert len(searched) == 1 and searched[0].answer_choices == " ||| ".join(found["words"])
    assert yaml.safe_load((out / "searched_prompts" / "trec.yaml").read_text())["templates"][0]["original_task"]


@pytest.mark.parametrize("flags, message", [
    (["--num_demonstrations", "-1"], "must be >= 0"),
    (["--num_demonstrations", "1", "--search_verbalizers", "2"], "search first"),
])  # fmt: skip
def test_impossible_lever_flags_fail_at_parsing(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cls.parse_args(["--output_dir", str(tmp_path), *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- the report


def test_the_ensemble_of_two_runs_scores_is_the_mean_of_their_log_probabilities():
    first = np.log([[0.5, 0.25, 0.25]])
    second = np.log([[0.2, 0.2, 0.6]]) - 3.0  # summed log-probs: normalised over the choices first
    expected = [[(math.log(0.5) + math.log(0.2)) / 2, (math.log(0.25) + math.log(0.2)) / 2,
                 (math.log(0.25) + math.log(0.6)) / 2]]
    assert np.allclose(ensemble_mean([first, second]), expected)
    # Vote: 2 of 3 prompts say choice 1; a 1-1 tie goes to the higher mean log-probability (choice 2 here).
    third = np.log([[0.1, 0.8, 0.1]])
    assert ensemble_vote([first, third, np.log([[0.3, 0.6, 0.1]])]).tolist() == [1]
    assert ensemble_vote([first, second]).tolist() == [2]


GOLD = [0, 0, 1, 1]
PROMPT_PROBS = {  # P(choice 0) per test example; accuracy 0.5 each
    0: [0.6, 0.4, 0.3, 0.55],
    1: [0.45, 0.9, 0.2, 0.6],
}


def write_run(folder, rec, probabilities, calibrated=False):
    """A run folder: results.json and predictions with P(choice 0) = `probabilities`; `calibrated`: also
    calibrated scores that get every example right."""
    folder.mkdir(parents=True)
    write_json_atomic(folder / "results.json", rec)
    rows = []
    for gold, p in zip(GOLD, probabilities):
        rows.append({"input": "q", "gold": ["yes", "no"][gold], "predicted": "yes" if p > 0.5 else "no",
                     "scores": {"yes": math.log(p), "no": math.log(1 - p)}})
        if calibrated:
            rows[-1]["calibrated_scores"] = {"yes": 0.0 if gold == 0 else -5.0, "no": -5.0 if gold == 0 else 0.0}
    write_jsonl_atomic(folder / "predictions_test.jsonl", rows)


def lever_runs(root):
    """Prompts 0 (validation 0.8) and 1 (0.6), seeds 1 and 2, with saved scores (prompt 0's runs also
    calibrated ones that get every example right); prompt 0 with demonstrations (validation 0.7), right on
    examples 0, 1, 2; zero-shot runs of prompt 0 (validation 0.4, calibrated) and 1 (validation 0.3)."""
    for prompt, val in ((0, 0.8), (1, 0.6)):
        for seed in (1, 2):
            write_run(root / f"p{prompt}_seed{seed}", record(prompt_id=prompt, seed=seed, val=val, test=0.5),
                      PROMPT_PROBS[prompt], calibrated=prompt == 0)
    for seed in (1, 2):
        write_run(root / f"demos_seed{seed}", record(prompt_id=0, seed=seed, val=0.7, test=0.75, num_demonstrations=1),
                  [0.6, 0.7, 0.3, 0.55])
    for prompt, val in ((0, 0.4), (1, 0.3)):
        write_run(root / f"zero_shot_p{prompt}", record(prompt_id=prompt, seed=1, val=val, test=0.5, epochs=[]),
                  PROMPT_PROBS[prompt], calibrated=prompt == 0)
    return root


def test_what_moves_the_score_tests_each_lever_and_says_what_is_missing(tmp_path):
    report.main([str(lever_runs(tmp_path / "runs")), "--output_dir", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    section = text[text.index("### What moves the score"):]
    rows = {(row[0], row[1]): row[2:] for row in table_rows(section) if row[0] not in ("Lever", "---")}
    # Mean log-prob and vote both get examples 0, 1, 2 right: 75% against prompt 0's 50%.
    assert rows[("prompt ensemble", "ensemble of 2 prompts (mean log-prob)")][:4] == \
        ["best single prompt (0)", "75.00", "50.00", "+25.00"]
    assert rows[("prompt ensemble", "ensemble of 2 prompts (vote)")][1:4] == ["75.00", "50.00", "+25.00"]
    # Prompt 0 (best on validation): its calibrated scores get all 4 right.
    assert rows[("calibration, fine-tuned", "calibrated")][:4] == ["raw", "100.00", "50.00", "+50.00"]
    # Zero-shot: prompt 0 is the best on validation; its calibrated predictions get all 4 right.
    assert rows[("calibration, zero-shot (prompt 0)", "calibrated")][:4] == ["raw", "100.00", "50.00", "+50.00"]
    # Demonstrations (prompt 0) against prompt 0 without them: 75 against 50.
    assert rows[("demonstrations", "with demonstrations")][:4] == ["without", "75.00", "50.00", "+25.00"]
    assert "label words: no runs to compare; add runs with `--search_verbalizers N`" in section
    assert "- prompt ensemble: ensemble of 2 prompts (mean log-prob) beats best single prompt (0) by 25.00 points" \
        in section


def test_calibration_with_answer_choices_that_vary_by_example_fails_before_any_work(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "pairs.yaml").write_text('templates:\n  - name: pick\n    jinja: "{{ q }} ||| {{ answer_choices[label] }}"\n'
                                        '    answer_choices: "{{ a }} ||| {{ b }}"\n')
    data = write_csv(tmp_path / "pairs.csv", [{"q": "Which?", "a": "red", "b": "blue", "label": 0},
                                              {"q": "Which?", "a": "cat", "b": "dog", "label": 1}] * 4)
    with pytest.raises(UsageError, match="--calibrate needs the same answer choices for every example; this prompt "
                                         "gives 2 different sets"):
        run_main(run_cls, ["--dataset_name", "pairs", "--prompts_dir", prompts, "--model_name_or_path", "glm-tiny",
                           "--tokenizer_name", "train", "--train_file", data, "--validation_file", data,
                           "--output_dir", tmp_path / "run", "--calibrate"])
    assert not (tmp_path / "run").exists()
