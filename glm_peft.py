"""Parameter-efficient tuning of GLM: P-tuning v2 (native) and LoRA (through peft).

`add_peft_args` declares the flags (--peft lora | ptuning_v2; without it, None: full fine-tuning),
`apply_peft` gives a loaded model the chosen method (freezing the backbone) and, with
--peft_weights, the weights saved by an earlier run; `save_trainable_weights` /
`load_trainable_weights` write and read only the trained weights, and `count_parameters` gives the
trainable share a report shows.

Files of a saved method: LoRA in peft's own format (adapter_config.json + adapter_model.safetensors,
which `peft.PeftModel.from_pretrained(base_model, DIR)` loads), P-tuning v2 (ours; peft's prefix
tuning is another layout) in prefix_encoder.safetensors; both with glm_peft.json, our flags, the base
model and the seed. --peft_weights reads either, and a LoRA folder of peft alone.
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from modeling_glm import TINY_MODEL_NAME, PrefixEncoder, UsageError, save_weights

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Parameter-efficient tuning: P-tuning v2 (native) and LoRA (through peft)
# ----------------------------------------------------------------------------------------------

PEFT_METHODS = ("lora", "ptuning_v2")  # --peft; None (the default) is full fine-tuning
LORA_TARGET_MODULES = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
# The flags that define a method; adapter_config.json stores them.
PEFT_FLAGS = ("peft", "pre_seq_len", "prefix_projection", "prefix_hidden_size", "lora_r", "lora_alpha", "lora_dropout",
              "lora_target_modules")
# Learning rates that suit each method (a frozen backbone takes far larger steps on few weights;
# P-tuning v2 reports 5e-3 to 1e-2). Scripts use them when --learning_rate is not given.
PEFT_DEFAULT_LEARNING_RATES = {None: 1e-5, "lora": 5e-4, "ptuning_v2": 5e-3}
GLM_PEFT_CONFIG_NAME, PREFIX_WEIGHTS_NAME = "glm_peft.json", "prefix_encoder.safetensors"
PEFT_CONFIG_NAME, LORA_WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"  # peft's own names
PEFT_MODEL_PREFIX = "base_model.model."  # the key prefix of peft's adapter files (a PeftModel's state dict)
WEIGHTS_NAMES = {"lora": LORA_WEIGHTS_NAME, "ptuning_v2": PREFIX_WEIGHTS_NAME}


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
    as before (peft reads `model.config`, a `PreTrainedConfig`). Returns the model.

    The adapters take the model's train/eval mode (peft creates them in training mode).
    Raises ValueError (from peft) when no module matches `target_modules`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
                        bias="none")
    model = inject_adapter_in_model(config, model)
    return model.train(model.training)  # the new modules start in training mode (dropout on) whatever the model's


def peft_method(model):
    """Which method `model` carries: "ptuning_v2", "lora" or None."""
    if getattr(model, "prefix_encoder", None) is not None:
        return "ptuning_v2"
    if any(hasattr(module, "lora_A") for module in model.modules()):
        return "lora"
    return None


def _method_parameter_names(model, method):
    """The parameters a method trains (all of them for None)."""
    names = [name for name, _ in model.named_parameters()]
    if method == "ptuning_v2":
        return [name for name in names if name.startswith("prefix_encoder.")]
    if method == "lora":
        return [name for name in names if "lora_" in name]
    return names


def count_parameters(model):
    """(trainable, total) parameter counts of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def add_peft_args(parser):
    """Adds the parameter-efficient tuning flags to an argparse parser and returns it: --peft
    {lora,ptuning_v2} (default None: full fine-tuning), --pre_seq_len, --prefix_projection,
    --prefix_hidden_size, --lora_r, --lora_alpha, --lora_dropout, --lora_target_modules, and
    --peft_weights (saved weights to evaluate, see `apply_peft`)."""
    group = parser.add_argument_group("parameter-efficient tuning")
    group.add_argument("--peft", choices=PEFT_METHODS, default=None,
                       help="lora: LoRA adapters (peft); ptuning_v2: a learned key/value prefix in every layer. "
                            "Both freeze the backbone. Default: full fine-tuning.")
    group.add_argument("--pre_seq_len", type=int, default=16, help="P-tuning v2 prefix length")
    group.add_argument("--prefix_projection", action="store_true",
                       help="P-tuning v2: produce the prefix with a 2-layer MLP (reparameterization)")
    group.add_argument("--prefix_hidden_size", type=int, default=512, help="P-tuning v2: hidden size of that MLP")
    group.add_argument("--lora_r", type=int, default=8, help="LoRA rank")
    group.add_argument("--lora_alpha", type=int, default=16, help="LoRA scaling (alpha / r)")
    group.add_argument("--lora_dropout", type=float, default=0.05, help="dropout on the LoRA input")
    group.add_argument("--lora_target_modules", nargs="+", default=list(LORA_TARGET_MODULES),
                       help="names of the nn.Linear layers that get adapters")
    group.add_argument("--peft_weights", default=None, metavar="DIR",
                       help="evaluate PEFT weights saved by --save_best_model (DIR = that run's best_model): "
                            "the method, its settings and weights come from DIR; use with --no-do_train")
    return parser


