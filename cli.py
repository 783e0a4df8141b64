"""The command line of run_cls, run_gen, run_baseline and run_pretrain (report uses its parser): the flags
(named as in the HF examples), their checks (which return messages and change nothing; `derived_defaults`
gives what follows), the learning-rate default, the hub asked once, and `run_script`, which prints a
mistake of the user's as one line."""

import argparse
import logging
import signal
import sys
from pathlib import Path

import datasets
import huggingface_hub

from data import OFFLINE_DATASETS, resolve_dataset_name
from glm_peft import (PEFT_DEFAULT_LEARNING_RATES, add_peft_args, peft_args_problems, peft_weights_problems,
                      saved_peft_flags)
from modeling_glm import TINY_MODEL_NAME, UsageError
from training import TRACKERS, TrainingTracker, find_checkpoint, report_to_trackers, resume_settings, settings_problem

logger = logging.getLogger(__name__)

# ----- Flags (the names of the Hugging Face examples) ---------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with each flag's default (unless it is None or False) and the epilog's examples as written."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """A one-line usage (argparse's synopsis of every flag took 40 lines), defaults in --help, and a mistake
    answered with `run_cls.py: error: MESSAGE (all flags: run_cls.py --help)`, exit 2."""

    def __init__(self, usage="%(prog)s [options]", **kwargs):
        super().__init__(formatter_class=HelpFormatter, usage=usage, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (all flags: {self.prog} --help)\n")


def add_data_and_prompt_args(parser, task, pretraining=False):
    """Adds the data and prompt flags to `parser` and returns it. `pretraining` (run_pretrain.py) leaves out
    those of a test split, --list_prompts and --skip_empty, fixing their values, so --help lists what it uses."""
    group = parser.add_argument_group("data and prompts")
    group.add_argument("--dataset_name", help="trec, e2e_nlg_cleaned, the offline fine_foods, wildlife_strikes, "
                       "hhs_breaches or a hub id (default: the task's); with --*_file your task's prompts/NAME.yaml.")
    group.add_argument("--dataset_config_name", help="Hub dataset configuration.")
    group.add_argument("--train_file", help="Local train data (.csv, .json, .jsonl).")
    group.add_argument("--validation_file", help="Local validation data.")
    if not pretraining:
        group.add_argument("--test_file", help="Local test data; hidden labels (all -1 or empty): predictions only.")
    group.add_argument("--validation_split_percentage", type=int, default=10,
                       help="Percent of train used as validation when there is no validation split.")
    group.add_argument("--data_seed", type=int, default=42,
                       help="Seed of the validation carve alone (runs of other --seed values validate on its rows).")
    group.add_argument("--max_train_samples", type=int, help="Keep the first N train rows.")
    group.add_argument("--max_eval_samples", type=int, help="Keep the first N validation rows.")
    if not pretraining:
        group.add_argument("--max_test_samples", "--max_predict_samples", dest="max_test_samples", type=int,
                           help="Keep the first N test rows.")
    group.add_argument("--prompt_id", type=int, help="Prompt id (see --list_prompts); default 0.")
    group.add_argument("--prompt_name", help="Prompt name (instead of --prompt_id).")
    group.add_argument("--prompts_dir", default="prompts", help="Folder of our local YAML prompt files.")
    if pretraining:
        parser.set_defaults(test_file=None, max_test_samples=None, list_prompts=False, skip_empty=True)
        return parser
    group.add_argument("--list_prompts", action="store_true", help="Print the usable prompts and exit.")
    group.add_argument("--skip_empty", action=argparse.BooleanOptionalAction, default=True,
                       help="Skip and count the rows that cannot be rendered, else refuse them (run_cls.py: the "
                            "training rows; its --skip_eval_rows does validation and test).")
    return parser


def data_args_problems(args, task):
    """What is wrong with the flags of `add_data_and_prompt_args` (messages, as training_args_problems)."""
    problems = []
    files = {split: getattr(args, f"{split}_file") for split in ("train", "validation", "test")}
    try:
        resolve_dataset_name(args.dataset_name, task, *files.values())
    except ValueError as error:
        problems.append(str(error).rstrip("."))
    problems += [f"--{split}_file {path} does not exist" for split, path in files.items()
                 if path is not None and not Path(path).is_file()]
    limits = ("max_train_samples", "max_eval_samples", "max_test_samples")
    problems += [f"--{name} must be >= 1 (or unset for all rows)" for name in limits
                 if getattr(args, name) is not None and getattr(args, name) < 1]
    if not 0 < args.validation_split_percentage < 100:
        problems.append("--validation_split_percentage must lie in (0, 100)")
    if args.data_seed < 0:
        problems.append(f"--data_seed must be >= 0, got {args.data_seed}")
    return problems


def add_few_shot_args(parser):
    """Adds --num_shots / --shots_seed (run_cls.py, run_baseline.py) to `parser` and returns it."""
    group = parser.add_argument_group("few-shot")
    group.add_argument("--num_shots", type=int, help="Few-shot classification: train on K examples per class, "
                       "validate on K others per class (unless --validation_file is given).")
    group.add_argument("--shots_seed", type=int, help="Seed of the --num_shots draw (default 0; not --seed's).")
    return parser


def few_shot_problems(args, task):
    """What is wrong with --num_shots / --shots_seed (messages; the default seed is derived_defaults')."""
    if args.num_shots is None:
        return [] if args.shots_seed is None else ["--shots_seed seeds the draw of --num_shots: pass --num_shots K too"]
    if task != "cls":
        return ["--num_shots draws K examples per class: classification only (run_cls.py, run_baseline.py --task "
                "cls); to train generation on fewer rows use --max_train_samples"]
    problems = []
    if args.num_shots < 1:
        problems.append(f"--num_shots must be >= 1 (examples per class), got {args.num_shots}")
    if args.max_train_samples is not None:
        problems.append("--num_shots chooses the training rows: drop --max_train_samples")
    if args.train_file is None and (args.validation_file or args.test_file):
        problems.append("--num_shots draws from the training data: pass --train_file")
    if args.shots_seed is not None and args.shots_seed < 0:
        problems.append(f"--shots_seed must be >= 0, got {args.shots_seed}")
    return problems


def derived_defaults(args, task):
    """{flag: value} that follow from the checked flags, for `vars(args).update`: dataset_name (the task's
    default), shots_seed (0 with --num_shots), and with --peft_weights the saved PEFT method and flags."""
    derived = {"dataset_name": resolve_dataset_name(args.dataset_name, task, args.train_file, args.validation_file,
                                                    args.test_file)}
    if getattr(args, "num_shots", None) and args.shots_seed is None:
        derived["shots_seed"] = 0
    if getattr(args, "peft_weights", None):
        derived.update(saved_peft_flags(args.peft_weights))
    return derived


def parse_or_list_prompts(parser, argv, task):
    """The parsed flags; with --list_prompts only the data flags (checked, no --output_dir needed), with
    `task` and the resolved dataset_name set."""
    listing, _ = add_data_and_prompt_args(ArgumentParser(add_help=False), task).parse_known_args(argv)
    if not listing.list_prompts:
        return parser.parse_args(argv)
    problems = data_args_problems(listing, task)
    if problems:
        parser.error("; ".join(problems))
    listing.task = task
    vars(listing).update(derived_defaults(listing, task))  # the dataset_name
    return listing


def add_model_args(parser):
    """Adds the PEFT flags, --mask_token_id and --save_best_model (run_cls, run_gen, run_baseline)."""
    add_peft_args(parser)
    group = parser.add_argument_group("model")
    group.add_argument("--mask_token_id", type=int, help="GLM: id of [MASK] with released tokenizer files (default "
                       "50264, glm-roberta-large's pretraining row; 50267: the hub tokenizer's).")
    group.add_argument("--save_best_model", action="store_true",
                       help="Write the tested (best) weights to output_dir/best_model (with --peft: the PEFT weights).")
    return parser


def default_learning_rate(peft, full_fine_tuning_rate):
    """--learning_rate when not given: the PEFT method's, else the script's rate for full fine-tuning."""
    return PEFT_DEFAULT_LEARNING_RATES[peft] if peft else full_fine_tuning_rate


def add_generation_args(parser):
    """Adds the generation flags of run_gen.py and run_baseline.py (seq2seq); returns the parser."""
    group = parser.add_argument_group("generation")
    group.add_argument("--max_source_length", type=int, default=256,
                       help="Prompt tokens kept (GLM: cut around the [MASK], which survives; seq2seq: the encoder's).")
    group.add_argument("--max_target_length", type=int, default=64,
                       help="Target tokens trained on (longer ones are cut and counted) and generated at most.")
    group.add_argument("--min_target_length", type=int, default=0, help="Tokens generated at least.")
    group.add_argument("--label_smoothing", type=float, default=0.1, help="Label smoothing of the training loss.")
    group.add_argument("--num_beams", type=int, default=4, help="Beam width; 1 = greedy (or sampling).")
    group.add_argument("--length_penalty", type=float, default=1.0, help="Beam score = sum log p / length ** this.")
    group.add_argument("--no_repeat_ngram_size", type=int, default=3, help="Never repeat an n-gram this long (0: off).")
    group.add_argument("--do_sample", action="store_true", help="Sample instead of greedy (needs --num_beams 1).")
    group.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass.")
    group.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    return parser


def generation_args_problems(args, min_source_length):
    """What is wrong with the generation flags; `min_source_length`: GLM's is 3 (`<s> [MASK] </s>`)."""
    problems = []
    if args.max_target_length < 1 or args.max_source_length < min_source_length:
        problems.append(f"--max_target_length must be >= 1 and --max_source_length >= {min_source_length}")
    if not 0 <= args.min_target_length <= args.max_target_length:
        problems.append("--min_target_length must lie in [0, --max_target_length]")
    if args.num_beams < 1:
        problems.append("--num_beams must be >= 1")
    if args.do_sample and args.num_beams > 1:
        problems.append("--do_sample samples one sequence: pass --num_beams 1 with it")
    if not 0 < args.top_p <= 1 or args.temperature <= 0:
        problems.append("--top_p must lie in (0, 1] and --temperature be > 0")
    if not 0 <= args.label_smoothing < 1:
        problems.append("--label_smoothing must lie in [0, 1)")
    return problems


def tokenizer_problems(args, tiny_models=(TINY_MODEL_NAME,)):
    """[the message] when a tiny model (no tokenizer of its own) is named without --tokenizer_name."""
    if args.model_name_or_path not in tiny_models or args.tokenizer_name is not None:
        return []
    return [f"{args.model_name_or_path} has no tokenizer: pass --tokenizer_name train (a BPE trained on the training "
            "texts) or --tokenizer_name DIR"]


def _checkpointing_steps(value):
    """argparse type: a positive int or the word "epoch"."""
    if value == "epoch":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'epoch', got {value!r}")


def add_training_args(parser, metrics, zero_shot=True):
    """Adds the training flags and returns the parser; `metrics`: the script's validation metrics, the first the
    default; zero_shot False (run_pretrain.py) leaves out --do_train. Mixed precision is Accelerate's
    (accelerate launch --mixed_precision)."""
    group = parser.add_argument_group("training")
    group.add_argument("--model_name_or_path", help="Hub id or local folder; glm-tiny: a random 2-layer GLM, offline.")
    group.add_argument("--tokenizer_name",
                       help="Tokenizer, if not the model's; 'train': a BPE of the training texts (in OUTPUT_DIR).")
    group.add_argument("--output_dir", required=True, help="Where checkpoints, predictions and results.json go.")
    group.add_argument("--overwrite_output_dir", action="store_true", help="Replace a finished run in --output_dir.")
    group.add_argument("--per_device_train_batch_size", type=int, default=16, help="Train batch size per device.")
    group.add_argument("--per_device_eval_batch_size", type=int, default=32, help="Eval batch size per device.")
    methods = ", ".join(f"{rate:.0e}".replace("e-0", "e-") + f" with {'--peft ' + peft if peft else 'full fine-tuning'}"
                        for peft, rate in PEFT_DEFAULT_LEARNING_RATES.items())
    group.add_argument("--learning_rate", type=float, default=1e-5,
                       help=f"Peak learning rate (AdamW). Unless a default is shown, it depends on the method: "
                            f"{methods} (run_baseline.py: 3e-4 for its tiny models, else the architecture's).")
    group.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay (not on biases, norms).")
    group.add_argument("--num_train_epochs", type=int, default=3, help="Training epochs.")
    group.add_argument("--max_train_steps", type=int, help="Total steps; overrides --num_train_epochs.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step.")
    group.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute activations in the backward pass: less memory, about a third more compute.")
    group.add_argument("--warmup_ratio", type=float, default=0.1, help="Share of steps for linear warmup.")
    group.add_argument("--lr_scheduler_type", default="linear", help="get_scheduler's schedule after warmup.",
                       choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                "constant_with_warmup", "inverse_sqrt"))  # those needing only the step counts
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0: off).")
    group.add_argument("--seed", type=int, default=42, help="Seed of the initialisation, dropout and data order.")
    group.add_argument("--metric_for_best_model", choices=metrics, default=metrics[0],
                       help="Validation metric that picks the best step (the highest; loss, perplexity: the lowest).")
    group.add_argument("--eval_steps", type=int, help="Evaluate every N steps (default: each epoch).")
    group.add_argument("--checkpointing_steps", type=_checkpointing_steps, help="Save every N steps or each 'epoch'.")
    group.add_argument("--save_total_limit", type=int, help="Keep the newest N checkpoints and the best evaluation's.")
    group.add_argument("--resume_from_checkpoint", help="A checkpoint folder to continue, or 'latest' in --output_dir.")
    group.add_argument("--group_by_length", action="store_true", help="Batch examples of similar length.")
    if zero_shot:
        group.add_argument("--do_train", action=argparse.BooleanOptionalAction, default=True,
                           help="Train (--no-do_train: evaluate the model as loaded).")
    else:
        parser.set_defaults(do_train=True)
    group.add_argument("--with_tracking", action="store_true",
                       help="Log live curves (Accelerate's trackers): losses, learning rate, metrics, flags.")
    group.add_argument("--report_to", default="all", choices=("all", *TRACKERS),
                       help="Where --with_tracking logs ('all': those installed): OUTPUT_DIR/tensorboard, or wandb "
                            "(WANDB_MODE=offline without a network: OUTPUT_DIR/wandb).")
    group.add_argument("--debug", action="store_true", help="Show an error's traceback (to report a bug).")
    return parser


