"""report.py --glm_examples: per dataset, a folder in the layout the GLM repository's `examples/README.md` asks
of contributions: README.md (title, Authors, Task Description, Running Commands, Results, Reference),
requirements.txt pinned to the versions the runs recorded, and the code the runs used (no data files).
"""

import json
import modulefinder
import shutil
from collections import Counter
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from data import HUB_DATASETS
from modeling_glm import HUB_MODEL_ID
from reporting.analysis import (
    DATASET_TITLES,
    NO_PROMPT,
    SYSTEM,
    TASK_NAMES,
    add_scores,
    best_runs,
    choose_metric,
    metric_label,
    system_order,
    trivial_baselines,
)
from reporting.tables import fmt_lr, make_comparison_table
from training import environment_info

REPOSITORY = Path(__file__).resolve().parent.parent
COMMANDS = ("sweeps.sh", "report.py")  # the README's Running Commands besides the runs' scripts
NOT_REQUIRED = {"pytest"}  # an example folder holds no tests
DATA_FILE_ARGS = ("train_file", "validation_file", "test_file")
MODEL_ARGS = ("model_name_or_path", "tokenizer_name")

DATASET_DESCRIPTIONS = {
    "trec": (
        "TREC question classification (Li and Roth, 2002): about 5.5k training and 500 test English "
        "questions, each labelled with the type of its answer. We use the 6 coarse classes "
        "(description, entity, abbreviation, human, numeric value, location). Validation is a split "
        "of the training set. Metric: accuracy."
    ),
    "e2e_nlg_cleaned": (
        "E2E NLG, cleaned version (Novikova et al., 2017; Dušek et al., 2019): turn a restaurant's "
        "meaning representation (attribute[value] pairs such as `name[Aromi], food[Chinese]`) into a "
        "fluent English description. Several human references per input. Metric: corpus BLEU "
        "(sacrebleu) against all references, with ROUGE."
    ),
}
TASK_METHODS = {
    "cls": (
        "We fine-tune GLM (`{model}`) with prompts from promptsource: each input becomes a cloze "
        "question with one `[MASK]`, and every answer choice (verbalizer) is scored by GLM's blank "
        "infilling, with no new classification head."
    ),
    "gen": (
        "We fine-tune GLM (`{model}`) with prompts from promptsource: the prompt ends with a "
        "`[MASK]` that GLM fills autoregressively (blank infilling), trained with teacher forcing and "
        "decoded with beam search."
    ),
}
REFERENCES = {
    "glm": """@inproceedings{du-etal-2022-glm,
  title = {{GLM}: General Language Model Pretraining with Autoregressive Blank Infilling},
  author = {Du, Zhengxiao and Qian, Yujie and Liu, Xiao and Ding, Ming and Qiu, Jiezhong and Yang, Zhilin and Tang, Jie},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)},
  pages = {320--335},
  year = {2022}
}""",
    "trec": """@inproceedings{li-roth-2002-learning,
  title = {Learning Question Classifiers},
  author = {Li, Xin and Roth, Dan},
  booktitle = {{COLING} 2002: The 19th International Conference on Computational Linguistics},
  year = {2002}
}""",
    "e2e_nlg_cleaned": """@inproceedings{novikova-etal-2017-e2e,
  title = {The {E2E} Dataset: New Challenges For End-to-End Generation},
  author = {Novikova, Jekaterina and Du{\\v{s}}ek, Ond{\\v{r}}ej and Rieser, Verena},
  booktitle = {Proceedings of the 18th Annual {SIG}dial Meeting on Discourse and Dialogue},
  pages = {201--206},
  year = {2017}
}

@inproceedings{dusek-etal-2019-semantic,
  title = {Semantic Noise Matters for Neural Natural Language Generation},
  author = {Du{\\v{s}}ek, Ond{\\v{r}}ej and Howcroft, David M. and Rieser, Verena},
  booktitle = {Proceedings of the 12th International Conference on Natural Language Generation},
  pages = {421--426},
  year = {2019}
}""",
    "promptsource": """@inproceedings{bach-etal-2022-promptsource,
  title = {{P}rompt{S}ource: An Integrated Development Environment and Repository for Natural Language Prompts},
  author = {Bach, Stephen H. and Sanh, Victor and Yong, Zheng-Xin and others},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics: System Demonstrations},
  year = {2022}
}""",
    "ptuning_v2": """@inproceedings{liu-etal-2022-p,
  title = {{P}-Tuning: Prompt Tuning Can Be Comparable to Fine-tuning Across Scales and Tasks},
  author = {Liu, Xiao and Ji, Kaixuan and Fu, Yicheng and Tam, Weng and Du, Zhengxiao and Yang, Zhilin and Tang, Jie},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics (Volume 2: Short Papers)},
  pages = {61--68},
  year = {2022}
}""",
    "lora": """@inproceedings{hu2022lora,
  title = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations},
  year = {2022}
}""",
    "roberta": """@article{liu2019roberta,
  title = {{RoBERTa}: A Robustly Optimized {BERT} Pretraining Approach},
  author = {Liu, Yinhan and Ott, Myle and Goyal, Naman and Du, Jingfei and Joshi, Mandar and Chen, Danqi and Levy, Omer and Lewis, Mike and Zettlemoyer, Luke and Stoyanov, Veselin},
  journal = {arXiv preprint arXiv:1907.11692},
  year = {2019}
}""",
    "t5": """@article{raffel2020exploring,
  title = {Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer},
  author = {Raffel, Colin and Shazeer, Noam and Roberts, Adam and Lee, Katherine and Narang, Sharan and Matena, Michael and Zhou, Yanqi and Li, Wei and Liu, Peter J.},
  journal = {Journal of Machine Learning Research},
  volume = {21},
  number = {140},
  pages = {1--67},
  year = {2020}
}""",
    "bart": """@inproceedings{lewis-etal-2020-bart,
  title = {{BART}: Denoising Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and Comprehension},
  author = {Lewis, Mike and Liu, Yinhan and Goyal, Naman and Ghazvininejad, Marjan and Mohamed, Abdelrahman and Levy, Omer and Stoyanov, Veselin and Zettlemoyer, Luke},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics},
  pages = {7871--7880},
  year = {2020}
}""",
}

