"""What run_cls, run_gen, run_baseline and run_pretrain need around the training loop each writes out:
accelerator setup, AdamW groups, the plan of steps, the schedule, each epoch's data order, the tracker of
losses, evaluations and best weights, checkpoints, results.json and --with_tracking's live curves.

A run resumed from any checkpoint ends exactly like an uninterrupted one: the data order depends on
(seed, epoch) only, Accelerate's checkpoint holds model, optimizer, scheduler and RNG states, the
tracker's training_state.json the rest; the best weights are stored once per output folder.
"""

import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import time
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.trainer_pt_utils import get_length_grouped_indices

from metrics import higher_is_better
from modeling_glm import UsageError, readable_like_results, save_weights

logger = logging.getLogger(__name__)

# Flags a resumed run may change: a run continued to more steps ends like one that asked for them (the
# schedule does not depend on the length). Every other flag must be the checkpoint's.
RESUME_MAY_CHANGE = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "checkpointing_steps",
                     "save_total_limit", "max_train_steps", "num_train_epochs", "per_device_eval_batch_size",
                     "save_best_model", "debug", "with_tracking", "report_to")


def resume_settings(args, num_processes=None):
    """The flags a resumed checkpoint must share: vars(args) but RESUME_MAY_CHANGE, plus num_processes."""
    settings = {name: value for name, value in vars(args).items() if name not in RESUME_MAY_CHANGE}
    if num_processes is not None:
        settings["num_processes"] = num_processes
    return settings


def settings_problem(checkpoint, saved, settings):
    """None when `saved` (a checkpoint's settings) agree with `settings` on the names both hold, else the message."""
    differences = [f"--{name} {saved[name]} there, {settings[name]} here" for name in sorted(saved)
                   if name in settings and saved[name] != settings[name]]
    if not differences:
        return None
    return (f"{checkpoint} was written by a run with other settings ({'; '.join(differences)}): resume with the "
            "same flags and number of processes, or start over without --resume_from_checkpoint, in an empty "
            "--output_dir or with --overwrite_output_dir.")


# ----- Setup --------------------------------------------------------------------------------------


def setup_accelerator(args):
    """The run's Accelerator with the HF examples' logging, --seed set and --with_tracking's trackers. Raises
    UsageError when WORLD_SIZE > 1 but Accelerate runs each process alone (they would share --output_dir)."""
    logging_dir = str(Path(args.output_dir) / "tensorboard")
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with=report_to_trackers(args.report_to) if args.with_tracking else None,
                              project_config=ProjectConfiguration(project_dir=str(args.output_dir),
                                                                  logging_dir=logging_dir))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise UsageError(f"Launched as {world_size} processes (WORLD_SIZE) but Accelerate runs each alone. On CPUs "
                         "set ACCELERATE_USE_CPU=true: ACCELERATE_USE_CPU=true torchrun --nproc_per_node "
                         f"{world_size} SCRIPT ...")
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    logger.info("%s", accelerator.state)
    quieter = logging.WARNING if accelerator.is_local_main_process else logging.ERROR
    datasets.utils.logging.set_verbosity(quieter)
    transformers.utils.logging.set_verbosity(quieter)
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score says "Using default tokenizer" per call
    set_seed(args.seed)
    return accelerator


def clear_previous_run(args, output_dir):
    """--overwrite_output_dir without --resume_from_checkpoint: removes what the previous run wrote (but
    tokenizer/, which a later run may read), so that nothing of it is mixed in or resumed."""
    if not args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    state = PartialState()
    outputs = ("results.json", "predictions_*.jsonl", "generations_*.jsonl", "step_*", "epoch_*", "best_model",
               "best_weights.safetensors", "tensorboard", "wandb", "searched_prompts")
    if state.is_main_process:
        for old in (old for pattern in outputs for old in sorted(Path(output_dir).glob(pattern))):
            logger.warning("--overwrite_output_dir: removing %s of the previous run", old)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    state.wait_for_everyone()


