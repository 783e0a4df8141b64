"""Parameter-efficient tuning of GLM: P-tuning v2 (native) and LoRA (through peft).

`add_peft_args` declares the flags, `apply_peft` turns a loaded model into the chosen method
(freezing the backbone), `save_trainable_weights` / `load_trainable_weights` write and read only
the trained weights (`adapter.safetensors` + `adapter_config.json`), and `count_parameters`
gives the trainable share a report shows.
"""

import contextlib
import json
import logging
from pathlib import Path

import torch

from modeling_glm import TINY_MODEL_NAME, PrefixEncoder

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Parameter-efficient tuning: P-tuning v2 (native) and LoRA (through peft)
# ----------------------------------------------------------------------------------------------

PEFT_METHODS = ("none", "lora", "ptuning_v2")
LORA_TARGET_MODULES = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
PEFT_ARG_DEFAULTS = {"peft": "none", "pre_seq_len": 16, "prefix_projection": False, "prefix_hidden_size": 512,
                     "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                     "lora_target_modules": list(LORA_TARGET_MODULES)}
# Learning rates that suit each method (a frozen backbone takes far larger steps on few weights;
# P-tuning v2 reports 5e-3 to 1e-2). Scripts use them when --learning_rate is not given.
PEFT_DEFAULT_LEARNING_RATES = {"none": 1e-5, "lora": 5e-4, "ptuning_v2": 5e-3}
ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME = "adapter.safetensors", "adapter_config.json"

def add_prefix_encoder(model, pre_seq_len: int, prefix_projection: bool = False, prefix_hidden_size: int = 512):
    """Turns `model` into a P-tuning v2 model in place: sets `model.prefix_encoder` and freezes
    every other parameter. Returns the model.

    The prefix takes the device and dtype of the word embeddings and is initialised like them
    (normal, std `initializer_range`), so it starts as small keys and values. Positions of real
    tokens are unchanged and the prefix never changes which real keys a token sees.

    Raises TypeError for a model without prefix support (no `prefix_encoder` attribute) and
    ValueError when it already has a prefix.
    """
    if not hasattr(model, "prefix_encoder"):
        raise TypeError(f"{type(model).__name__} has no prefix_encoder attribute: P-tuning v2 needs "
                        "GLMForConditionalGeneration (or a model whose forward uses prefix_encoder)")
    if model.prefix_encoder is not None:
        raise ValueError("The model already has a P-tuning v2 prefix")
    reference = model.glm.word_embeddings.weight
    encoder = PrefixEncoder(model.config, pre_seq_len, prefix_projection, prefix_hidden_size)
    encoder = encoder.to(device=reference.device, dtype=reference.dtype)
    encoder.apply(model._init_weights)
    model.requires_grad_(False)
    model.prefix_encoder = encoder.train(model.training)  # its parameters keep requires_grad=True
    return model


def add_lora(model, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05,
             target_modules=LORA_TARGET_MODULES):
    """Adds LoRA adapters (Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation of Large Language
    Models") in place with peft's `inject_adapter_in_model`, and freezes everything else.

    Each `nn.Linear` whose name ends with one of `target_modules` becomes a peft `lora.Linear`:
    W x + (lora_alpha / r) * B A dropout(x), with A [r, in] random and B [out, r] zero, so a
    fresh adapter leaves the outputs unchanged. The model stays the same object, called exactly
    as before (peft reads `model.config` through `GLMConfig.to_dict`). Returns the model.

    The adapters take the model's train/eval mode (peft creates them in training mode).
    Raises ValueError (from peft) when no module matches `target_modules`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
                        bias="none")
    model = inject_adapter_in_model(config, model)
    return model.train(model.training)  # the new modules start in training mode (dropout on) whatever the model's


def peft_method(model) -> str:
    """Which method `model` carries: "ptuning_v2", "lora" or "none"."""
    if getattr(model, "prefix_encoder", None) is not None:
        return "ptuning_v2"
    if any(hasattr(module, "lora_A") for module in model.modules()):
        return "lora"
    return "none"


def _peft_parameter_names(model, method: str) -> list:
    """The parameters a method trains (all of them for "none")."""
    if method == "ptuning_v2":
        return [n for n, _ in model.named_parameters() if n.startswith("prefix_encoder.")]
    if method == "lora":
        return [n for n, _ in model.named_parameters() if "lora_" in n]
    return [n for n, _ in model.named_parameters()]


def count_parameters(model) -> tuple:
    """(trainable, total) parameter counts of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@contextlib.contextmanager
def disable_peft(model):
    """Inside the block `model` computes its base model: the prefix is removed and LoRA layers
    are bypassed; both come back (with their requires_grad flags) on exit."""
    encoder = getattr(model, "prefix_encoder", None)
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "enable_adapters")]
    flags = {p: p.requires_grad for m in lora_layers for p in m.parameters()}
    if encoder is not None:
        model.prefix_encoder = None
    for layer in lora_layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        if encoder is not None:
            model.prefix_encoder = encoder
        for layer in lora_layers:
            layer.enable_adapters(True)
        for p, flag in flags.items():
            p.requires_grad_(flag)


