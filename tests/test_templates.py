"""Specification of templates.py: one behaviour per test, expected values worked out by hand."""

from pathlib import Path

import datasets
import jinja2.sandbox
import pytest

from data import (
    load_raw_datasets,
)
from templates import (
    PromptTemplate,
    build_prompted_examples,
    group_references,
    load_templates,
    make_cloze_context,
    make_mlm_context,
    render_example,
    select_template,
)

from conftest import write

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
PROMPTS = REPO / "prompts"



def template(jinja, answer_choices=None, name="t"):
    return PromptTemplate(name=name, jinja=jinja, answer_choices=answer_choices, original_task=True, source="test")


def test_trec_usable_classification_templates_are_the_coarse_promptsource_ones():
    names = [t.name for t in load_templates("trec", task="cls")]
    assert names == ["pick_the_best_descriptor", "trec1", "trec2", "what_category_best_describe", "which_category_best_describes"]


def test_e2e_usable_generation_templates():
    names = [t.name for t in load_templates("e2e_nlg_cleaned", task="gen")]
    assert names == ["coherent_text", "create_text_for_me", "generate_gramatically_correct_text", "generate_text_restaurant"]


def test_local_yaml_templates_for_the_offline_datasets():
    foods = load_templates("fine_foods", prompts_dir=PROMPTS, task="cls")
    breaches = load_templates("hhs_breaches", prompts_dir=PROMPTS, task="gen")
    assert [t.name for t in foods] == ["five_stars_question", "overall_verdict", "product_was_mask"]
    assert [t.name for t in breaches] == ["breach_fields", "summarize_breach_record", "what_happened"]
    assert {t.source for t in foods} == {str(PROMPTS / "fine_foods.yaml")}


def test_local_templates_come_after_promptsource_ones(tmp_path):
    write(tmp_path / "trec.yaml", 'templates:\n  - name: a_local\n    jinja: "{{text}} ||| {{answer_choices[label_coarse]}}"\n    answer_choices: "x ||| y"\n')
    templates = load_templates("trec", prompts_dir=tmp_path, task="cls")
    assert [t.name for t in templates][-2:] == ["which_category_best_describes", "a_local"]


def test_local_yaml_with_an_unknown_key_is_refused(tmp_path):
    write(tmp_path / "mine.yaml", "templates:\n  - name: a\n    jinja: 'x ||| y'\n    answer_choice: 'p ||| q'\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['answer_choice'\]"):
        load_templates("mine", prompts_dir=tmp_path, task="cls")


def test_no_usable_template_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="No usable gen templates for dataset 'trec'"):
        load_templates("trec", prompts_dir=tmp_path, task="gen")


def test_select_template_by_default_id_and_name():
    templates = load_templates("trec", task="cls")
    assert select_template(templates).name == "pick_the_best_descriptor"
    assert select_template(templates, prompt_id=2).name == "trec2"
    assert select_template(templates, prompt_name="trec1").name == "trec1"
    with pytest.raises(ValueError, match="Unknown --prompt_id 5; valid prompts:\n0: pick_the_best_descriptor"):
        select_template(templates, prompt_id=5)
    with pytest.raises(ValueError, match=r"(?s)Unknown --prompt_name 'nope'.*4: which_category_best_describes"):
        select_template(templates, prompt_name="nope")


def test_trec1_renders_the_exact_prompt_and_target():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    example = {"text": "How did serfdom develop in and then leave Russia ?", "label_coarse": 0, "label_fine": 0}
    input_text, target, choices = render_example(trec1, example)
    assert input_text == (
        "How did serfdom develop in and then leave Russia ?\n\n"
        "Is this asking about Description, Entity, Abbreviation, Person, Quantity, Location?"
    )
    assert target == "Description"
    assert choices == ["Description", "Entity", "Abbreviation", "Person", "Quantity", "Location"]


def test_separator_inside_a_field_does_not_split():
    input_text, target, _ = render_example(template("Q: {{q}} ||| {{a}}"), {"q": "a ||| b", "a": "c"})
    assert (input_text, target) == ("Q: a ||| b", "c")


def test_promptsource_filters_are_available():
    rendered = render_example(template("{{ words | most_frequent | join(',') }} ||| {{ [w] | choice }}"), {"words": ["b", "a", "b", "a", "c"], "w": "z"})
    assert rendered[:2] == ("b,a", "z")


def test_sandbox_refuses_python_internals():
    evil = template("{{ ''.__class__.__mro__ }} ||| x", name="evil")
    with pytest.raises(ValueError, match="Template 'evil' was refused by the sandbox") as caught:
        render_example(evil, {})
    assert isinstance(caught.value.__cause__, jinja2.sandbox.SecurityError)


