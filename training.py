"""What a run needs around its training loop: flags, accelerator setup, optimizer groups,
schedule, sampler, the resume / best-weights tracker, checkpoint lookup, the output folder and
results files. The loop itself is written out in each script."""

import argparse
import importlib.metadata
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets

from glm_peft import peft_weights_problems
from templates import _check_task

logger = logging.getLogger(__name__)


# IO and reproducibility
# ---------------------------------------------------------------------------------------


# What a run writes into its --output_dir (besides tokenizer/, which a later run may read).
RUN_OUTPUTS = ("results.json", "predictions_*.jsonl", "generations_*.jsonl", "step_*", "epoch_*", "best_model")


def prepare_output_dir(output_dir, overwrite_output_dir=False):
    """Create output_dir (and parents); refuse to reuse one that holds a finished run.

    Returns:
        pathlib.Path of output_dir.
    Raises:
        FileExistsError: results.json exists there and overwrite_output_dir is False.
    """
    path = Path(output_dir)
    if (path / "results.json").exists() and not overwrite_output_dir:
        raise FileExistsError(
            f"{path / 'results.json'} exists: a finished run is there. Pass --overwrite_output_dir "
            "to replace it, or choose another --output_dir."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_previous_run(args, output_dir):
    """With --overwrite_output_dir (and no --resume_from_checkpoint), removes what the previous
    run wrote to `output_dir`, so that nothing of it is mixed with this run or resumed by
    mistake: results.json, predictions_* / generations_* files, step_* / epoch_* checkpoints and
    best_model/ (tokenizer/ is rewritten by a run that trains one). Scripts call it once every
    check has passed, just before training. The main process removes and logs; all then meet.
    """
    from accelerate import PartialState

    if not args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    previous = [old for pattern in RUN_OUTPUTS for old in sorted(Path(output_dir).glob(pattern))]
    state = PartialState()
    if state.is_main_process:
        for old in previous:
            logger.warning("--overwrite_output_dir: removing %s of the previous run", old)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    state.wait_for_everyone()


def _write_atomic(path, text):
    """Write text to a temp file next to `path`, then os.replace: readers never see half a file."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            temp.write(text)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj):
    """Write obj as indented JSON to path atomically (parent dir must exist).
    Raises TypeError for objects json cannot encode (path is then left untouched)."""
    _write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path, rows):
    """Write an iterable of JSON-encodable rows, one per line, to path atomically."""
    _write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


_ENV_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "peft", "promptsource")


def environment_info():
    """Versions and code revision for results.json.

    Returns:
        {"python": str, "torch", "transformers", "accelerate", "datasets", "peft",
        "promptsource": version str or None if not installed, "git_commit": HEAD of the
        repository holding task_utils.py or None (not a git repo / no commit),
        "git_dirty": bool or None (uncommitted changes to tracked files)}.
    """
    info = {"python": sys.version.split()[0]}
    for package in _ENV_PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    commit = _git("rev-parse", "HEAD")
    info["git_commit"] = commit
    info["git_dirty"] = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info


def _git(*arguments):
    """Output of a git command run in this file's directory, or None when it fails."""
    try:
        done = subprocess.run(
            ["git", *arguments], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def safe_name(name):
    """A prompt or dataset name made safe as one path component.

    Characters outside [A-Za-z0-9._-] and runs of two or more dots become "_", runs of "_"
    collapse to one, and "._-" are stripped from both ends: "CogComp/trec" ->
    "CogComp_trec", "../../etc" -> "etc".

    Raises:
        ValueError: nothing usable is left (e.g. "/..").
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]|\.{2,}", "_", str(name))
    cleaned = re.sub(r"_+", "_", cleaned).strip("._-")
    if not cleaned:
        raise ValueError(f"Name {name!r} has no characters usable in a file name.")
    return cleaned


def _jsonable(value):
    """argparse values as JSON: paths and other objects become strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


_PEFT_METHODS = (None, "lora", "ptuning_v2")


def results_record(
    args,
    task,
    method,
    *,
    script,
    prompt_id,
    prompt_name,
    total_train_batch_size,
    epochs,
    best_epoch,
    validation,
    test,
    baselines,
    train_time_s,
    train_examples_per_s,
    peak_memory_mb,
    trainable_params,
    total_params,
    peft=None,
    metric_for_best_model=None,
):
    """The results.json record every script writes (report.py reads this schema).

    Schema:
        script: str (e.g. "run_cls.py"); task: "cls" | "gen"; method: str, e.g.
        "glm_cloze", "linear_head", "mlm_prompt", "seq2seq", "glm_gen"; peft: None | "lora" |
        "ptuning_v2"; model_name_or_path: str; dataset: the dataset name, else the local
        files {"train": path, ...}; prompt_id: int | None; prompt_name: str | None;
        learning_rate: float; per_device_train_batch_size: int; total_train_batch_size:
        int; seed: int; metric_for_best_model: str (argument, else args's);
        epochs: [{"epoch": int, "step": int, "train_loss": float, "validation": {metric:
        float}}]; best_epoch: int | None; validation: the best epoch's metrics; test:
        {metric: float} | None; baselines: {"majority_class": {...}} (cls) or
        {"most_frequent_reference": {...}} (gen); train_time_s: float;
        train_examples_per_s: float; peak_memory_mb: float | None; trainable_params: int;
        total_params: int; trainable_share: trainable / total; args: every argparse
        argument (JSON-safe); env: environment_info().

    Args:
        args: argparse.Namespace (or dict) of the run; task, method: as above; the
            keyword arguments fill the fields of the same name.
    Returns:
        dict ready for write_json_atomic.
    Raises:
        ValueError: unknown task or peft, or total_params < 1.
    """
    _check_task(task)
    if peft not in _PEFT_METHODS:
        raise ValueError(f"peft must be one of {_PEFT_METHODS}, got {peft!r}.")
    if total_params < 1:
        raise ValueError(f"total_params must be >= 1, got {total_params}.")
    arguments = dict(vars(args)) if not isinstance(args, dict) else dict(args)
    files = {split: arguments.get(f"{split}_file") for split in ("train", "validation", "test")}
    dataset = arguments.get("dataset_name") or {split: str(path) for split, path in files.items() if path}
    return {
        "script": script,
        "task": task,
        "method": method,
        "peft": peft,
        "model_name_or_path": arguments.get("model_name_or_path"),
        "dataset": dataset,
        "prompt_id": prompt_id,
        "prompt_name": prompt_name,
        "learning_rate": arguments.get("learning_rate"),
        "per_device_train_batch_size": arguments.get("per_device_train_batch_size"),
        "total_train_batch_size": total_train_batch_size,
        "seed": arguments.get("seed"),
        "metric_for_best_model": metric_for_best_model or arguments.get("metric_for_best_model"),
        "epochs": epochs,
        "best_epoch": best_epoch,
        "validation": validation,
        "test": test,
        "baselines": baselines,
        "train_time_s": train_time_s,
        "train_examples_per_s": train_examples_per_s,
        "peak_memory_mb": peak_memory_mb,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "trainable_share": trainable_params / total_params,
        "args": _jsonable(arguments),
        "env": environment_info(),
    }


# ---------------------------------------------------------------------------------------
# Script arguments (the names of the Hugging Face examples)
# ---------------------------------------------------------------------------------------

DEFAULT_DATASETS = {"cls": "trec", "gen": "e2e_nlg_cleaned"}


def add_data_and_prompt_args(parser, task):
    """Add the data and prompt arguments shared by the scripts to an ArgumentParser.

    --dataset_name (default trec for "cls", e2e_nlg_cleaned for "gen"),
    --dataset_config_name, --train_file, --validation_file, --test_file,
    --validation_split_percentage (10), --max_train_samples, --max_eval_samples,
    --max_test_samples (first N rows; default all), --prompt_id, --prompt_name,
    --list_prompts, --prompts_dir ("prompts"), --skip_empty / --no-skip_empty (default on).

    Returns:
        the parser. Raises: ValueError for an unknown task.
    """
    _check_task(task)
    group = parser.add_argument_group("data and prompts")
    group.add_argument(
        "--dataset_name", default=DEFAULT_DATASETS[task],
        help="Dataset: a short name (trec, e2e_nlg_cleaned, or the offline fine_foods, "
        "hhs_breaches) or a hub id. With --*_file it only names the task (templates).",
    )  # fmt: skip
    group.add_argument("--dataset_config_name", default=None, help="Hub dataset configuration.")
    group.add_argument("--train_file", default=None, help="Local train data (.csv, .json, .jsonl).")
    group.add_argument("--validation_file", default=None, help="Local validation data.")
    group.add_argument("--test_file", default=None, help="Local test data.")
    group.add_argument(
        "--validation_split_percentage", type=int, default=10,
        help="Percent of train used as validation when there is no validation split.",
    )  # fmt: skip
    for split in ("train", "eval", "test"):
        group.add_argument(f"--max_{split}_samples", type=int, default=None, help=f"Keep the first N {split} rows.")
    group.add_argument("--prompt_id", type=int, default=None, help="Prompt id (see --list_prompts); default 0.")
    group.add_argument("--prompt_name", default=None, help="Prompt name (instead of --prompt_id).")
    group.add_argument("--list_prompts", action="store_true", help="Print the usable prompts and exit.")
    group.add_argument("--prompts_dir", default="prompts", help="Folder of our local YAML prompt files.")
    group.add_argument(
        "--skip_empty", action=argparse.BooleanOptionalAction, default=True,
        help="Skip (and count) rows whose prompt or target renders empty; --no-skip_empty raises instead.",
    )  # fmt: skip
    return parser


def _checkpointing_steps(value):
    """argparse type: a positive int or the word "epoch"."""
    if value == "epoch":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'epoch', got {value!r}")


def add_training_args(parser, defaults=None):
    """Add the training arguments shared by the scripts (Hugging Face example names).

    --model_name_or_path, --tokenizer_name, --output_dir (required), --overwrite_output_dir,
    --per_device_train_batch_size (16), --per_device_eval_batch_size (32), --learning_rate
    (1e-5), --weight_decay (0.1), --num_train_epochs (3), --max_train_steps,
    --gradient_accumulation_steps (1), --warmup_ratio (0.1), --lr_scheduler_type
    ("linear"), --max_grad_norm (1.0), --seed (42), --metric_for_best_model (None: the
    script's task metric), --eval_steps (None: each epoch), --checkpointing_steps (None, N
    or "epoch"), --resume_from_checkpoint, --group_by_length, --do_train / --no-do_train
    (default on). Mixed precision is Accelerate's (accelerate launch --mixed_precision).

    Args:
        parser: argparse.ArgumentParser. defaults: dict dest -> default overriding the
            values above (e.g. {"learning_rate": 5e-3} for P-tuning).
    Returns:
        the parser.
    Raises:
        ValueError: a key of `defaults` that is not one of these arguments.
    """
    group = parser.add_argument_group("training")
    arguments = [
        ("--model_name_or_path", dict(default=None, help="Model name or path.")),
        ("--tokenizer_name", dict(default=None, help="Tokenizer name or path, if not the model's.")),
        ("--output_dir", dict(required=True, help="Where checkpoints, predictions and results.json go.")),
        ("--overwrite_output_dir", dict(action="store_true", help="Replace a finished run in --output_dir.")),
        ("--per_device_train_batch_size", dict(type=int, default=16, help="Train batch size per device.")),
        ("--per_device_eval_batch_size", dict(type=int, default=32, help="Eval batch size per device.")),
        ("--learning_rate", dict(type=float, default=1e-5, help="Peak learning rate (AdamW).")),
        ("--weight_decay", dict(type=float, default=0.1, help="AdamW weight decay (not on biases, norms).")),
        ("--num_train_epochs", dict(type=int, default=3, help="Training epochs.")),
        ("--max_train_steps", dict(type=int, default=None, help="Total steps; overrides --num_train_epochs.")),
        ("--gradient_accumulation_steps", dict(type=int, default=1, help="Steps to accumulate per update.")),
        ("--warmup_ratio", dict(type=float, default=0.1, help="Share of steps for linear warmup.")),
        ("--lr_scheduler_type", dict(default="linear", help="transformers.get_scheduler name.")),
        ("--max_grad_norm", dict(type=float, default=1.0, help="Gradient clipping norm.")),
        ("--seed", dict(type=int, default=42, help="Random seed.")),
        ("--metric_for_best_model", dict(default=None, help="Validation metric that picks the best epoch.")),
        ("--eval_steps", dict(type=int, default=None, help="Evaluate every N steps (default: each epoch).")),
        ("--checkpointing_steps", dict(type=_checkpointing_steps, default=None, help="Save every N steps or 'epoch'.")),
        ("--resume_from_checkpoint", dict(default=None, help="Checkpoint folder to resume from.")),
        ("--group_by_length", dict(action="store_true", help="Batch examples of similar length.")),
        ("--do_train", dict(action=argparse.BooleanOptionalAction, default=True, help="Train (--no-do_train: evaluate only).")),
    ]  # fmt: skip
    dests = set()
    for flag, options in arguments:
        dests.add(group.add_argument(flag, **options).dest)
    unknown = set(defaults or {}) - dests
    if unknown:
        raise ValueError(f"add_training_args: unknown default(s) {sorted(unknown)}; known: {sorted(dests)}.")
    parser.set_defaults(**(defaults or {}))
    return parser


# ---------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------


def will_train(args):
    """Whether the run trains: --do_train (the default) and some steps asked for (--max_train_steps,
    else --num_train_epochs). Otherwise the scripts evaluate the model as loaded (zero-shot)."""
    steps = args.num_train_epochs if args.max_train_steps is None else args.max_train_steps
    return args.do_train and steps > 0


def training_args_problems(args):
    """What is wrong with the flags of `add_training_args` (and --peft_weights): a list of messages
    (empty when all is well), which each script joins with its own into one `parser.error`. Checks
    before any work that --resume_from_checkpoint names a checkpoint of this run's settings and
    --peft_weights weights this run can evaluate, outside --output_dir."""
    problems = []
    if min(args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) < 1:
        problems.append("batch sizes and --gradient_accumulation_steps must be >= 1")
    if args.eval_steps is not None and args.eval_steps < 1:
        problems.append("--eval_steps must be >= 1")
    if args.num_train_epochs < 0 or (args.max_train_steps is not None and args.max_train_steps < 0):
        problems.append("--num_train_epochs and --max_train_steps must be >= 0")
    if not 0 <= args.warmup_ratio <= 1:
        problems.append("--warmup_ratio must lie in [0, 1]")
    trains = will_train(args)
    if args.resume_from_checkpoint and not trains:
        problems.append("--resume_from_checkpoint continues training: drop --no-do_train (and give it steps)")
    elif args.resume_from_checkpoint:
        try:
            checkpoint = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
            # Flags whose default is resolved later (None now) are compared again when the state loads.
            settings = {name: getattr(args, name) for name in RESUME_SETTINGS if getattr(args, name, None) is not None}
            state = json.loads((checkpoint / TrainingTracker.STATE_NAME).read_text(encoding="utf-8"))
            problems += TrainingTracker.settings_differences(checkpoint, state.get("settings", {}), settings)
        except FileNotFoundError as error:
            problems.append(str(error))
    for read in ("peft_weights", "model_name_or_path"):
        path = getattr(args, read, None)
        if path and args.output_dir and Path(args.output_dir).resolve() in Path(path).resolve().parents:
            problems.append(f"--{read} {path} lies inside --output_dir {args.output_dir}: write this run to another "
                            "--output_dir (it would replace the results of the run that made it)")
    if getattr(args, "peft_weights", None):

        if trains:
            problems.append("--peft_weights evaluates saved PEFT weights without training: add --no-do_train")
        problems += peft_weights_problems(args)
    return problems


def setup_accelerator(args):
    """The run's Accelerator (gradient accumulation from the flags), after `check_launch`, with the
    Hugging Face examples' logging (INFO on the main process, warnings elsewhere; datasets and
    transformers quieter) and `--seed` set everywhere (python, numpy, torch).

    Raises:
        RuntimeError: see `check_launch`.
    """
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
    check_launch(accelerator)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)  # fmt: skip
    logger.info("%s", accelerator.state)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    return accelerator


def _no_weight_decay(name, parameter):
    lowered = name.lower()
    return parameter.ndim <= 1 or "bias" in lowered or "layernorm" in lowered or "layer_norm" in lowered


def create_optimizer(model, learning_rate, weight_decay):
    """AdamW over the trainable parameters; no weight decay on biases, norm weights and any
    other 1-D parameter (names containing "bias", "layernorm"/"LayerNorm", "layer_norm").

    Returns:
        torch.optim.AdamW with up to two parameter groups (decay, no decay).
    Raises:
        ValueError: the model has no trainable parameter.
    """
    import torch

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if _no_weight_decay(name, parameter) else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameters: check what PEFT / freezing left trainable.")
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, weight_decay), (no_decay, 0.0))
        if params
    ]  # fmt: skip
    return torch.optim.AdamW(groups, lr=learning_rate)