def add_peft_args(parser):
    """Adds the parameter-efficient tuning flags to an argparse parser (and returns it):
    --peft {none,lora,ptuning_v2}, --pre_seq_len, --prefix_projection, --prefix_hidden_size,
    --lora_r, --lora_alpha, --lora_dropout, --lora_target_modules (defaults: PEFT_ARG_DEFAULTS),
    --peft_weights (saved weights to evaluate, see `apply_peft`)."""
    d = PEFT_ARG_DEFAULTS
    group = parser.add_argument_group("parameter-efficient tuning")
    group.add_argument("--peft", choices=PEFT_METHODS, default=d["peft"],
                       help="none: full fine-tuning; lora: LoRA adapters (peft); ptuning_v2: a learned "
                            "key/value prefix in every layer. Both freeze the backbone.")
    group.add_argument("--pre_seq_len", type=int, default=d["pre_seq_len"], help="P-tuning v2 prefix length")
    group.add_argument("--prefix_projection", action="store_true",
                       help="P-tuning v2: produce the prefix with a 2-layer MLP (reparameterization)")
    group.add_argument("--prefix_hidden_size", type=int, default=d["prefix_hidden_size"],
                       help="P-tuning v2: hidden size of that MLP")
    group.add_argument("--lora_r", type=int, default=d["lora_r"], help="LoRA rank")
    group.add_argument("--lora_alpha", type=int, default=d["lora_alpha"], help="LoRA scaling (alpha / r)")
    group.add_argument("--lora_dropout", type=float, default=d["lora_dropout"], help="dropout on the LoRA input")
    group.add_argument("--lora_target_modules", nargs="+", default=list(d["lora_target_modules"]),
                       help="names of the nn.Linear layers that get adapters")
    group.add_argument("--peft_weights", default=None, metavar="DIR",
                       help="evaluate PEFT weights saved by --save_best_model (DIR = that run's best_model): "
                            "the method, its settings and weights come from DIR; use with --no-do_train")
    return parser


def _peft_settings(args) -> dict:
    """The peft flags of `args` (a Namespace or a dict), with defaults for the missing ones."""
    get = args.get if isinstance(args, dict) else lambda name, default: getattr(args, name, default)
    settings = {name: get(name, default) for name, default in PEFT_ARG_DEFAULTS.items()}
    if settings["peft"] not in PEFT_METHODS:
        raise ValueError(f"Unknown peft method {settings['peft']!r}; choose one of {PEFT_METHODS}")
    settings["lora_target_modules"] = list(settings["lora_target_modules"])
    return settings


def peft_weights_problems(args, config=None) -> list:
    """What is wrong with `--peft_weights DIR` for this run (empty list: nothing): DIR is no folder
    of `save_trainable_weights`, `args.peft` names another method than the saved one, or the saved
    weights were trained on glm-tiny (a random base, fixed by the seed) with another `--seed`."""
    weights_dir = args.peft_weights
    if config is None:
        try:
            config = read_peft_config(weights_dir)
        except FileNotFoundError as error:
            return [f"--peft_weights: {error}"]
    problems, method = [], _peft_settings(config)["peft"]
    if args.peft not in ("none", method):
        problems.append(f"--peft_weights {weights_dir} holds {method} weights, not {args.peft}: drop --peft (the "
                        f"saved method is used) or pass --peft {method}")
    base, seed = config.get("base_model_name_or_path"), config.get("seed")
    if base == TINY_MODEL_NAME and args.model_name_or_path == TINY_MODEL_NAME and seed != args.seed:
        problems.append(f"--peft_weights {weights_dir} was trained on glm-tiny initialised with --seed {seed}: pass "
                        f"--seed {seed}, or the weights meet another random base model")
    return problems


def apply_peft(model, args):
    """Applies the method `args.peft` chose (flags from `add_peft_args`) to `model` in place and
    returns it: "none" changes nothing, "ptuning_v2" calls `add_prefix_encoder`, "lora" calls
    `add_lora`; both freeze the backbone. Logs trainable / total parameters and the share.

    With `args.peft_weights` (a directory written by `save_trainable_weights`) the method, its
    settings and its weights are the saved ones (`load_trainable_weights`), and `args` takes the
    saved settings so that results report them.

    Raises ValueError for an unknown method, a model that already carries one, or saved weights
    that do not fit this run (`peft_weights_problems`).
    """
    weights_dir = None if isinstance(args, dict) else getattr(args, "peft_weights", None)
    if weights_dir:
        try:
            config = read_peft_config(weights_dir)
        except FileNotFoundError as error:
            raise ValueError(f"--peft_weights: {error}") from error
        problems = peft_weights_problems(args, config)
        if problems:
            raise ValueError("; ".join(problems))
        if config.get("base_model_name_or_path") != args.model_name_or_path:
            logger.warning("--peft_weights %s was trained on %s; loading it onto %s", weights_dir,
                           config.get("base_model_name_or_path"), args.model_name_or_path)
        saved = _peft_settings(config)
        model = _load_trainable_weights(model, weights_dir, config)
        for name, value in saved.items():
            setattr(args, name, value)
        return model
    s = _peft_settings(args)
    current = peft_method(model)
    if current != "none" and s["peft"] != "none":
        raise ValueError(f"The model already carries {current}; apply_peft expects a base model")
    if s["peft"] == "ptuning_v2":
        add_prefix_encoder(model, s["pre_seq_len"], s["prefix_projection"], s["prefix_hidden_size"])
    elif s["peft"] == "lora":
        model = add_lora(model, s["lora_r"], s["lora_alpha"], s["lora_dropout"], s["lora_target_modules"])
    trainable, total = count_parameters(model)
    logger.info("peft=%s: %s trainable of %s parameters (%.4f%%)", s["peft"], f"{trainable:,}", f"{total:,}",
                100 * trainable / max(total, 1))
    return model