def test_cloze_context_rules():
    assert make_cloze_context("Is it good?") == "Is it good? [MASK]"
    assert make_cloze_context("It was [MASK]. Great film.") == "It was [MASK]. Great film."
    with pytest.raises(ValueError, match="2 \\[MASK\\] tokens"):
        make_cloze_context("[MASK] and [MASK]")


def test_mlm_context_puts_n_mask_tokens_in_the_slot():
    assert make_mlm_context("Is it good?", "<mask>", 2) == "Is it good? <mask><mask>"
    assert make_mlm_context("It was [MASK].", "<mask>", 1) == "It was <mask>."
    with pytest.raises(ValueError, match=">= 1"):
        make_mlm_context("x", "<mask>", 0)


def test_missing_field_is_named_with_the_available_columns():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    dataset = datasets.Dataset.from_dict({"text": ["q"], "label": [0]})
    with pytest.raises(ValueError, match=r"reads field\(s\) \['label_coarse'\].*available columns: \['label', 'text'\]"):
        build_prompted_examples(dataset, trec1, "cls")


def test_target_outside_the_answer_choices_is_refused_with_its_row():
    yes_no = template("{{q}} ||| {{a}}", answer_choices="yes ||| no")
    rows = [{"q": "one?", "a": "yes"}, {"q": "two?", "a": "maybe"}]
    with pytest.raises(ValueError, match=r"Row 1: target 'maybe' .* answer choices \['yes', 'no'\]"):
        build_prompted_examples(rows, yes_no, "cls")


def test_label_index_out_of_range_fails_with_its_row():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    with pytest.raises(ValueError, match="Row 0: Template 'trec1' failed to render"):
        build_prompted_examples([{"text": "q", "label_coarse": 6, "label_fine": 0}], trec1, "cls")


def test_classification_needs_answer_choices():
    with pytest.raises(ValueError, match="no answer choices"):
        build_prompted_examples([{"q": "x"}], template("{{q}} ||| y"), "cls")


def test_empty_rows_are_skipped_and_counted():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    rows = [
        {"text": "Who wrote Hamlet ?", "label_coarse": 3, "label_fine": 4},
        {"text": "   ", "label_coarse": 0, "label_fine": 0},
        {"text": None, "label_coarse": 0, "label_fine": 0},
    ]
    examples, counts = build_prompted_examples(rows, trec1, "cls")
    assert counts == {"rows": 3, "kept": 1, "not_applicable": 0, "empty_field": 2, "empty_input": 0, "empty_target": 0}
    assert examples[0]["label"] == 3 and examples[0]["target"] == "Person"
    assert examples[0]["context"].endswith("Quantity, Location? [MASK]")
    with pytest.raises(ValueError, match="Row 1: empty field"):
        build_prompted_examples(rows, trec1, "cls", skip_empty=False)


def test_empty_target_is_skipped_for_generation():
    examples, counts = build_prompted_examples([{"mr": "a", "ref": "x"}, {"mr": "b", "ref": ""}], template("{{mr}} ||| {{ref}}"), "gen")
    assert [e["target"] for e in examples] == ["x"]
    assert (counts["kept"], counts["empty_field"]) == (1, 1)
    assert examples[0]["choices"] is None and examples[0]["label"] is None


def test_templates_that_render_nothing_are_not_applicable():
    conditional = template("{% if k == 1 %}{{q}} ||| {{answer_choices[0]}}{% endif %}", answer_choices="a ||| b")
    examples, counts = build_prompted_examples([{"k": 1, "q": "x"}, {"k": 2, "q": "y"}], conditional, "cls", skip_empty=False)
    assert len(examples) == 1 and counts["not_applicable"] == 1


@needs_shared
def test_e2e_validation_references_are_grouped_by_source():
    raw = load_raw_datasets("e2e_nlg_cleaned", validation_file=SHARED_DATA / "e2e_nlg_cleaned/validation.csv")
    create = select_template(load_templates("e2e_nlg_cleaned", task="gen"), prompt_name="create_text_for_me")
    examples, counts = build_prompted_examples(raw["validation"], create, "gen")
    sources, references = group_references(examples)
    # 2334 rows, 923 distinct meaning representations; the file opens with 3, 1, 2 references.
    assert counts["kept"] == 2334
    assert len(sources) == 923 and sum(map(len, references)) == 2334
    assert [len(r) for r in references[:3]] == [3, 1, 2]
    assert references[1] == ["Crowne Plaza Hotel has a coffee shop nearby with an average customer rating called Blue Spice."]
    assert sources[0] == (
        "How would we create an appropriate text out of the following data?\n"
        "name[Blue Spice], eatType[coffee shop], customer rating[5 out of 5], near[Crowne Plaza Hotel]"
    )


def test_group_references_keeps_first_appearance_order():
    rows = [{"source_key": "b", "target": "1"}, {"source_key": "a", "target": "2"}, {"source_key": "b", "target": "3"}]
    assert group_references(rows) == (["b", "a"], [["1", "3"], ["2"]])
