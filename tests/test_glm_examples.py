"""Specification of reporting/glm_examples.py: the folder `report.py --glm_examples DIR` writes for each
dataset, in the layout the GLM repository's examples/ asks for, and whose commands really run."""

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import report
from reporting.analysis import load_results
from reporting.glm_examples import code_files, sweep_command
from test_report import REPO, accuracy_runs, record, table_rows, write_runs

PARSE_EVERY_COMMAND = """
import importlib, json, sys
for argv in json.loads(sys.argv[1]):
    importlib.import_module(argv[0].removesuffix(".py")).parse_args(argv[1:])
print("parsed", len(json.loads(sys.argv[1])))
"""
DATA_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow", ".pt", ".bin", ".safetensors"}


def example_sweep(tmp_path):
    """A TREC sweep on local files (accuracy_runs, with their zero-shot run and a linear head of run_baseline.py)
    and a fine_foods one, whose prompts come from prompts/fine_foods.yaml; then report.py --glm_examples."""
    data = {"train_file": str(tmp_path / "mine" / "trec" / "train.csv"), "test_file": str(tmp_path / "mine" / "trec" / "test.csv"),
            "data_seed": 7}
    records = [record(lr=r["learning_rate"], bs=r["per_device_train_batch_size"], seed=r["seed"],
                      val=r["validation"]["accuracy"], test=r["test"]["accuracy"], **data) for r in accuracy_runs()]
    records.append(record(lr=1e-6, val=0.3, test=0.25, epochs=[], **data))  # zero-shot
    for seed in (1, 2):
        head = record(method="linear_head", model="roberta-tiny", prompt_id=None, seed=seed, val=0.5, test=0.4,
                      **data)  # fmt: skip
        head["script"] = "run_baseline.py"
        head["args"].update(method="linear_head", model_name_or_path="roberta-tiny", tokenizer_name="train")
        records.append(head)
    records += [record(dataset_name="fine_foods", lr=lr, seed=1, val=0.6, test=0.55) for lr in (1e-5, 3e-5)]
    results = write_runs(tmp_path / "runs", records)
    report.main([str(results), "--output_dir", str(tmp_path / "report"), "--glm_examples", str(tmp_path / "examples")])
    return tmp_path / "examples"