def check_finite(loss, step):
    """Stop training on a NaN or infinite loss.

    Args:
        loss: float or 0-d tensor. step: int, the optimizer step.
    Raises:
        FloatingPointError: the loss is not finite; says what to try.
    """
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"Non-finite loss ({value}) at step {step}. Try bf16 instead of fp16, a lower "
            "--learning_rate, or --max_grad_norm; the last good checkpoint (if any) is kept in "
            "output_dir."
        )


def length_grouped_indices(lengths, batch_size, seed, megabatch_batches=50):
    """A shuffled order that puts examples of similar length in the same batch.

    The indices are shuffled (random.Random(seed)), cut into megabatches of
    `megabatch_batches * batch_size`, and each megabatch is sorted by length, longest
    first; the megabatch holding the longest example goes first, so an out-of-memory
    error shows on the first step. Consecutive chunks of `batch_size` are the batches.

    Returns:
        list[int], a permutation of range(len(lengths)); the same for the same seed.
    Raises:
        ValueError: batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    indices = list(range(len(lengths)))
    random.Random(seed).shuffle(indices)
    size = megabatch_batches * batch_size
    megabatches = [sorted(indices[i : i + size], key=lambda j: -lengths[j]) for i in range(0, len(indices), size)]
    if megabatches:
        longest = max(range(len(megabatches)), key=lambda m: lengths[megabatches[m][0]])
        megabatches[0], megabatches[longest] = megabatches[longest], megabatches[0]
    return [index for megabatch in megabatches for index in megabatch]


def padding_fraction(lengths, batches):
    """Share of the padded token slots that are padding, for batches padded to their longest.

    Args:
        lengths: sequence of int lengths. batches: list of lists of indices into lengths.
    Returns:
        float in [0, 1) (0.0 for no tokens).
    """
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    tokens = sum(lengths[i] for batch in batches for i in batch)
    return 0.0 if slots == 0 else (slots - tokens) / slots


class EpochSampler:
    """The order of the training examples in each epoch, for `DataLoader(sampler=...)`.

    A fresh order each epoch that depends only on (seed, epoch), never on a random state, so
    a run resumed in the middle of epoch e replays exactly the batches an uninterrupted run
    sees (Accelerate's prepared DataLoader passes its `set_epoch` on to this sampler; call it
    before iterating, also on a `skip_first_batches` copy). With `lengths`
    (--group_by_length) the order is length_grouped_indices(lengths, batch_size,
    seed + epoch); without, a shuffle by random.Random(seed + epoch).

    Raises:
        ValueError: lengths given with a length other than num_examples, or batch_size < 1.
    """

    def __init__(self, num_examples, seed, lengths=None, batch_size=1):
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"EpochSampler: {len(lengths)} lengths for {num_examples} examples.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.num_examples, self.seed, self.lengths, self.batch_size = num_examples, seed, lengths, batch_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_examples

    def __iter__(self):
        seed = self.seed + self.epoch
        if self.lengths is not None:
            return iter(length_grouped_indices(self.lengths, self.batch_size, seed))
        order = list(range(self.num_examples))
        random.Random(seed).shuffle(order)
        return iter(order)


# The flags a resumed run must share with its checkpoint: what its weights, schedule, data, data
# order and evaluations depend on (train_loop adds the number of processes). --max_train_steps may grow: a run can be
# continued to more steps (the same run only with a schedule that does not depend on the length).
RESUME_SETTINGS = ("model_name_or_path", "tokenizer_name", "dataset_name", "dataset_config_name", "train_file",
                   "validation_file", "validation_split_percentage", "max_train_samples", "prompt_id", "prompt_name",
                   "method", "max_seq_length", "max_source_length", "max_target_length", "length_normalize",
                   "label_smoothing", "group_by_length", "max_eval_samples", "eval_steps", "metric_for_best_model",
                   "learning_rate", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm",
                   "seed", "peft", "pre_seq_len", "prefix_projection", "prefix_hidden_size", "lora_r", "lora_alpha",
                   "lora_dropout", "lora_target_modules", "mask_token_id", "choice_eop")  # fmt: skip


class TrainingTracker:
    """Run bookkeeping that must survive an interruption, and the best evaluation's weights.

    A training loop counts optimizer steps in `completed_steps`, adds each batch's loss with
    `add_loss`, the time it trained with `train_time_s`, and calls `record_evaluation` after
    each validation: the history (results.json "epochs": {"epoch", "step", "train_loss",
    "validation"}) grows, the running loss restarts, and when `metric` improved (strictly, so
    ties keep the earlier evaluation) a CPU copy of the model's trainable parameters is kept.
    `restore_best(model)` puts them back, so that test scores the best evaluation, not the
    last. `save(dir)` / `load(dir)` write all of it next to an Accelerate checkpoint
    (`training_state.json` + `best_weights.safetensors`; no pickle is read), so a resumed run
    ends exactly like an uninterrupted one; `find_checkpoint` looks for these files.

    Args:
        metric: the validation metric that picks the best evaluation. greater_is_better: bool.
        settings: the flags that shape the run (`RESUME_SETTINGS`); `load` refuses a checkpoint
            written with other values.
    Attributes:
        completed_steps, history, train_time_s, train_examples, best_index (into history).
    """

    STATE_NAME = "training_state.json"
    WEIGHTS_NAME = "best_weights.safetensors"

    def __init__(self, metric, greater_is_better=True, settings=None):
        self.metric, self.greater_is_better = metric, greater_is_better
        self.settings = dict(settings or {})
        self.completed_steps, self.history, self.best_index = 0, [], None
        self.loss_sum, self.loss_count, self.train_time_s, self.train_examples = 0.0, 0, 0.0, 0
        self.best_weights = None

    def add_loss(self, loss, examples):
        """Adds one batch's mean loss (float) and its number of examples."""
        self.loss_sum += float(loss)
        self.loss_count += 1
        self.train_examples += int(examples)

    @property
    def best(self):
        """The best evaluation's history record, or None before any evaluation."""
        return None if self.best_index is None else self.history[self.best_index]

    def record_evaluation(self, epoch, metrics, model):
        """Appends an evaluation at `completed_steps`; returns True when it is the new best.

        Raises:
            KeyError: `metrics` lacks the tracked metric (names the ones it has).
        """
        if self.metric not in metrics:
            raise KeyError(f"Metric {self.metric!r} is not among the validation metrics {sorted(metrics)}.")
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        self.history.append({"epoch": epoch, "step": self.completed_steps, "train_loss": train_loss,
                             "validation": dict(metrics)})  # fmt: skip
        self.loss_sum, self.loss_count = 0.0, 0
        score, best = metrics[self.metric], self.best
        improved = best is None or (
            score > best["validation"][self.metric] if self.greater_is_better else score < best["validation"][self.metric]
        )
        if improved:
            self.best_index = len(self.history) - 1
            self.best_weights = {
                name: parameter.detach().to("cpu", copy=True).contiguous()
                for name, parameter in model.named_parameters()
                if parameter.requires_grad
            }
        return improved

    def restore_best(self, model):
        """Copies the best evaluation's weights back into `model`; False when there are none.

        Raises:
            ValueError: the saved names are not the model's trainable parameters.
        """
        if self.best_weights is None:
            return False
        import torch

        parameters = dict(model.named_parameters())
        unknown = sorted(set(self.best_weights) - set(parameters))
        if unknown:
            raise ValueError(f"The best weights hold parameters the model lacks: {unknown[:5]}.")
        with torch.no_grad():
            for name, value in self.best_weights.items():
                parameters[name].copy_(value)
        return True

    def state_dict(self):
        """The JSON part of the state (everything except the best weights)."""
        keys = ("metric", "greater_is_better", "settings", "completed_steps", "history", "best_index", "loss_sum",
                "loss_count", "train_time_s", "train_examples")  # fmt: skip
        return {key: getattr(self, key) for key in keys}

    def save(self, directory):
        """Writes training_state.json (atomically) and best_weights.safetensors into directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.best_weights is not None:
            save_file(self.best_weights, str(directory / self.WEIGHTS_NAME))
        write_json_atomic(directory / self.STATE_NAME, self.state_dict())

    def load(self, directory):
        """Reads what `save` wrote.

        Raises:
            FileNotFoundError: a file is missing. ValueError: the checkpoint tracked another metric,
            or was written with other `settings` (each difference named).
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        state_file = directory / self.STATE_NAME
        if not state_file.is_file():
            raise FileNotFoundError(f"{directory} has no {self.STATE_NAME}: not a checkpoint of these scripts.")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if (state["metric"], state["greater_is_better"]) != (self.metric, self.greater_is_better):
            raise ValueError(
                f"{directory} picked the best evaluation by {state['metric']!r}, this run by {self.metric!r}: "
                "resume with the same --metric_for_best_model."
            )
        differences = self.settings_differences(directory, state.get("settings", {}), self.settings)
        if differences:
            raise ValueError(differences[0])
        for key, value in state.items():
            setattr(self, key, value)
        self.best_weights = None
        if self.best_index is not None:
            weights_file = directory / self.WEIGHTS_NAME
            if not weights_file.is_file():
                raise FileNotFoundError(f"{directory} records a best evaluation but has no {self.WEIGHTS_NAME}.")
            self.best_weights = load_file(str(weights_file))

    @staticmethod
    def settings_differences(directory, saved, settings):
        """[] when the checkpoint in `directory`, written with `saved` settings, agrees with
        `settings` (on the names both hold), else one message naming each difference and what to do."""
        differences = [f"--{name} {saved[name]} there, {settings[name]} here" for name in sorted(saved)
                       if name in settings and saved[name] != settings[name]]  # fmt: skip
        if not differences:
            return []
        return [f"{directory} was written by a run with other settings ({'; '.join(differences)}): resume with the "
                "same flags and number of processes, or start over in an empty --output_dir (or with "
                "--overwrite_output_dir)."]

    def resume_position(self, batches_per_epoch, gradient_accumulation_steps=1):
        """(epoch, batches to skip in it) that continue the run after `completed_steps`.

        An epoch of `batches_per_epoch` batches (per process) makes
        ceil(batches_per_epoch / gradient_accumulation_steps) optimizer steps, each of
        gradient_accumulation_steps batches except possibly the epoch's last one.
        """
        steps_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
        epoch, steps_into_epoch = divmod(self.completed_steps, steps_per_epoch)
        return epoch, steps_into_epoch * gradient_accumulation_steps