def stop_interrupted(tracker, plan, output_dir):
    """Ctrl-C in the training loop: says where the run stopped and how to resume, exits 130 (128 + SIGINT).
    No checkpoint is written: Ctrl-C lands mid-step (not resumable), and waiting for the step's end would
    cost one more all-reduce per step for every process to agree on the stop."""
    try:
        checkpoint = find_checkpoint("latest", output_dir)
    except UsageError:
        how = "no checkpoint was written: add --checkpointing_steps N (or epoch) to be able to resume"
    else:
        how = f"the last checkpoint is {checkpoint}. Resume with the same command and --resume_from_checkpoint latest"
    if PartialState().is_main_process:
        sys.stderr.write(f"Interrupted at step {tracker.completed_steps + 1}/{plan.max_train_steps}; {how}.\n")
    raise SystemExit(128 + signal.SIGINT)


# ----- Optimization: optimizer, length of the run, learning-rate schedule, data order -------------


def create_optimizer(model, learning_rate, weight_decay):
    """AdamW over the trainable parameters, without weight decay on 1-D parameters and on names holding
    "bias", "layernorm" or "layer_norm" (any case). Raises UsageError when nothing is trainable."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        bias_or_norm = parameter.ndim <= 1 or any(part in name.lower() for part in ("bias", "layernorm", "layer_norm"))
        (no_decay if bias_or_norm else decay).append(parameter)
    if not decay and not no_decay:
        raise UsageError("The model has no trainable parameters: check what PEFT / freezing left trainable.")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=learning_rate)


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """How long a run trains and when it evaluates and checkpoints, in optimizer steps of
    `gradient_accumulation_steps` batches; an epoch is `batches_per_epoch` batches per process."""

    batches_per_epoch: int
    gradient_accumulation_steps: int
    max_train_steps: int
    eval_steps: int | None = None
    checkpointing_steps: int | str | None = None

    @classmethod
    def from_args(cls, args, train_batches, num_processes):
        """The flags' plan for `train_batches` shared over `num_processes` (rounded up, as even_batches does)."""
        batches_per_epoch = math.ceil(train_batches / num_processes)
        steps = args.max_train_steps
        if steps is None:
            steps = args.num_train_epochs * math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        return cls(batches_per_epoch, args.gradient_accumulation_steps, steps, args.eval_steps,
                   args.checkpointing_steps)

    @property
    def steps_per_epoch(self):
        return math.ceil(self.batches_per_epoch / self.gradient_accumulation_steps)

    @property
    def num_train_epochs(self):
        return math.ceil(self.max_train_steps / self.steps_per_epoch)

    def evaluates_at(self, step):
        """Every --eval_steps (else each epoch's end) and at the last step; before that step's checkpoint, so
        that a resumed run never misses or repeats an evaluation."""
        return step % (self.eval_steps or self.steps_per_epoch) == 0 or step == self.max_train_steps

    def checkpoint_at(self, step):
        """The name of the checkpoint due after `step` ("step_N", or "epoch_E" at the end of epoch E), or None."""
        if isinstance(self.checkpointing_steps, int) and step % self.checkpointing_steps == 0:
            return f"step_{step}"
        if self.checkpointing_steps == "epoch" and step % self.steps_per_epoch == 0:
            return f"epoch_{step // self.steps_per_epoch - 1}"
        return None

    def resume_position(self, completed_steps):
        """(epoch, batches of it to skip) that continue a run after `completed_steps` ((num_train_epochs, 0): done)."""
        if completed_steps >= self.max_train_steps:
            return self.num_train_epochs, 0
        epoch, steps_into_epoch = divmod(completed_steps, self.steps_per_epoch)
        return epoch, steps_into_epoch * self.gradient_accumulation_steps


def create_lr_scheduler(args, optimizer, max_train_steps, num_processes):
    """transformers' --lr_scheduler_type schedule with --warmup_ratio, in per-process steps (a prepared
    scheduler steps once per process and optimizer step)."""
    return transformers.get_scheduler(args.lr_scheduler_type, optimizer,
                                      num_warmup_steps=math.ceil(args.warmup_ratio * max_train_steps) * num_processes,
                                      num_training_steps=max_train_steps * num_processes)