def clean_env():
    """No PYTHONPATH: the folder's own copies must be the modules that get imported."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_each_dataset_gets_a_folder_with_readme_requirements_and_code_but_no_data(tmp_path):
    examples = example_sweep(tmp_path)

    assert sorted(p.name for p in examples.iterdir()) == ["fine_foods", "trec"]  # the datasets' ids
    trec = examples / "trec"
    files = sorted(p.relative_to(trec).as_posix() for p in trec.rglob("*") if p.is_file())
    assert {"README.md", "requirements.txt", "sweeps.sh", "report.py", "run_cls.py", "run_baseline.py"} <= set(files)
    assert "run_gen.py" not in files and "run_pretrain.py" not in files  # no run used them
    assert not any(name.startswith("prompts/") for name in files)  # TREC's prompts are promptsource's
    assert {p.suffix for p in trec.rglob("*") if p.is_file()} <= {".py", ".sh", ".md", ".txt", ".bib"}
    assert not DATA_SUFFIXES & {p.suffix for p in examples.rglob("*")}
    assert files == sorted(["README.md", "requirements.txt", *code_files(["run_baseline.py", "run_cls.py"])])
    assert "prompts/fine_foods.yaml" in [p.relative_to(examples / "fine_foods").as_posix()
                                         for p in (examples / "fine_foods").rglob("*.yaml")]  # fmt: skip
    # The copied code is complete: the scripts and report.py import from the folder alone.
    done = subprocess.run([sys.executable, "-c", "import run_cls, run_baseline, report, training; print(training.__file__)"],
                          cwd=trec, env=clean_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(trec / "training.py")


def test_requirements_pin_the_versions_the_runs_recorded(tmp_path):
    trec = example_sweep(tmp_path) / "trec"

    lines = [line for line in (trec / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    requirements = {Requirement(line).name: str(Requirement(line).specifier) for line in lines}
    for package in ("torch", "transformers", "accelerate", "datasets", "peft"):  # results.json env of the records
        assert requirements[package] == f"=={Version(importlib.metadata.version(package)).public}"  # no "+cpu"
    assert "sacrebleu>=2.4,<3" in lines and "pytest" not in requirements  # a range of requirements.txt
    readme = (trec / "README.md").read_text()
    assert f"promptsource=={importlib.metadata.version('promptsource')}" in readme


def test_the_readme_commands_run_in_the_folder(tmp_path):
    trec = example_sweep(tmp_path) / "trec"
    readme = (trec / "README.md").read_text()

    assert readme.startswith("# TREC\n")
    headings = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert headings == ["Authors", "Task Description", "Running Commands", "Results", "Reference"]
    assert "put your copies in `data/`" in readme and "`CogComp/trec` from the Hugging Face Hub" in readme
    glm = table_rows(readme.split("## Results")[1])[1]
    assert glm[:3] == ["glm_cloze", "glm-tiny", "none"] and glm[6:8] == ["25.00", "65.00 ± 1.41"]  # zero-shot, test
    install, sweep_and_report, single_run = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert install.splitlines()[0] == "pip install -r requirements.txt"

    # The sweep, dry: its files are the folder's data/ (created here, as the README tells the user).
    sweep, report_command = sweep_and_report.strip().rsplit("\n", 1)
    (trec / "data").mkdir()
    for name in ("train.csv", "test.csv"):
        (trec / "data" / name).write_text("text,label_coarse\n")
    done = subprocess.run(["bash", "-c", sweep + " --dry-run"], cwd=trec, capture_output=True, text=True, timeout=120,
                          env={**clean_env(), "CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 8 + 2 + 1  # glm_cloze 2 lr x 2 bs x 2 seeds, the linear head 2 seeds, one zero-shot
    assert ["--train_file", "data/train.csv"] == commands[0][commands[0].index("--train_file"):][:2]
    assert sum("--no-do_train" in command for command in commands) == 1
    assert all(["--data_seed", "7"] == command[command.index("--data_seed"):][:2] for command in commands)
    assert "--data_seed 7" in single_run  # the runs' validation carve

    # Every command's arguments parse with the folder's own scripts.
    argvs = [command[1:] for command in commands] + [shlex.split(single_run.replace("\\\n", " "))[1:]]
    argvs.append(shlex.split(report_command)[1:])
    assert argvs[-2][:3] == ["run_cls.py", "--model_name_or_path", "glm-tiny"] and "--learning_rate" in argvs[-2]
    done = subprocess.run([sys.executable, "-c", PARSE_EVERY_COMMAND, json.dumps(argvs)], cwd=trec, env=clean_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"parsed {len(argvs)}"


def test_code_files_are_the_scripts_and_the_repository_modules_they_import():
    files = code_files(["report.py"])
    assert set(files) >= {"report.py", "sweeps.sh", "reporting/__init__.py", "reporting/analysis.py",
                          "reporting/error_analysis.py", "reporting/significance.py", "training.py"}
    assert "numpy.py" not in files and "run_cls.py" not in files
    closure = code_files(["run_cls.py"])
    for name in closure:  # every module of this repository a file of the closure imports is in it
        if name.endswith(".py"):
            tree = ast.parse((REPO / name).read_text())
            modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            files = {f"{module.replace('.', '/')}.py" for module in modules}
            assert {file for file in files if (REPO / file).is_file()} <= set(closure), name


def test_sweep_command_reproduces_the_grid_with_per_method_axes(tmp_path):
    records = accuracy_runs() + [
        record(peft="lora", lr=lr, seed=s) for lr in (5e-4, 1e-3) for s in (1, 2)
    ] + [record(method="linear_head", model="roberta-tiny", prompt_id=None, lr=lr, bs=bs, seed=s)
         for lr in (1e-5, 3e-5) for bs in (16, 32) for s in (1, 2)]  # fmt: skip
    runs = load_results(write_runs(tmp_path, records))

    command = sweep_command(runs, "cls", "trec")

    assert 'LEARNING_RATES="1e-5 3e-5"' in command and 'BATCH_SIZES="16 32"' in command
    assert 'PROMPT_IDS="0"' in command and 'SEEDS="1 2"' in command
    assert 'CLS_METHODS="glm_cloze glm_cloze+lora@lr=5e-4,1e-3@bs=16 baseline:roberta-tiny:linear_head@prompt=none"' in command
    assert command.endswith("./sweeps.sh --task cls --out runs/trec")


def test_a_local_tokenizer_folder_is_written_as_its_hub_name_never_as_the_authors_path(tmp_path):
    folder = tmp_path / "tokenizers" / "glm-roberta-large"
    folder.mkdir(parents=True)
    records = [record(seed=s, tokenizer_name=str(folder), model_name_or_path=str(tmp_path / "my-glm")) for s in (1, 2)]
    runs = load_results(write_runs(tmp_path / "runs", records))
    command = sweep_command(runs, "cls", "trec")
    assert 'TOKENIZER="BAAI/glm-roberta-large"' in command and 'MODEL="my-glm"' in command
    assert str(tmp_path) not in command


def test_glm_examples_of_a_few_shot_only_sweep_is_one_line_before_any_work(tmp_path, capsys):
    records = [record(seed=s, num_shots=8, shots_seed=0) for s in (1, 2)]
    results = write_runs(tmp_path / "runs", records)
    with pytest.raises(SystemExit) as stop:
        report.main([str(results), "--output_dir", str(tmp_path / "report"), "--glm_examples", str(tmp_path / "ex")])
    assert stop.value.code == 2 and not (tmp_path / "report").exists()
    assert capsys.readouterr().err == (
        "report.py: error: --glm_examples reports each dataset's full-data runs, but every run of trec is few-shot "
        '(--num_shots): add full-data runs to the sweep (./sweeps.sh --shots "full" with the same --out), or drop '
        "--glm_examples.\n")
