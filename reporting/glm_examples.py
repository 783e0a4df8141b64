"""report.py --glm_examples: per dataset, a folder in the layout the GLM repository's `examples/README.md` asks
of contributions: README.md (the template glm_example_readme.md, citing references.bib), requirements.txt
pinned to the versions the runs recorded, and the code the runs used (no data files).
"""

import json
import modulefinder
import re
import shutil
from collections import Counter
from pathlib import Path

import jinja2
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
README = Path(__file__).with_name("glm_example_readme.md")  # a Jinja template
BIBTEX = Path(__file__).with_name("references.bib")
# Copied besides the runs' scripts: the README's other commands and the files this module reads.
ALWAYS_COPIED = ("sweeps.sh", "report.py", "reporting/glm_example_readme.md", "reporting/references.bib")
NOT_REQUIRED = {"pytest"}  # an example folder holds no tests
DATA_FILE_ARGS = ("train_file", "validation_file", "test_file")
MODEL_ARGS = ("model_name_or_path", "tokenizer_name")

CITATIONS = {  # keys of references.bib that a dataset, PEFT method or model cites
    "glm": ("du-etal-2022-glm",), "trec": ("li-roth-2002-learning",),
    "e2e_nlg_cleaned": ("novikova-etal-2017-e2e", "dusek-etal-2019-semantic"),
    "promptsource": ("bach-etal-2022-promptsource",), "lora": ("hu2022lora",), "ptuning_v2": ("liu-etal-2022-p",),
    "roberta": ("liu2019roberta",), "t5": ("raffel2020exploring",), "bart": ("lewis-etal-2020-bart",),
}  # fmt: skip

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
    """The BibTeX entries (references.bib) the runs of one dataset cite: GLM, the dataset, promptsource, and the
    PEFT methods and models they name."""
    text = " ".join(runs["peft"].astype(str)) + " " + " ".join(runs["model"].astype(str)).lower()
    named = [topic for topic in ("lora", "ptuning_v2", "roberta", "t5", "bart") if topic in text]
    entries = {entry.group(1): entry.group(0)
               for entry in re.finditer(r"^@\w+\{([^,\n]+),.*?^\}", BIBTEX.read_text(encoding="utf-8"), re.M | re.S)}
    topics = dict.fromkeys(["glm", dataset, "promptsource", *named])
    return "\n\n".join(entries[key] for topic in topics for key in CITATIONS.get(topic, ()))


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
    """The code an example needs (sorted): `scripts`, ALWAYS_COPIED and the modules of this repository they import,
    transitively (modulefinder, without importing them)."""
    finder = modulefinder.ModuleFinder(path=[str(REPOSITORY)])  # this repository's modules only
    for name in [*scripts, *ALWAYS_COPIED]:
        if name.endswith(".py"):
            finder.run_script(str(REPOSITORY / name))
    found = {Path(module.__file__).relative_to(REPOSITORY).as_posix() for module in finder.modules.values()
             if module.__file__ and Path(module.__file__).is_relative_to(REPOSITORY)}  # fmt: skip
    return sorted(found | set(scripts) | set(ALWAYS_COPIED))


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
    return (f"Data: the runs read local files, {listed}, which are not part of this folder (the GLM repository takes "
            f"no data files): put your copies in `data/`, or drop the `--*_file` flags, and {from_hub}.")


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
    template = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined).from_string(README.read_text(encoding="utf-8"))
    readme = template.render(
        title=DATASET_TITLES.get(dataset, dataset), dataset=dataset, task=task, task_name=TASK_NAMES.get(task, task),
        model=best["args"].get("model_name_or_path") or best["model"], python=python, promptsource=promptsource,
        data=data_paragraph(runs, dataset), sweep=sweep_command(scored, task, dataset), run=run_command(best),
        code=", ".join(f"`{name}`" for name in sorted(files)), code_note=code_note(runs), metric=metric_label(metric),
        table=table.markdown(), references=references_for(runs, dataset),
    )  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / name)
    (folder / "requirements.txt").write_text(requirements, encoding="utf-8")
    (folder / "README.md").write_text(readme, encoding="utf-8")
    return folder
