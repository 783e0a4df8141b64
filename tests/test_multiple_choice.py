"""Specification of multiple-choice datasets end to end (issue #28): answer choices read from each
example's own fields. The fixture tests/fixtures/endings has four endings per example of different
token lengths (an `endings` list and `ending0`..`ending3`), an optional `ctx_b` empty in some rows,
train / validation / test in JSON Lines and CSV, and its prompts in tests/fixtures/endings/prompts."""

import json
from pathlib import Path

import pytest

from reporting import error_analysis
import report
import run_cls
from conftest import read_jsonl, run_main, write_csv
from data import load_raw_datasets
from metrics import choice_baselines
from templates import PromptTemplate, build_prompted_examples, choice_fields, left_out_templates, list_fields, load_templates, select_template

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "endings"
PROMPTS = FIXTURE / "prompts"
SPLITS = ("train", "validation", "test")


def template(jinja, answer_choices=None):
    return PromptTemplate(name="t", jinja=jinja, answer_choices=answer_choices, original_task=True, source="test")


def endings_prompt(name):
    return select_template(load_templates("endings", None, PROMPTS, "cls"), prompt_name=name)


def endings_args(output_dir, *extra, ext="jsonl", files=None):
    files = files or {split: FIXTURE / f"{split}.{ext}" for split in SPLITS}
    return ["--dataset_name", "endings", "--prompts_dir", PROMPTS, "--model_name_or_path", "glm-tiny",
            "--tokenizer_name", "train", *[x for split in SPLITS for x in (f"--{split}_file", files[split])],
            "--output_dir", output_dir, "--seed", 0, "--per_device_train_batch_size", 8, *extra]  # fmt: skip


def test_list_fields_are_those_indexed_by_a_number_looped_over_or_given_to_a_list_filter():
    assert list_fields(template("{{a}} {{endings[0]}} {{d['key']}} ||| {{answer_choices[label]}}", "x ||| y")) == \
        {"endings"}
    assert list_fields(template("{{a}} ||| {{answer_choices[label]}}", "{{ends | join(' ||| ')}}")) == {"ends"}
    assert list_fields(template("{% for e in items %}{{e}}{% endfor %} ||| x", "x ||| y")) == {"items"}
    assert choice_fields(endings_prompt("continue_fields")) == {"ending0", "ending1", "ending2", "ending3"}
    assert choice_fields(endings_prompt("which_ending")) == set()


def test_left_out_templates_are_counted_with_their_reason():
    assert left_out_templates("endings", None, PROMPTS, "cls") == {"not the dataset's original task": ["write_ending"]}
    assert left_out_templates("endings", None, PROMPTS, "gen") == {
        "answer choices (a classification prompt)": ["continue_fields", "continue_list", "which_ending"],
        "not the dataset's original task": ["write_ending"],
    }
    trec = left_out_templates("trec")  # promptsource: 18 templates, 5 usable for TREC coarse
    assert (len(trec["not the dataset's original task"]), trec["predicts another task's labels (label_fine)"]) == \
        (11, ["fine_grained_open", "fine_grained_open_context_first"])
    assert len(load_templates("trec")) == 5


def test_list_prompts_says_which_templates_were_left_out_and_why(capsys, tmp_path):
    run_cls.main(["--list_prompts", "--dataset_name", "endings", "--prompts_dir", str(PROMPTS),
                  "--train_file", str(FIXTURE / "train.csv")])  # fmt: skip
    out = capsys.readouterr().out
    assert "left out, not the dataset's original task: 1 (write_ending)\n" in out
    assert "reading fields the data lacks" not in out
    assert "--- 1: continue_list\ncannot render this data: Template 'continue_list' reads 'endings' as a list" in out

    three = write_csv(tmp_path / "three.csv", [{"ctx_a": "A", "ctx_b": "", "ending0": "x", "ending1": "y z",
                                                 "ending2": "w", "label": i % 3} for i in range(4)])  # fmt: skip
    run_cls.main(["--list_prompts", "--dataset_name", "endings", "--prompts_dir", str(PROMPTS), "--train_file", str(three)])
    assert ("listed but unusable here, reading fields the data lacks: 3: 0 (ending3); 1 (endings); 2 (endings)\n"
            in capsys.readouterr().out)