# Run arguments worth repeating in a command line (the others keep the scripts' defaults).
SETTING_ARGS = ("task", "method", "model_name_or_path", "tokenizer_name", "peft", "pre_seq_len", "lora_r")
DATA_ARGS = ("dataset_name", "train_file", "validation_file", "test_file", "data_seed")
GRID_ARGS = ("prompt_id", "learning_rate", "per_device_train_batch_size", "seed")
BUDGET_ARGS = (
    "num_train_epochs", "max_train_steps", "eval_steps", "max_train_samples", "max_eval_samples",
    "max_test_samples", "max_target_length", "num_beams",
)  # fmt: skip


def shell_value(value):
    """A value as written on a command line: 1e-4 rather than 0.0001."""
    if isinstance(value, float):
        short = fmt_lr(value)
        return short if float(short) == value else repr(value)
    return str(value)


def run_command(row):
    """A command line that repeats one run: its script and its main arguments (`portable_args`)."""
    args = portable_args(row["args"])
    if args.get("peft") in (None, "none"):
        args = {k: v for k, v in args.items() if k not in ("peft", "pre_seq_len", "lora_r")}
    names = SETTING_ARGS + DATA_ARGS + GRID_ARGS + BUDGET_ARGS
    parts = [f"python {row['script'] or 'run_cls.py'}"]
    parts += [f"--{k} {shell_value(args[k])}" for k in names if args.get(k) is not None]
    parts.append("--output_dir outputs/best")
    return " \\\n    ".join(parts)