def read_peft_config(directory):
    """What a folder of `save_trainable_weights` (a run's best_model with --peft and --save_best_model) was
    trained with: the PEFT_FLAGS, base_model_name_or_path and seed from glm_peft.json; or, for a LoRA
    folder of peft alone (adapter_config.json, no glm_peft.json), the LoRA flags from peft's config (seed
    None).

    Raises:
        UsageError: the folder lacks those files or the method's weights (says what such a folder is).
    """
    directory = Path(directory)
    if (directory / GLM_PEFT_CONFIG_NAME).is_file():
        config = json.loads((directory / GLM_PEFT_CONFIG_NAME).read_text())
    elif (directory / PEFT_CONFIG_NAME).is_file():
        lora = json.loads((directory / PEFT_CONFIG_NAME).read_text())
        config = {"peft": "lora", "lora_r": lora["r"], "lora_alpha": lora["lora_alpha"],
                  "lora_dropout": lora["lora_dropout"], "lora_target_modules": sorted(lora["target_modules"]),
                  "base_model_name_or_path": lora.get("base_model_name_or_path"), "seed": None}
    else:
        config = None
    if config is None or not (directory / WEIGHTS_NAMES[config["peft"]]).is_file():
        raise UsageError(
            f"{directory} has no {GLM_PEFT_CONFIG_NAME} with {PREFIX_WEIGHTS_NAME} or {LORA_WEIGHTS_NAME}, nor peft's "
            f"{PEFT_CONFIG_NAME} with {LORA_WEIGHTS_NAME}: PEFT weights are the best_model folder of a run with --peft "
            "lora or --peft ptuning_v2 and --save_best_model, or a LoRA folder of peft's save_pretrained (a fully "
            "fine-tuned best_model loads with --model_name_or_path DIR)."
        )
    return config


def peft_weights_problems(args):
    """What is wrong with `--peft_weights DIR` for this run (empty list: nothing): DIR is no folder of
    `save_trainable_weights`, --peft names another method than the saved one, or the weights were
    trained on glm-tiny (a random base, fixed by the seed) with another --seed."""
    try:
        config = read_peft_config(args.peft_weights)
    except UsageError as error:
        return [f"--peft_weights: {error}"]
    problems, method = [], config["peft"]
    if args.peft not in (None, method):
        problems.append(f"--peft_weights {args.peft_weights} holds {method} weights, not {args.peft}: drop --peft "
                        f"(the saved method is used) or pass --peft {method}")
    base, seed = config.get("base_model_name_or_path"), config.get("seed")
    if base == TINY_MODEL_NAME and args.model_name_or_path == TINY_MODEL_NAME and seed not in (None, args.seed):
        problems.append(f"--peft_weights {args.peft_weights} was trained on glm-tiny initialised with --seed {seed}: "
                        f"pass --seed {seed}, or the weights meet another random base model")
    return problems


def saved_peft_flags(directory):
    """The PEFT_FLAGS that the weights in `directory` were trained with (see `read_peft_config`; a folder
    of peft alone gives the LoRA ones only)."""
    config = read_peft_config(directory)
    return {name: config[name] for name in PEFT_FLAGS if name in config}


def apply_peft(model, args):
    """Gives `model` (in place; it is returned) the method of `args.peft` with its flags: None changes
    nothing, "ptuning_v2" calls `add_prefix_encoder`, "lora" calls `add_lora`; both freeze the backbone.
    With `args.peft_weights` the weights saved there are loaded too (strictly, see
    `load_trainable_weights`); its flags must then be the saved ones (`saved_peft_flags`). Logs the
    trainable share.

    Raises:
        ValueError: the model already carries a method, or the saved weights do not fit it.
    """
    current = peft_method(model)
    if current is not None and args.peft is not None:
        raise ValueError(f"The model already carries {current}; apply_peft expects a base model")
    if args.peft == "ptuning_v2":
        add_prefix_encoder(model, args.pre_seq_len, args.prefix_projection, args.prefix_hidden_size)
    elif args.peft == "lora":
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    if args.peft_weights:
        _load_weights(model, Path(args.peft_weights), args.peft)
    trainable, total = count_parameters(model)
    logger.info("peft=%s: %s trainable of %s parameters (%.4f%%)", args.peft, f"{trainable:,}", f"{total:,}",
                100 * trainable / total)
    return model