def will_train(args):
    """--do_train and some steps asked for; otherwise the scripts evaluate the model as loaded."""
    steps = args.num_train_epochs if args.max_train_steps is None else args.max_train_steps
    return args.do_train and steps > 0


def training_args_problems(args):
    """What is wrong with the training flags and --peft_weights: messages each script joins with its own into
    one `parser.error`, before any work. A checkpoint's flags still unset here are compared when it loads."""
    problems = []
    output_dir = Path(args.output_dir).absolute()
    existing = next(path for path in (output_dir, *output_dir.parents) if path.exists())
    if not existing.is_dir():
        problems.append(f"--output_dir {args.output_dir}: {existing} is a file, not a folder; choose another "
                        "--output_dir")
    results = Path(args.output_dir) / "results.json"
    if results.exists() and not args.overwrite_output_dir:
        problems.append(f"{results} exists: a finished run is there. Pass --overwrite_output_dir to replace it, or "
                        "choose another --output_dir")
    elif not (args.overwrite_output_dir or args.resume_from_checkpoint) and any(
            Path(args.output_dir).glob(f"*/{TrainingTracker.STATE_NAME}")):  # what find_checkpoint("latest") finds
        problems.append(f"{args.output_dir} holds the checkpoints of an unfinished run: pass --resume_from_checkpoint "
                        "latest to go on with it, --overwrite_output_dir to start over, or another --output_dir")
    if args.learning_rate is not None and args.learning_rate <= 0:
        problems.append(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.weight_decay < 0 or args.max_grad_norm < 0:
        problems.append("--weight_decay and --max_grad_norm must be >= 0")
    if min(args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) < 1:
        problems.append("batch sizes and --gradient_accumulation_steps must be >= 1")
    if args.eval_steps is not None and args.eval_steps < 1:
        problems.append("--eval_steps must be >= 1")
    if args.num_train_epochs < 0 or (args.max_train_steps is not None and args.max_train_steps < 0):
        problems.append("--num_train_epochs and --max_train_steps must be >= 0")
    if args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if not 0 <= args.warmup_ratio <= 1:
        problems.append("--warmup_ratio must lie in [0, 1]")
    if args.save_total_limit is not None and (args.save_total_limit < 1 or args.checkpointing_steps is None):
        problems.append("--save_total_limit N keeps N >= 1 checkpoints of --checkpointing_steps: pass both")
    if args.with_tracking and not report_to_trackers(args.report_to):
        missing = "neither tensorboard nor wandb is" if args.report_to == "all" else f"{args.report_to} is not"
        package = TRACKERS[0] if args.report_to == "all" else args.report_to
        problems.append(f"--with_tracking --report_to {args.report_to}: {missing} installed. pip install {package}")
    trains = will_train(args)
    if args.resume_from_checkpoint and not trains:
        problems.append("--resume_from_checkpoint continues training: drop --no-do_train (and give it steps)")
    elif args.resume_from_checkpoint:
        try:
            checkpoint = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
        except UsageError as error:
            problems.append(str(error))
        else:
            given = {name: value for name, value in resume_settings(args).items() if value is not None}
            problem = settings_problem(checkpoint, TrainingTracker.read_state(checkpoint)["settings"], given)
            problems += [problem] if problem else []
    for read in ("peft_weights", "model_name_or_path"):
        path = getattr(args, read, None)  # run_pretrain.py has no --peft_weights
        if path and Path(args.output_dir).resolve() in Path(path).resolve().parents:
            problems.append(f"--{read} {path} lies inside --output_dir {args.output_dir}: write this run to another "
                            "--output_dir (it would replace the results of the run that made it)")
    if hasattr(args, "peft"):  # run_pretrain.py has no PEFT flags
        problems += peft_args_problems(args)
    if getattr(args, "peft_weights", None):
        if trains:
            problems.append("--peft_weights evaluates saved PEFT weights without training: add --no-do_train")
        problems += peft_weights_problems(args)
    return problems


# ----- Mistakes, before any work: messages instead of tracebacks, the hub, the model's positions ---

def run_script(main, argv=None):
    """Runs a script's `main(argv)`: a UsageError prints as `run_cls.py: error: MESSAGE`, exit 2 (as argparse);
    Ctrl-C outside the training loop exits 130. Any other error is a bug and keeps its traceback (all do
    with --debug)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = Path(sys.argv[0]).name
    try:
        return main(argv)
    except KeyboardInterrupt:
        if "--debug" in argv:
            raise
        sys.stderr.write(f"{prog}: interrupted\n")
        raise SystemExit(128 + signal.SIGINT) from None
    except UsageError as error:
        if "--debug" in argv:
            raise
        sys.stderr.write(f"{prog}: error: {error}\n")
        raise SystemExit(2) from None


def offline_unless_hub_answers(args, local_models=(TINY_MODEL_NAME,)):
    """Asks the hub once (HEAD, 5 s) when a model, tokenizer or dataset is neither local nor built in; when it
    does not answer, the libraries go offline (one logged line): each name then comes from the cache or fails
    at once instead of retrying for half a minute. Returns whether the run works offline."""
    files = any(getattr(args, f"{split}_file") for split in ("train", "validation", "test"))
    models = (getattr(args, "model_name_or_path", None), getattr(args, "tokenizer_name", None))
    names = (*models, None if files else args.dataset_name)
    built_in = {*local_models, "train", *OFFLINE_DATASETS}
    remote = [name for name in names if name and name not in built_in and not Path(name).exists()]
    if not remote or huggingface_hub.constants.HF_HUB_OFFLINE:
        return bool(remote)
    try:
        huggingface_hub.utils.get_session().head(huggingface_hub.constants.ENDPOINT, timeout=5)
    except Exception as error:  # any failure (DNS, refused, timeout, proxy) means "not reachable"
        logger.warning("The Hugging Face hub (%s) does not answer (%s: %s): working offline, so %s must be in the "
                       "local cache.", huggingface_hub.constants.ENDPOINT, type(error).__name__, error,
                       ", ".join(remote))
        huggingface_hub.constants.HF_HUB_OFFLINE = True  # read by huggingface_hub and transformers at each call
        datasets.config.HF_HUB_OFFLINE = True  # datasets keeps its own copy
        return True
    return False


def position_problem(flag, value, max_positions, model_name, extra=0, cut=None):
    """None when `--flag value` plus `extra` positions fits max_positions, else the refusal naming the largest
    value that fits and (`cut`) what happens to longer texts: past the table, the first step's IndexError."""
    if value + extra <= max_positions:
        return None
    return (f"--{flag} {value} is longer than the {max_positions} positions of {model_name}; use at most "
            f"{max_positions - extra}" + (f" ({cut})" if cut else ""))