def find_checkpoint(resume_from_checkpoint, output_dir):
    """The checkpoint folder that --resume_from_checkpoint names.

    A path (or a folder name inside output_dir, e.g. step_500): that folder, which must hold
    TrainingTracker's training_state.json. "latest": the
    folder of output_dir whose training_state.json has the most completed steps (a tie goes to
    the newest file).

    Returns:
        pathlib.Path.
    Raises:
        FileNotFoundError: the folder is no checkpoint, or "latest" finds none (says how to get one).
    """
    state_name = TrainingTracker.STATE_NAME
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not (path / state_name).is_file() and (Path(output_dir) / path / state_name).is_file():
            path = Path(output_dir) / path  # a bare step_N / epoch_N of output_dir
        if not (path / state_name).is_file():
            raise FileNotFoundError(
                f"--resume_from_checkpoint {path}: no {state_name} there. Pass a step_N or epoch_N folder "
                "of a run's --output_dir, or 'latest'."
            )
        return path
    candidates = []
    for state_file in Path(output_dir).glob(f"*/{state_name}"):
        try:
            steps = json.loads(state_file.read_text(encoding="utf-8"))["completed_steps"]
        except (OSError, ValueError, KeyError):
            continue  # a checkpoint cut short while being written
        candidates.append((steps, state_file.stat().st_mtime, state_file.parent))
    if not candidates:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoint in {output_dir}. Checkpoints are written with "
            "--checkpointing_steps N or --checkpointing_steps epoch."
        )
    return max(candidates, key=lambda candidate: candidate[:2])[2]