class EpochSampler(torch.utils.data.Sampler):
    """Each epoch's order of the training examples, a function of (seed, epoch) only: a run resumed mid-epoch
    replays an uninterrupted one's batches (a prepared DataLoader passes `set_epoch` on). default_rng([seed,
    epoch]) hashes the pair (seed + epoch gave seed 43's first epoch seed 42's second order). With `lengths`
    (--group_by_length): transformers' get_length_grouped_indices, drawn with a generator seeded from it."""

    def __init__(self, num_examples, seed, lengths=None, batch_size=1):
        self.num_examples, self.seed, self.lengths, self.batch_size = num_examples, seed, lengths, batch_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_examples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.lengths is not None:
            generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        return iter(rng.permutation(self.num_examples).tolist())


# ----- Bookkeeping: losses, evaluations, best weights, checkpoints --------------------------------


class TrainingTracker:
    """What a run must remember across an interruption, and a CPU copy of the best evaluation's trainable
    weights (`metric` strictly improved: a tie keeps the earlier one). `save` writes training_state.json into a
    checkpoint and the best weights once beside it (best_weights.safetensors, tagged with their step)."""

    STATE_NAME = "training_state.json"
    BEST_WEIGHTS_NAME = "best_weights.safetensors"

    def __init__(self, metric, settings=None, lr_scheduler=None):
        """settings: `resume_settings`, compared with a checkpoint's by `load`; lr_scheduler: whose rate is logged."""
        self.metric, self.settings, self.lr_scheduler = metric, dict(settings or {}), lr_scheduler
        self.completed_steps, self.history, self.best_index = 0, [], None
        self.loss_sum, self.loss_count, self.train_time_s, self.train_examples = 0.0, 0, 0.0, 0
        self.best_weights, self._written_best_step = None, None
        self._step_loss, self._step_batches, self._step_lr = None, 0, None

    def add_batch(self, loss, examples):
        """Adds a batch's 0-d loss (summed on its device: no synchronisation) and its examples on all processes.
        A step's first batch reads the learning rate of its update (the scheduler moves on after it)."""
        if self._step_batches == 0 and self.lr_scheduler is not None:
            self._step_lr = self.lr_scheduler.get_last_lr()[0]
        loss = loss.detach()
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        self._step_batches += 1
        self.train_examples += examples

    def end_step(self, accelerator, plan, progress_bar, started):
        """The bookkeeping after an optimizer step (its mean loss all-reduced, counted, shown and logged);
        returns (the step number, plan.checkpoint_at's name or None). Raises UsageError for a non-finite
        loss, before this step's checkpoint (the last one stays good)."""
        total = accelerator.reduce(self._step_loss, "mean").item()  # the same on every process
        if not math.isfinite(total):
            raise UsageError(f"Non-finite loss ({total}) at step {self.completed_steps + 1}. Try bf16 instead "
                             "of fp16, a lower --learning_rate, or --max_grad_norm; the last good checkpoint "
                             "(if any) is kept in output_dir.")
        self.loss_sum, self.loss_count = self.loss_sum + total, self.loss_count + self._step_batches
        mean = total / self._step_batches
        self._step_loss, self._step_batches = None, 0
        self.completed_steps += 1
        self.train_time_s += time.perf_counter() - started
        progress_bar.update(1)
        progress_bar.set_postfix(loss=f"{mean:.3f}")
        accelerator.log({"train/loss": mean, "train/learning_rate": self._step_lr}, step=self.completed_steps)
        return self.completed_steps, plan.checkpoint_at(self.completed_steps)

    @property
    def best(self):
        """The best evaluation's history record, or None before any evaluation."""
        return None if self.best_index is None else self.history[self.best_index]

    def record_evaluation(self, epoch, metrics, model):
        """Appends (and logs) an evaluation; True when it is the new best. KeyError without the tracked metric."""
        if self.metric not in metrics:
            raise KeyError(f"Metric {self.metric!r} is not among the validation metrics {sorted(metrics)}.")
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        self.history.append({"epoch": epoch, "step": self.completed_steps, "train_loss": train_loss,
                             "validation": dict(metrics)})
        self.loss_sum, self.loss_count = 0.0, 0
        value, best = metrics[self.metric], self.best and self.best["validation"][self.metric]
        improved = self.best is None or (value > best if higher_is_better(self.metric) else value < best)
        if improved:
            self.best_index = len(self.history) - 1
            self.best_weights = {name: parameter.detach().to("cpu", copy=True).contiguous()
                                 for name, parameter in model.named_parameters() if parameter.requires_grad}
        logger.info("epoch %d step %d: train loss %s, validation %s%s", epoch, self.completed_steps,
                    "n/a" if train_loss is None else f"{train_loss:.4f}",
                    {name: round(value, 4) for name, value in metrics.items()}, " (best)" if improved else "")
        return improved

    def restore_best(self, model):
        """Copies the best weights back into `model`; returns their metrics. RuntimeError when not at hand."""
        best = self.best
        if self.best_weights is None:
            raise RuntimeError(f"The weights of the best evaluation (step {best['step']}) were replaced, after the "
                               "checkpoint this run resumed from, by those of a later evaluation that this run did "
                               "not reproduce (other settings or non-deterministic kernels). Resume from a later "
                               "checkpoint, or start over.")
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_weights.items():
                parameters[name].copy_(value)
        logger.info("Restored the weights of epoch %d step %d (validation %s %.4f).", best["epoch"], best["step"],
                    self.metric, best["validation"][self.metric])
        return best["validation"]

    def state_dict(self):
        """The JSON part of the state (everything but the best weights)."""
        keys = ("settings", "completed_steps", "history", "best_index", "loss_sum", "loss_count", "train_time_s",
                "train_examples")
        return {key: getattr(self, key) for key in keys}

    def save(self, checkpoint):
        """The best weights beside `checkpoint` when they changed, then training_state.json (atomic, last:
        a folder holding it is complete)."""
        checkpoint = Path(checkpoint)
        best_step = self.best["step"] if self.best else None
        if self.best_weights is not None and best_step != self._written_best_step:
            path = checkpoint.parent / self.BEST_WEIGHTS_NAME
            temp = path.with_name(f".{path.name}.tmp")
            save_weights(self.best_weights, temp, {"step": str(best_step)})
            os.replace(temp, path)
            self._written_best_step = best_step
        write_json_atomic(checkpoint / self.STATE_NAME, self.state_dict())

    @classmethod
    def read_state(cls, checkpoint):
        """The training_state.json of a checkpoint folder, as a dict."""
        return json.loads((Path(checkpoint) / cls.STATE_NAME).read_text(encoding="utf-8"))

    def load(self, checkpoint, max_train_steps):
        """Reads what `save` wrote; best weights of a later evaluation (the run went on) are made again. Raises
        UsageError: other `settings`, past max_train_steps, or best weights missing or of a step it cannot redo."""
        checkpoint = Path(checkpoint)
        state = self.read_state(checkpoint)
        problem = settings_problem(checkpoint, state["settings"], self.settings)
        if problem:
            raise UsageError(problem)
        if state["completed_steps"] > max_train_steps:
            raise UsageError(f"{checkpoint} is {state['completed_steps']} steps in, past --max_train_steps "
                             f"{max_train_steps}: resume an earlier checkpoint or ask for more steps")
        for key, value in state.items():
            setattr(self, key, value)
        if self.best is None:
            return
        path, best_step = checkpoint.parent / self.BEST_WEIGHTS_NAME, self.best["step"]
        if not path.is_file():
            raise UsageError(f"{path} is missing: it holds the best weights that {checkpoint} refers to. "
                             "Start over in an empty --output_dir.")
        with safe_open(str(path), "pt") as weights:
            saved_step = int(weights.metadata()["step"])
        if saved_step == best_step:
            self.best_weights = load_file(str(path))
        elif not self.completed_steps < saved_step <= max_train_steps:
            raise UsageError(f"{path} holds the weights of step {saved_step}, not those of the best evaluation "
                             f"of {checkpoint} (step {best_step}): resume another checkpoint or start over.")