def method_entry(row):
    """The sweeps.sh method entry of a run: glm_cloze, glm_gen+lora, baseline:roberta-large:linear_head."""
    if str(row["method"]).startswith("glm"):
        entry = row["method"]
    else:
        entry = f"baseline:{row['args'].get('model_name_or_path', row['model'])}:{row['method']}"
    return entry if row["peft"] == "none" else f"{entry}+{row['peft']}"


def _axis_values(column):
    """The values of a grid axis as sweeps.sh reads them: "1e-5 3e-5"."""
    values = sorted(column.dropna().unique())
    return " ".join("none" if v == NO_PROMPT and column.name == "prompt_id" else shell_value(v) for v in values)


def _constant_flags(runs, names):
    """ "--name value" for each argument that has one value in every run."""
    flags = []
    for name in names:
        values = {json.dumps(args.get(name)) for args in runs["args"]}
        value = runs["args"].iloc[0].get(name)
        if len(values) == 1 and value is not None:
            flags.append(f"--{name} {shell_value(value)}")
    return " ".join(flags)


def sweep_command(runs, task, dataset):
    """The sweeps.sh command that reruns the grid of these runs: GLM full fine-tuning's axes as the global
    ones, @lr= / @bs= / @prompt= / @seed= on the method entries whose axes differ, the shared flags."""
    glm = runs[runs["method"].str.startswith("glm") & (runs["peft"] == "none")]
    main = glm if len(glm) else runs
    axes = {"lr": ("LEARNING_RATES", "learning_rate"), "bs": ("BATCH_SIZES", "batch_size"),
            "prompt": ("PROMPT_IDS", "prompt_id"), "seed": ("SEEDS", "seed")}  # fmt: skip
    env = {variable: _axis_values(main[column]) for variable, column in axes.values()}
    entries = []
    for _, system_runs in sorted(runs.groupby(SYSTEM, sort=True), key=lambda item: system_order(item[1].iloc[0])):
        entry = method_entry(system_runs.iloc[0])
        for option, (variable, column) in axes.items():
            values = _axis_values(system_runs[column])
            if values != env[variable]:
                entry += f"@{option}={values.replace(' ', ',')}"
        entries.append(entry)
    prefix = task.upper()
    first = portable_args(main["args"].iloc[0])
    env["MODEL"] = first.get("model_name_or_path")
    env["TOKENIZER"] = first.get("tokenizer_name")
    env[f"{prefix}_DATASET"] = dataset
    env[f"{prefix}_METHODS"] = " ".join(entries)
    env[f"{prefix}_DATA_ARGS"] = _constant_flags(runs.assign(args=runs["args"].map(portable_args)), DATA_ARGS[1:])
    env["COMMON_ARGS"] = _constant_flags(runs, BUDGET_ARGS)
    for variable, peft, names in (("LORA_ARGS", "lora", ("lora_r",)), ("PTUNING_ARGS", "ptuning_v2", ("pre_seq_len",))):
        if (runs["peft"] == peft).any():
            env[variable] = _constant_flags(runs[runs["peft"] == peft], names)
    baselines = runs[~runs["method"].str.startswith("glm")]
    if len(baselines):
        env["BASELINE_ARGS"] = _constant_flags(baselines.assign(args=baselines["args"].map(portable_args)),
                                               ("tokenizer_name",))
    assignments = [f'{name}="{value}"' for name, value in env.items() if value]
    return " \\\n".join(assignments + [f"./sweeps.sh --task {task} --out runs/{dataset}"])


def references_for(runs, dataset):
    """Keys of REFERENCES cited by the runs of one dataset."""
    keys = ["glm", dataset, "promptsource"]
    text = " ".join(runs["peft"].astype(str)) + " " + " ".join(runs["model"].astype(str)).lower()
    keys += [k for k in ("lora", "ptuning_v2") if k in text]
    keys += [k for k in ("roberta", "t5", "bart") if k in text]
    return [k for k in dict.fromkeys(keys) if k in REFERENCES]