def save_trainable_weights(model, directory, args):
    """Writes the weights the method trains, and only them, to `directory`:
    `adapter.safetensors` (parameter names as in `model.named_parameters()`) and
    `adapter_config.json` (the peft flags of `args`, and `base_model_name_or_path` and `seed`
    from `args.model_name_or_path` and `args.seed` when present: a glm-tiny base is random by seed). For P-tuning v2 / LoRA a small fraction of the model;
    for "none" it is the whole model.

    Raises ValueError when `args.peft` is not the method the model carries.
    """
    from safetensors.torch import save_file

    s = _peft_settings(args)
    if peft_method(model) != s["peft"]:
        raise ValueError(f"args.peft is {s['peft']!r} but the model carries {peft_method(model)!r}")
    params = dict(model.named_parameters())
    state = {n: params[n].detach().contiguous() for n in _peft_parameter_names(model, s["peft"])}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    get = args.get if isinstance(args, dict) else lambda name: getattr(args, name, None)
    config = {**s, "base_model_name_or_path": get("model_name_or_path"), "seed": get("seed")}
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2))


def save_model_and_tokenizer(model, tokenizer, directory, args):
    """What --save_best_model writes to `directory`: the whole model (`save_pretrained`) after full
    fine-tuning, only the PEFT weights (`save_trainable_weights`) with `args.peft`; and the tokenizer."""
    if _peft_settings(args)["peft"] == "none":
        model.save_pretrained(directory)
    else:
        save_trainable_weights(model, directory, args)
    tokenizer.save_pretrained(directory)


def read_peft_config(directory) -> dict:
    """The adapter_config.json of a folder written by `save_trainable_weights` (a run's best_model
    with --peft and --save_best_model): the peft flags, base_model_name_or_path and seed.

    Raises FileNotFoundError, saying what such a folder is, when it lacks adapter_config.json or
    adapter.safetensors.
    """
    directory = Path(directory)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory} has no {name}: PEFT weights are the best_model folder of a run with --peft lora or "
                "--peft ptuning_v2 and --save_best_model (a fully fine-tuned best_model loads with "
                "--model_name_or_path DIR)."
            )
    return json.loads((directory / ADAPTER_CONFIG_NAME).read_text())


def load_trainable_weights(model, directory):
    """Loads what `save_trainable_weights` wrote onto `model` and returns the model.

    A base model (e.g. freshly from `from_pretrained`) first gets the saved method with the
    saved settings (`apply_peft`); a model that already carries the same method is loaded as is.
    Loading is strict: every weight of the method must be in the file, and nothing else.

    Raises FileNotFoundError when `directory` lacks adapter_config.json or adapter.safetensors,
    ValueError when the model carries another method than the saved one (method mismatch), when
    keys are missing or unexpected (both listed) or when shapes differ (e.g. another pre_seq_len).
    """
    return _load_trainable_weights(model, directory, read_peft_config(directory))


def _load_trainable_weights(model, directory, config):
    """`load_trainable_weights` with the folder's adapter_config.json already read (`config`)."""
    from safetensors.torch import load_file

    weights_file = Path(directory) / ADAPTER_WEIGHTS_NAME
    method, current = _peft_settings(config)["peft"], peft_method(model)
    if current == "none" and method != "none":
        model = apply_peft(model, config)
    elif current != method:
        raise ValueError(f"Method mismatch: {directory} holds {method} weights but the model carries {current}")
    state = load_file(str(weights_file))
    params = dict(model.named_parameters())
    expected = set(_peft_parameter_names(model, method))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{weights_file} does not match the model's {method} weights: missing keys {missing[:10]}, "
                         f"unexpected keys {unexpected[:10]}")
    wrong = [f"{n} {tuple(state[n].shape)} vs {tuple(params[n].shape)}" for n in sorted(state)
             if state[n].shape != params[n].shape]
    if wrong:
        raise ValueError(f"{weights_file} has other shapes than the model: {wrong[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    logger.info("Loaded %s weights from %s (base model %s)", method, directory, config.get("base_model_name_or_path"))
    return model


# ----------------------------------------------------------------------------------------------