def find_checkpoint(resume_from_checkpoint, output_dir):
    """The checkpoint folder (Path) of --resume_from_checkpoint: a path or a folder of output_dir holding a
    training_state.json, or for "latest" the one with the most completed steps (a tie: the newest). Raises
    UsageError when the folder is no checkpoint, or "latest" finds none."""
    state_name = TrainingTracker.STATE_NAME
    if resume_from_checkpoint != "latest":
        for path in (Path(resume_from_checkpoint), Path(output_dir) / resume_from_checkpoint):
            if (path / state_name).is_file():
                return path
        raise UsageError(f"--resume_from_checkpoint {Path(resume_from_checkpoint)}: no {state_name} there. Pass a "
                         "step_N or epoch_N folder of a run's --output_dir, or 'latest'.")
    candidates = [(TrainingTracker.read_state(state.parent)["completed_steps"], state.stat().st_mtime, state.parent)
                  for state in Path(output_dir).glob(f"*/{state_name}")]  # written last, atomically: complete
    if not candidates:
        raise UsageError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}. Checkpoints are "
                         "written with --checkpointing_steps N or --checkpointing_steps epoch.")
    return max(candidates, key=lambda candidate: candidate[:2])[2]


def save_checkpoint(accelerator, tracker, checkpoint, save_total_limit=None):
    """Accelerate's state (model, optimizer, scheduler, RNG) into `checkpoint`, then the tracker's; with
    --save_total_limit N, removes the checkpoints beside it but the newest N and the best evaluation's."""
    accelerator.save_state(str(checkpoint))
    if accelerator.is_main_process:
        readable_like_results(*Path(checkpoint).glob("*.safetensors"))  # Accelerate writes them 0600
        tracker.save(checkpoint)
        if save_total_limit:
            best_step = tracker.best["step"] if tracker.best else None
            saved = sorted((TrainingTracker.read_state(state.parent)["completed_steps"], state.parent.name)
                           for state in Path(checkpoint).parent.glob(f"*/{TrainingTracker.STATE_NAME}"))
            for steps, name in saved[:-save_total_limit]:
                if steps != best_step:
                    logger.info("--save_total_limit %d: removing the checkpoint %s", save_total_limit, name)
                    shutil.rmtree(Path(checkpoint).parent / name)