def test_every_row_is_kept_when_an_optional_field_is_empty_in_jsonl_and_csv():
    for ext, name in (("jsonl", "continue_list"), ("csv", "continue_fields")):
        test = load_raw_datasets("endings", test_file=FIXTURE / f"test.{ext}")["test"]
        examples, counts = build_prompted_examples(test, endings_prompt(name), "cls", skip_empty=False)
        assert (counts["rows"], counts["kept"]) == (24, 24)
        empty = [i for i, row in enumerate(test) if not row["ctx_b"]]
        assert len(empty) == 3
        assert all(examples[i]["context"] == f"{test[i]['ctx_a']} [MASK]" for i in empty)
        assert [e["choices"] for e in examples] == [[row[f"ending{k}"] for k in range(4)] for row in test]


def test_a_list_field_in_a_csv_file_is_refused_in_one_line():
    test = load_raw_datasets("endings", test_file=FIXTURE / "test.csv")["test"]
    for name in ("continue_list", "which_ending"):
        with pytest.raises(ValueError, match=rf"^Template '{name}' reads 'endings' as a list, but the data holds text "
                                             r"there \('\[\"[^\n]*list fields need a JSON Lines file[^\n]*$"):
            build_prompted_examples(test, endings_prompt(name), "cls")


def test_an_empty_or_repeated_choice_of_a_rows_own_is_a_problem_of_that_row():
    rows = [{"ctx_a": "A", "ctx_b": "", **{f"ending{k}": e for k, e in enumerate(ends)}, "label": 0}
            for ends in (["a", "b c", "d", "e"], ["a", "", "d", "e"], ["a", "d", "d", "e"])]  # fmt: skip
    prompt = endings_prompt("continue_fields")
    with pytest.raises(ValueError, match=r"2 of 3 rows .*\n  row 1: its answer choices \['a', '', 'd', 'e'\] hold an "
                                         r"empty or repeated choice\n  row 2: [\s\S]*--skip_eval_rows"):
        build_prompted_examples(rows, prompt, "cls", skip_empty=False, skip_flag="--skip_eval_rows")
    examples, counts = build_prompted_examples(rows, prompt, "cls")
    assert (counts["kept"], counts["bad_choices"]) == (1, 2) and examples[0]["choices"] == ["a", "b c", "d", "e"]


def test_choice_baselines_by_hand():
    # Token counts of each example's choices, and the gold indices.
    lengths, labels = [[3, 1, 2], [2, 2, 5], [4, 3]], [1, 2, 0]
    baselines = choice_baselines(lengths, labels, 3)
    assert baselines["first_choice"]["accuracy"] == pytest.approx(1 / 3)  # picks 0, 0, 0
    assert baselines["shortest_choice"]["accuracy"] == pytest.approx(1 / 3)  # 1, 0 (the first of a tie), 1
    assert baselines["longest_choice"]["accuracy"] == pytest.approx(2 / 3)  # 0, 2, 0
    assert baselines["uniform_chance"] == {"accuracy": pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)}


def mc_rows(predicted):
    """Three examples with their own choices; gold positions 1, 3, 1 (1-based), `predicted` positions (0-based)."""
    examples = [(["x y", "z", "w v u"], 0), (["a", "b c d", "e f"], 2), (["p q", "r s t", "o"], 0)]
    return [{"input": f"q{i}", "gold": choices[gold], "predicted": choices[p],
             "scores": {c: float(k == p) for k, c in enumerate(choices)},
             "choice_tokens": [len(c.split()) for c in choices]}
            for i, ((choices, gold), p) in enumerate(zip(examples, predicted))]  # fmt: skip


def test_error_analysis_of_per_example_choices_is_by_position_with_the_length_facts():
    runs_rows = [mc_rows([1, 0, 2]), mc_rows([0, 0, 0])]  # seed 1 picks the shortest choice each time
    assert error_analysis.choices_vary(runs_rows)
    classes, matrix = error_analysis.per_class(runs_rows)
    assert classes["class"].tolist() == ["choice 1", "choice 2", "choice 3"]
    # Rows gold position, columns predicted position, both seeds.
    assert matrix.tolist() == [[2, 1, 1], [0, 0, 0], [2, 0, 0]]
    assert error_analysis.length_following(runs_rows) == {"predicted_shortest": 4 / 6, "gold_shortest": 0.0,
                                                          "predictions": 6}  # fmt: skip