def portable_args(args):
    """A run's arguments with its data files as data/<file name> and a local model or tokenizer folder as its
    hub name (glm-roberta-large: BAAI/glm-roberta-large) or else its name: a public README shows no author's path."""
    def portable(name, value):
        if name in DATA_FILE_ARGS and value:
            return f"data/{Path(value).name}"
        if name in MODEL_ARGS and value and (Path(value).is_absolute() or Path(value).is_dir()):
            return HUB_MODEL_ID if Path(value).name == Path(HUB_MODEL_ID).name else Path(value).name
        return value

    return {name: portable(name, value) for name, value in args.items()}


def code_files(scripts):
    """The code an example needs (sorted): `scripts`, COMMANDS and the modules of this repository they import,
    transitively (modulefinder, without importing them)."""
    finder = modulefinder.ModuleFinder(path=[str(REPOSITORY)])  # this repository's modules only
    for name in [*scripts, *COMMANDS]:
        if name.endswith(".py"):
            finder.run_script(str(REPOSITORY / name))
    found = {Path(module.__file__).relative_to(REPOSITORY).as_posix() for module in finder.modules.values()
             if module.__file__ and Path(module.__file__).is_relative_to(REPOSITORY)}  # fmt: skip
    return sorted(found | set(scripts) | set(COMMANDS))


def prompt_files(runs, dataset):
    """{name in the example folder: path} of the runs' local prompt file `<prompts_dir>/<dataset>.yaml`, if any."""
    found = {}
    for prompts_dir in {args.get("prompts_dir") or "prompts" for args in runs["args"]}:
        path = REPOSITORY / prompts_dir / f"{dataset}.yaml"
        if path.is_file():
            found[f"prompts/{dataset}.yaml"] = path
    return found