def load_checkpoint(accelerator, tracker, resume_from_checkpoint, output_dir, max_train_steps):
    """Resumes the tracker (it refuses other settings), then Accelerate's state."""
    checkpoint = find_checkpoint(resume_from_checkpoint, output_dir)
    tracker.load(checkpoint, max_train_steps)
    accelerator.load_state(str(checkpoint))
    logger.info("Resumed from %s after %d steps.", checkpoint, tracker.completed_steps)


# ----- Live curves: Accelerate's trackers (--with_tracking --report_to) -----------------------------

TRACKERS = ("tensorboard", "wandb")  # what --report_to names; "all" is those of them installed


def report_to_trackers(report_to):
    """The trackers of --report_to ("all": TRACKERS) whose package is installed, for Accelerator(log_with=)."""
    names = TRACKERS if report_to == "all" else (report_to,)
    return [name for name in names if importlib.util.find_spec(name) is not None]


def start_tracking(accelerator, args, project_name):
    """--with_tracking: starts the trackers with the flags as config, TensorBoard in OUTPUT_DIR/tensorboard/
    PROJECT_NAME, wandb as a run named after OUTPUT_DIR. Called after clear_previous_run. A run resumed after
    C steps logs from C + 1 on; TensorBoard's purge_step C + 1 hides what an earlier run logged from there."""
    if not args.with_tracking:
        return
    resumed_after = 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
        resumed_after = TrainingTracker.read_state(checkpoint)["completed_steps"]
    init_kwargs = {"tensorboard": {"purge_step": resumed_after + 1},
                   "wandb": {"dir": str(args.output_dir), "name": Path(args.output_dir).resolve().name}}
    config = {name: value if isinstance(value, (bool, int, float, str)) else str(value)  # what hparams take
              for name, value in vars(args).items()}
    accelerator.init_trackers(project_name, config, init_kwargs)


def log_values(split, metrics):
    """{"split/name": value} for `accelerator.log`; {} for metrics None (hidden labels, or no such split)."""
    return {f"{split}/{name}": value for name, value in (metrics or {}).items()}


def end_tracking(accelerator, args, step, test_metrics):
    """--with_tracking: logs `test_metrics` (None: none) at the run's last `step` and closes the trackers."""
    if not args.with_tracking:
        return
    accelerator.log(log_values("test", test_metrics), step=step)
    accelerator.end_training()


# ----- Results files ------------------------------------------------------------------------------


