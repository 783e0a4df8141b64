"""Specification of templates.py: one behaviour per test, expected values worked out by hand."""

import argparse
from pathlib import Path

import jinja2.sandbox
import pytest
from conftest import write

from modeling_glm import UsageError
import templates
from templates import (
    LabelError,
    PromptTemplate,
    answer_fields,
    load_prompted_splits,
    load_templates,
    make_cloze_context,
    make_mlm_context,
    render_example,
    select_template,
)

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


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
    with pytest.raises(UsageError, match="^No usable gen templates for dataset 'mine'"):
        load_templates("mine", prompts_dir=tmp_path, task="gen")


def test_a_misspelt_dataset_name_gets_the_close_known_one():
    with pytest.raises(UsageError, match="^Did you mean --dataset_name fine_foods[?] No usable cls templates"):
        load_templates("fine_food", task="cls")


def test_a_dataset_with_prompts_of_the_other_task_only_is_sent_to_its_script(tmp_path):
    with pytest.raises(UsageError, match=r"The prompts of dataset 'trec' are classification prompts \(they have answer "
                                         r"choices\): run_cls.py is the script for them. For generation, write a "
                                         "prompt with no answer_choices in"):
        load_templates("trec", prompts_dir=tmp_path, task="gen")
    write(tmp_path / "mine.yaml", "templates:\n  - name: a\n    jinja: '{{x}} ||| {{y}}'\n")
    with pytest.raises(UsageError, match=r"generation prompts \(no answer choices\): run_gen.py is the script"):
        load_templates("mine", prompts_dir=tmp_path, task="cls")


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


def test_a_negative_label_never_picks_a_choice_from_the_end():
    pick = template("{{q}} ||| {{answer_choices[label]}}", answer_choices="a ||| b ||| c")
    assert render_example(pick, {"q": "x", "label": 2})[1] == "c"
    for label, why in ((-1, r"-1 is outside the 3 answer choices \(0 to 2\)"), ("1", "'1' is not a whole number")):
        with pytest.raises(LabelError, match=why):
            render_example(pick, {"q": "x", "label": label})


def test_answer_fields_are_those_read_after_the_separator():
    trec1 = select_template(load_templates("trec", task="cls"), prompt_name="trec1")
    create = select_template(load_templates("e2e_nlg_cleaned", task="gen"), prompt_name="create_text_for_me")
    assert answer_fields(trec1) == {"label_coarse"}
    assert answer_fields(create) == {"human_reference"}
    assert answer_fields(template("{% for w in words %}{{w}}{% endfor %} ||| {{ a | lower }}{{ b }}")) == {"a", "b"}


def test_a_wrong_prompt_is_found_before_the_data_is_read(tmp_path, monkeypatch):
    def no_data(*args):
        raise AssertionError("the data was read")

    monkeypatch.setattr(templates, "load_splits", no_data)
    args = argparse.Namespace(dataset_name="fine_foods", dataset_config_name=None, prompts_dir="prompts",
                              prompt_id=None, prompt_name=None)
    with pytest.raises(UsageError, match="run_cls.py is the script for them"):
        load_prompted_splits(args, "gen", do_train=True)
    with pytest.raises(UsageError, match="--prompt_id 99"):
        load_prompted_splits(argparse.Namespace(**{**vars(args), "prompt_id": 99}), "cls", do_train=True)
