"""The README's offline commands, as written there, run end to end: the two quick starts (shortened to a
few steps) and "Train on your own data" (on small files written here)."""

import json
import random
import re
import shlex
from pathlib import Path

import pytest

import run_cls
import run_gen
from conftest import read_jsonl, run_main, write_csv

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


def readme_section(title):
    """The text of the README section `## title`, up to the next section."""
    text = README.read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def reviews(count, seed):
    """`count` rows of text,label: sentences made of a class's words and neutral ones, half each class."""
    words = {"positive": "lovely fresh great tasty friendly warm".split(),
             "negative": "stale cold awful bland rude soggy".split()}
    neutral = "the soup bread staff coffee table was and very our".split()
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = ("positive", "negative")[i % 2]
        sentence = rng.sample(neutral, 4) + rng.sample(words[label], 2)
        rng.shuffle(sentence)
        rows.append({"text": " ".join(sentence).capitalize() + ".", "label": label})
    return rows


def test_train_on_your_own_data_as_the_readme_says(tmp_path, monkeypatch, capsys):
    section = readme_section("Train on your own data")
    header = re.search(r"```csv\n(.*?)\n", section).group(1)
    yaml_text = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1).replace("\\\n", " ").splitlines()
    assert header == "text,label" and [command.split()[:2] for command in commands] == [["python", "run_cls.py"]] * 2

    monkeypatch.chdir(tmp_path)  # the README's relative paths: my_data/, my_prompts/, runs/
    (tmp_path / "my_prompts").mkdir()
    (tmp_path / "my_prompts" / "reviews.yaml").write_text(yaml_text, encoding="utf-8")
    (tmp_path / "my_data").mkdir()
    for split, count, seed in (("train", 48, 0), ("validation", 50, 1), ("test", 40, 2)):
        write_csv(tmp_path / "my_data" / f"{split}.csv", reviews(count, seed))

    listing, training = (shlex.split(command)[2:] for command in commands)
    run_cls.main(listing)
    listed = capsys.readouterr().out
    assert listed.startswith("0: all_in_all [my_prompts/reviews.yaml] choices: positive ||| negative")
    assert "All in all, it was [MASK]." in listed and "gold answer: positive" in listed
    record = run_main(run_cls, training)
    assert record["test"]["accuracy"] >= 0.9 > record["baselines"]["majority_class"]["accuracy"]
    assert len(read_jsonl(tmp_path / "runs" / "reviews" / "predictions_test.jsonl")) == 40