def _write_atomic(path, text):
    """Writes a temp file beside `path`, then os.replace: readers never see half a file."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj):
    """Indented JSON, atomically (TypeError for what json cannot encode: path untouched)."""
    _write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path, rows):
    """JSON rows, one per line, atomically."""
    _write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def environment_info():
    """results.json's "env": python and package versions (None: not installed), "git_commit" (HEAD or None)
    and "git_dirty" (uncommitted changes to tracked files; None without a commit)."""
    info = {"python": sys.version.split()[0]}
    for package in ("torch", "transformers", "accelerate", "datasets", "peft", "promptsource"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    commit = _git("rev-parse", "HEAD")
    info["git_commit"] = commit
    info["git_dirty"] = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info


def _git(*arguments):
    """A git command's output in this file's folder, or None when it fails."""
    try:
        done = subprocess.run(["git", *arguments], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def safe_name(name):
    """A name made safe as one path component ("CogComp/trec" -> "CogComp_trec", "../../etc" -> "etc").
    Raises UsageError when nothing is left (e.g. "/..")."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]|\.{2,}", "_", str(name))
    cleaned = re.sub(r"_+", "_", cleaned).strip("._-")
    if not cleaned:
        raise UsageError(f"Name {name!r} has no characters usable in a file name.")
    return cleaned


def peak_memory_mb():
    """Peak memory in MiB: max_memory_allocated on a GPU, else the peak RSS (ru_maxrss: KiB on Linux, bytes
    on macOS)."""
    import resource  # not on Windows

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def results_record(args, task, method, *, script, accelerator, prompt_id, prompt_name, total_train_batch_size, tracker,
                   plan, validation, test, baselines, trainable_params, total_params, test_labels_hidden=False,
                   few_shot=None, carved_validation=None):
    """The results.json record every script writes (report.py reads this schema; scripts add "data").
    Beyond the flags and counts its keys name: method ("glm_cloze", "linear_head", "mlm_prompt", "seq2seq",
    "glm_gen"); dataset (the name, else the local files {"train": path, ...}); epochs (tracker.history);
    validation (the best evaluation's metrics); test (None when its labels are hidden: test_labels_hidden);
    baselines, scored on the split "test" is (else "validation"); args (every flag, the run's length as
    `plan` ran it; plan None: no training); launch (how Accelerate ran it: not flags of the script); env
    (environment_info()); few_shot and carved_validation (the records of the --num_shots draw and of a
    validation carved from train, else None).
    """
    arguments = dict(vars(args))
    if plan is not None:
        arguments.update(max_train_steps=plan.max_train_steps, num_train_epochs=plan.num_train_epochs)
    files = {split: arguments.get(f"{split}_file") for split in ("train", "validation", "test")}
    dataset = arguments.get("dataset_name") or {split: str(path) for split, path in files.items() if path}
    best = tracker.best
    return {"script": script, "task": task, "method": method, "peft": arguments.get("peft"),
            "model_name_or_path": arguments.get("model_name_or_path"), "dataset": dataset, "prompt_id": prompt_id,
            "prompt_name": prompt_name, "learning_rate": arguments.get("learning_rate"),
            "per_device_train_batch_size": arguments.get("per_device_train_batch_size"),
            "total_train_batch_size": total_train_batch_size, "seed": arguments.get("seed"),
            "metric_for_best_model": arguments.get("metric_for_best_model"), "epochs": tracker.history,
            "best_epoch": best["epoch"] if best else None, "validation": validation, "test": test,
            "test_labels_hidden": test_labels_hidden, "baselines": baselines, "train_time_s": tracker.train_time_s,
            "train_examples_per_s": tracker.train_examples / tracker.train_time_s if tracker.train_time_s else 0.0,
            "peak_memory_mb": peak_memory_mb(), "trainable_params": trainable_params, "total_params": total_params,
            "trainable_share": trainable_params / total_params, "args": arguments,
            "launch": {"mixed_precision": accelerator.mixed_precision, "num_processes": accelerator.num_processes,
                       "device_type": accelerator.device.type}, "env": environment_info(),
            "best_step": best["step"] if best else None, "few_shot": few_shot, "carved_validation": carved_validation}