def test_a_multiple_choice_dataset_end_to_end_every_test_row_scored_and_reported_by_position(tmp_path, capsys):
    runs = tmp_path / "runs"
    # A random glm-tiny barely trained (lr 1e-5, 2 steps) scores summed log-probabilities: it follows length.
    for prompt in (0, 1):
        run_main(run_cls, endings_args(runs / f"p{prompt}", "--prompt_id", prompt, "--learning_rate", 1e-5,
                                       "--max_train_steps", 2))  # fmt: skip
    zero_shot = run_main(run_cls, endings_args(runs / "p1_zero_shot", "--prompt_id", 1, "--no-do_train"))
    last_line = capsys.readouterr().out.splitlines()[-1]
    csv_fields = run_main(run_cls, endings_args(tmp_path / "csv_p0", "--prompt_id", 0, "--no-do_train", ext="csv"))

    gold = [row["label"] for row in read_jsonl(FIXTURE / "test.jsonl")]
    words = [[len(row[f"ending{k}"].split()) for k in range(4)] for row in read_jsonl(FIXTURE / "test.jsonl")]
    shortest = [min(range(4), key=w.__getitem__) for w in words]  # the fixture's endings differ in words
    assert zero_shot["data"]["test"]["kept"] == zero_shot["data"]["test"]["rows"] == 24
    assert zero_shot["baselines"]["first_choice"]["accuracy"] == pytest.approx(gold.count(0) / 24)
    assert zero_shot["baselines"]["shortest_choice"]["accuracy"] == pytest.approx(
        sum(s == g for s, g in zip(shortest, gold)) / 24)
    assert zero_shot["baselines"]["uniform_chance"]["accuracy"] == pytest.approx(0.25)
    assert "24 examples) vs majority class" in last_line and ", uniform chance 0.2500;" in last_line
    # A list field (JSON Lines) and four separate fields (CSV) give the same examples, hence the same scores.
    predictions = read_jsonl(runs / "p1_zero_shot" / "predictions_test.jsonl")
    assert predictions == read_jsonl(tmp_path / "csv_p0" / "predictions_test.jsonl")
    assert zero_shot["test"] == csv_fields["test"]
    assert [row["gold_index"] for row in predictions] == gold

    report.main([str(runs)])
    text = (runs / "report" / "report.md").read_text()
    assert len(text.encode()) < 100_000 and max(map(len, text.splitlines())) < 3000
    assert "| choice position " in text and "| choice 4 " in text and "**Reading.** Per choice position, F1" in text
    for baseline in ("first choice", "shortest choice", "longest choice", "uniform chance"):
        assert f"| {baseline} " in text
    assert "**Length.** The model picks the shortest choice (in tokens) in " in text
    assert "Its picks follow length" in text and "`--length_normalize`" in text
    assert ("Of the 2 prompts only prompt 1 (continue_list) has both a zero-shot and a fine-tuned test score") in text


def test_rows_a_prompt_cannot_render_are_refused_or_skipped_and_the_report_says_the_prompt_skipped_them(
        tmp_path, capsys):
    rows = read_jsonl(FIXTURE / "test.jsonl")
    rows[3]["endings"][2] = rows[3]["ending2"] = ""  # continue_fields cannot render row 4; which_ending can
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(row) + "\n" for row in rows))
    files = {"train": FIXTURE / "train.jsonl", "validation": FIXTURE / "validation.jsonl", "test": test}
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match=r"1 of 24 rows .*\n  .*test\.jsonl line 4 \(test split\): its answer "
                                         r"choices .* hold an empty or repeated choice\n[\s\S]*--skip_eval_rows"):
        run_main(run_cls, endings_args(runs / "strict", "--prompt_id", 0, "--max_train_steps", 1, files=files))
    assert not (runs / "strict").exists()  # refused before any work

    for prompt in (0, 2):
        record = run_main(run_cls, endings_args(runs / f"p{prompt}", "--prompt_id", prompt, "--max_train_steps", 2,
                                                "--skip_eval_rows", files=files))  # fmt: skip
    final_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test accuracy")]
    assert "on 23 of 24 test rows)" in final_lines[0] and "24 examples)" in final_lines[1]
    skipped = json.loads((runs / "p0" / "results.json").read_text())["data"]["test"]
    assert (skipped["kept"], skipped["rows"], skipped["bad_choices"]) == (23, 24, 1)
    assert record["data"]["test"]["kept"] == 24

    report.main([str(runs)])
    text = (runs / "report" / "report.md").read_text()
    assert ("- 1 run(s) of cls/endings read the same data as the 1 others, but a prompt skipped test rows it could "
            "not render (test examples 24 vs 23, of 24 test rows)") in text  # a tie: the first run is the main one
    assert "- Scored on 23 of 24 test rows: the prompt could not render the others" in text
    assert "used other data" not in text