def create_lr_scheduler(args, optimizer, train_batches, num_processes):
    """The learning-rate schedule of a run, sized from its data.

    An epoch is `train_batches` batches sharded over `num_processes` (Accelerate's even_batches:
    rounded up), one optimizer step per --gradient_accumulation_steps of them. Sets
    `args.max_train_steps` (from --num_train_epochs when unset) and `args.num_train_epochs` (the
    epochs those steps reach).

    Returns:
        (lr_scheduler, batches_per_epoch): transformers' --lr_scheduler_type schedule, warming up
        over --warmup_ratio of the steps, counted in per-process steps (a prepared scheduler steps
        once per process at each optimizer step); batches per process and epoch.
    """
    from transformers import get_scheduler

    batches_per_epoch = math.ceil(train_batches / num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                 num_warmup_steps=math.ceil(args.warmup_ratio * args.max_train_steps) * num_processes,
                                 num_training_steps=args.max_train_steps * num_processes)  # fmt: skip
    return lr_scheduler, batches_per_epoch


def train_loop(args, accelerator, model, optimizer, lr_scheduler, train_dataloader, batches_per_epoch, tracker,
          compute_loss, validate, output_dir):
    """The optimization loop of run_cls.py, run_gen.py and run_baseline.py.

    Takes the objects `accelerator.prepare` returned. Resumes from --resume_from_checkpoint
    (model, optimizer, scheduler and RNG states, and `tracker`; refused when the checkpoint was
    written with other `RESUME_SETTINGS`), makes `args.max_train_steps`
    optimizer steps, validates every --eval_steps (else at each epoch's end) and at the last
    step, each before the checkpoint of the same step (--checkpointing_steps), so that a resumed
    run never misses or repeats an evaluation; then puts back the weights of the best validation,
    so that what follows (test, saving) uses them.

    Args:
        batches_per_epoch: int, per process (from `create_lr_scheduler`).
        tracker: TrainingTracker; holds the history, timing and best weights afterwards.
        compute_loss: batch -> (loss, examples): the 0-d training loss tensor of the batch and
            its number of examples.
        validate: () -> dict of validation metrics, among them --metric_for_best_model.
    Returns:
        The best evaluation's validation metrics, or None when nothing was evaluated.
    Raises:
        FloatingPointError: a non-finite loss, before its update (the last checkpoint stays good).
        FileNotFoundError: --resume_from_checkpoint names no checkpoint.
        ValueError: the checkpoint was written with other settings (see `TrainingTracker.load`).
    """
    from tqdm.auto import tqdm

    def save_checkpoint(name):
        accelerator.save_state(str(output_dir / name))
        if accelerator.is_main_process:  # written last: a folder with training_state.json is complete
            tracker.save(output_dir / name)

    def run_validation(epoch):
        metrics = validate()
        improved = tracker.record_evaluation(epoch, metrics, accelerator.unwrap_model(model))
        record = tracker.history[-1]
        logger.info("epoch %d step %d: train loss %s, validation %s%s", epoch, record["step"],
                    "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}",
                    {name: round(value, 4) for name, value in metrics.items()}, " (best)" if improved else "")

    tracker.settings = {name: getattr(args, name) for name in RESUME_SETTINGS if hasattr(args, name)}
    tracker.settings["num_processes"] = accelerator.num_processes
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.resume_from_checkpoint, output_dir)
        tracker.load(checkpoint)  # first: it refuses a checkpoint of other settings
        if tracker.completed_steps > args.max_train_steps:
            raise ValueError(f"{checkpoint} is {tracker.completed_steps} steps in, past --max_train_steps "
                             f"{args.max_train_steps}: resume an earlier checkpoint or ask for more steps")
        accelerator.load_state(str(checkpoint))
        logger.info("Resumed from %s after %d steps.", checkpoint, tracker.completed_steps)
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info("  Examples = %d, epochs = %d, total batch size = %d, optimization steps = %d, lr = %g",
                len(train_dataloader.dataset), args.num_train_epochs, total_batch_size, args.max_train_steps,
                args.learning_rate)  # fmt: skip

    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    progress_bar = tqdm(range(args.max_train_steps), initial=tracker.completed_steps,
                        disable=not accelerator.is_local_main_process)  # fmt: skip
    starting_epoch, resume_batches = tracker.resume_position(batches_per_epoch, args.gradient_accumulation_steps)
    model.train()
    for epoch in range(starting_epoch, args.num_train_epochs):
        if tracker.completed_steps >= args.max_train_steps:  # also: resumed from the last step's checkpoint
            break
        train_dataloader.set_epoch(epoch)  # the order of epoch e, also for the skipping copy below
        active_dataloader = train_dataloader
        if epoch == starting_epoch and resume_batches:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        start = time.perf_counter()
        for batch in active_dataloader:
            with accelerator.accumulate(model):
                loss, examples = compute_loss(batch)
                batch_loss = accelerator.reduce(loss.detach(), "mean").item()  # the same on every process
                check_finite(batch_loss, tracker.completed_steps + 1)  # before the update
                tracker.add_loss(batch_loss, examples * accelerator.num_processes)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            tracker.completed_steps += 1
            step = tracker.completed_steps
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{batch_loss:.3f}")
            tracker.train_time_s += time.perf_counter() - start
            end_of_epoch = step % steps_per_epoch == 0
            done = step >= args.max_train_steps
            if (args.eval_steps and step % args.eval_steps == 0) or (not args.eval_steps and end_of_epoch) or done:
                run_validation(epoch)
            if isinstance(args.checkpointing_steps, int) and step % args.checkpointing_steps == 0:
                save_checkpoint(f"step_{step}")
            elif args.checkpointing_steps == "epoch" and end_of_epoch:
                save_checkpoint(f"epoch_{epoch}")
            start = time.perf_counter()
            if done:
                break
    progress_bar.close()

    if not tracker.restore_best(accelerator.unwrap_model(model)):
        return None
    best = tracker.best
    logger.info("Restored the weights of epoch %d step %d (validation %s %.4f).", best["epoch"], best["step"],
                args.metric_for_best_model, best["validation"][args.metric_for_best_model])
    return best["validation"]


def peak_memory_mb():
    """Peak memory of this process in MiB: torch.cuda.max_memory_allocated on a GPU, else the
    peak resident set size (resource.getrusage; ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def check_launch(accelerator):
    """Refuse a multi-process launch that Accelerate runs as independent single processes.

    On a machine without GPUs, `torchrun --nproc_per_node N` (or `accelerate launch --multi_gpu`)
    starts N processes, but Accelerate sets up distributed CPU training only when told to use
    the CPU; otherwise each process trains alone and they all write the same output_dir.
    (`accelerate launch --cpu --num_processes N` starts a single process unless an MPI
    hostfile is given.)

    Raises:
        RuntimeError: WORLD_SIZE > 1 but the accelerator has one process; says what to run.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"Launched as {world_size} processes (WORLD_SIZE) but Accelerate runs each alone. On CPUs set "
            f"ACCELERATE_USE_CPU=true: ACCELERATE_USE_CPU=true torchrun --nproc_per_node {world_size} SCRIPT ..."
        )