def requirements_text(runs):
    """(requirements.txt: this repository's, each package pinned to the runs' most common public version
    ("2.13.0+cpu" -> "2.13.0"); python version; promptsource version, installed apart)."""
    versions = {}
    for env in runs["env"]:
        for package, version in env.items():
            if version and package not in ("python", "git_commit", "git_dirty"):
                versions.setdefault(canonicalize_name(package), Counter())[Version(version).public] += 1
    pinned = {package: counts.most_common(1)[0][0] for package, counts in versions.items()}
    lines = [f"# Versions the runs used (results.json env) are pinned; the rest are the toolkit's ranges. "
             f"promptsource=={pinned.get('promptsource', '0.2.3')} is installed apart, with --no-deps (README.md)."]
    for line in (REPOSITORY / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = canonicalize_name(Requirement(line).name)
        if name not in NOT_REQUIRED:
            lines.append(f"{Requirement(line).name}=={pinned[name]}" if name in pinned else line)
    pythons = Counter(env.get("python") for env in runs["env"] if env.get("python"))
    python = pythons.most_common(1)[0][0] if pythons else None
    return "\n".join(lines) + "\n", python, pinned.get("promptsource", "0.2.3")


def data_paragraph(runs, dataset):
    """How the runs got their data, in words (the GLM repository takes no data files)."""
    files = sorted({portable_args(args)[name] for args in runs["args"] for name in DATA_FILE_ARGS if args.get(name)})
    hub = HUB_DATASETS.get(dataset)
    from_hub = f"`--dataset_name {dataset}` loads `{hub}` from the Hugging Face Hub" if hub else \
        f"`--dataset_name {dataset}` loads the dataset (see data.py)"
    if not files:
        return f"Data: the scripts load it themselves: {from_hub}."
    listed = ", ".join(f"`{name}`" for name in files)
    return (f"Data: the runs read local files, {listed}, which are not part of this folder (the GLM repository takes no "
            f"data files): put your copies in `data/`, or drop the `--*_file` flags, and {from_hub}.")


def code_note(runs):
    """Which commit the runs used against the commit the copied code comes from, in words."""
    commits = sorted({env.get("git_commit") for env in runs["env"] if env.get("git_commit")})
    dirty = any(env.get("git_dirty") for env in runs["env"])
    now = environment_info()
    text = "The code in this folder is copied from the toolkit"
    text += f" at commit `{now['git_commit'][:12]}`" if now["git_commit"] else ""
    text += " (with uncommitted changes)" if now["git_dirty"] else ""
    if commits and (commits != [now["git_commit"]] or dirty or now["git_dirty"]):
        used = ", ".join(f"`{commit[:12]}`" for commit in commits)
        text += f"; the runs used commit(s) {used}{' with uncommitted changes' if dirty else ''}"
    return text + "."


def datasets_without_full_data_runs(runs):
    """The datasets (sorted) whose every run is few-shot: their main study, which an example reports, is empty."""
    return sorted(set(runs["dataset"]) - set(runs.loc[runs["study"] == "", "dataset"]))


def write_glm_examples(runs, comparisons, directory):
    """Write directory/<dataset>/ for every dataset of the runs; returns the folders."""
    return [write_glm_example(runs, comparisons, Path(directory) / dataset, dataset)
            for dataset in sorted(runs["dataset"].unique())]  # fmt: skip


def write_glm_example(runs, comparisons, folder, dataset):
    """Write `folder` for one dataset (module docstring), of its main study and each method's main variant:
    the runs one sweep command reproduces."""
    runs = runs[(runs["study"] == "") & (runs["variant"] == "") & (runs["dataset"] == dataset)]
    task = runs["task"].iloc[0]
    metric = choose_metric(runs)
    scored = add_scores(runs, metric)
    glm = scored[scored["method"].str.startswith("glm") & (scored["peft"] == "none")]
    best = best_runs(glm if len(glm) else scored, metric).iloc[0]
    comparison = comparisons[(task, dataset, "")]
    comparison = comparison[comparison["variant"] == ""]
    table = make_comparison_table(task, dataset, "", comparison, trivial_baselines(scored, metric), metric)
    requirements, python, promptsource = requirements_text(runs)
    scripts = sorted({script for script in runs["script"] if script})
    files = {name: REPOSITORY / name for name in code_files(scripts)} | prompt_files(runs, dataset)
    lines = [
        f"# {DATASET_TITLES.get(dataset, dataset)}", "",
        "## Authors", "",
        "**Your Name** (your.email@example.com), homepage: https://example.com  <!-- fill in -->", "",
        "## Task Description", "",
        DATASET_DESCRIPTIONS.get(dataset, f"The `{dataset}` dataset ({TASK_NAMES.get(task, task)})."), "",
        TASK_METHODS.get(task, "").format(model=best["args"].get("model_name_or_path") or best["model"]), "",
        "## Running Commands", "",
        f"Install{f' (Python {python})' if python else ''}:", "",
        "```bash", "pip install -r requirements.txt",
        f"pip install --no-deps --ignore-requires-python promptsource=={promptsource}", "```", "",
        data_paragraph(runs, dataset), "",
        "The grid search behind the results below (each run writes its own results.json; each prompt is also "
        "evaluated once without training, the zero-shot column), then the tables and figures:", "",
        "```bash", sweep_command(scored, task, dataset),
        f"python report.py runs/{dataset}", "```", "",
        "One run at the selected configuration (one seed):", "",
        "```bash", run_command(best), "```", "",
        f"Code: {', '.join(f'`{name}`' for name in sorted(files))}. {code_note(runs)}", "",
        "## Results", "",
        f"Test {metric_label(metric)} of each method at its configuration chosen on the "
        "validation set (the test set is never used for selection); mean ± std over seeds.", "",
        table.markdown(), "",
        "## Reference", "",
        "```bibtex", "\n\n".join(REFERENCES[k] for k in references_for(runs, dataset)), "```", "",
    ]  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / name)
    (folder / "requirements.txt").write_text(requirements, encoding="utf-8")
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return folder