def save_trainable_weights(model, directory, args):
    """Writes the weights the method of `args.peft` trains, and only them, to `directory`: for LoRA peft's
    adapter_config.json (a `LoraConfig` of the flags, base_model_name_or_path = args.model_name_or_path)
    and adapter_model.safetensors (`get_peft_model_state_dict`, keys as a PeftModel names them); for
    P-tuning v2 prefix_encoder.safetensors (names as in `model.named_parameters()`); and glm_peft.json
    (the PEFT_FLAGS of `args`, model_name_or_path as base_model_name_or_path, and the seed: a glm-tiny
    base is random by seed).

    Raises:
        ValueError: `args.peft` is None or not the method the model carries.
    """
    from peft import LoraConfig, get_peft_model_state_dict

    if args.peft is None or peft_method(model) != args.peft:
        raise ValueError(f"args.peft is {args.peft!r} but the model carries {peft_method(model)!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if args.peft == "lora":
        LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                   target_modules=list(args.lora_target_modules), bias="none",
                   base_model_name_or_path=args.model_name_or_path).save_pretrained(directory)
        state = {PEFT_MODEL_PREFIX + name: value.detach().contiguous()
                 for name, value in get_peft_model_state_dict(model).items()}
    else:
        params = dict(model.named_parameters())
        state = {name: params[name].detach().contiguous() for name in _method_parameter_names(model, args.peft)}
    save_weights(state, directory / WEIGHTS_NAMES[args.peft], {"format": "pt"})
    config = {**{name: getattr(args, name) for name in PEFT_FLAGS},
              "base_model_name_or_path": args.model_name_or_path, "seed": args.seed}
    (directory / GLM_PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2))


def save_model_and_tokenizer(model, tokenizer, directory, args):
    """What --save_best_model writes to `directory`: the whole model (`save_pretrained`) after full
    fine-tuning, only the PEFT weights (`save_trainable_weights`) with --peft; and the tokenizer."""
    if args.peft is None:
        model.save_pretrained(directory)
    else:
        save_trainable_weights(model, directory, args)
    tokenizer.save_pretrained(directory)


def load_trainable_weights(model, directory):
    """Loads what `save_trainable_weights` wrote onto `model` and returns the model: a base model (e.g.
    fresh from `from_pretrained`) first gets the saved method with the saved flags; a model that
    already carries that method is loaded as is. Strict: every weight of the method must be in the
    file, and nothing else.

    Raises:
        UsageError: `directory` is no folder of saved PEFT weights (see `read_peft_config`).
        UsageError: the model carries another method than the saved one, keys are missing or unexpected
            (both listed), or shapes differ (e.g. another pre_seq_len).
    """
    flags = argparse.Namespace(**saved_peft_flags(directory), peft_weights=None)
    current = peft_method(model)
    if current is None and flags.peft is not None:
        model = apply_peft(model, flags)
    elif current != flags.peft:
        raise UsageError(f"Method mismatch: {directory} holds {flags.peft} weights but the model carries {current}")
    _load_weights(model, Path(directory), flags.peft)
    return model


def _load_weights(model, directory, method):
    """Copies the saved weights of `method` in `directory` into the model's (strict), by parameter name;
    LoRA keys are peft's (a PeftModel's prefix, no adapter name), mapped onto the "default" adapter."""
    from safetensors.torch import load_file

    weights_file = directory / WEIGHTS_NAMES[method]
    state = load_file(str(weights_file))
    params = dict(model.named_parameters())
    expected = set(_method_parameter_names(model, method))
    if method == "lora":
        state = {name.removeprefix(PEFT_MODEL_PREFIX): value for name, value in state.items()}
        by_name = {name.replace(".default.", "."): name for name in expected}  # peft's files omit the adapter name
        expected, state = set(by_name.values()), {by_name.get(name, name): value for name, value in state.items()}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UsageError(f"{weights_file} does not match the model's {method} weights: missing keys {missing[:10]}, "
                         f"unexpected keys {unexpected[:10]}")
    wrong = [f"{n} {tuple(state[n].shape)} vs {tuple(params[n].shape)}" for n in sorted(state)
             if state[n].shape != params[n].shape]
    if wrong:
        raise UsageError(f"{weights_file} has other shapes than the model: {wrong[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    logger.info("Loaded %s weights from %s", method, directory)
