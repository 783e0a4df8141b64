"""Parameter-efficient tuning of GLM for run_cls.py, run_gen.py and baselines.py: P-tuning v2 (ours) and LoRA
(peft), their flags, `apply_peft`, and saving/loading only the trained weights: LoRA in peft's format (`PeftModel.
from_pretrained` reads it), P-tuning v2 as prefix_encoder.safetensors (peft's prefix tuning has another layout),
both beside glm_peft.json (our flags, base model, seed: a glm-tiny base is random by seed).
"""

import argparse
import copy
import json
import logging
from pathlib import Path

import torch

from modeling_glm import TINY_MODEL_NAME, PrefixEncoder, UsageError, save_weights

logger = logging.getLogger(__name__)


PEFT_METHODS = ("lora", "ptuning_v2")  # --peft; None (the default) is full fine-tuning
LORA_TARGET_MODULES = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
PEFT_FLAGS = ("peft", "pre_seq_len", "prefix_projection", "prefix_hidden_size", "lora_r", "lora_alpha", "lora_dropout",
              "lora_target_modules")
# --learning_rate's default: a frozen backbone takes far larger steps (P-tuning v2 reports 5e-3 to 1e-2).
PEFT_DEFAULT_LEARNING_RATES = {None: 1e-5, "lora": 5e-4, "ptuning_v2": 5e-3}
GLM_PEFT_CONFIG_NAME, PREFIX_WEIGHTS_NAME = "glm_peft.json", "prefix_encoder.safetensors"
PEFT_CONFIG_NAME, LORA_WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"  # peft's own names
PEFT_MODEL_PREFIX = "base_model.model."  # the key prefix of peft's adapter files (a PeftModel's state dict)
WEIGHTS_NAMES = {"lora": LORA_WEIGHTS_NAME, "ptuning_v2": PREFIX_WEIGHTS_NAME}


def add_prefix_encoder(model, pre_seq_len: int, prefix_projection: bool = False, prefix_hidden_size: int = 512):
    """Gives `model` a `PrefixEncoder` initialised like the word embeddings, the rest frozen; returns it."""
    reference = model.glm.word_embeddings.weight
    encoder = PrefixEncoder(model.config, pre_seq_len, prefix_projection, prefix_hidden_size)
    encoder = encoder.to(device=reference.device, dtype=reference.dtype)
    encoder.apply(model._init_weights)
    model.requires_grad_(False)
    model.prefix_encoder = encoder.train(model.training)  # its parameters keep requires_grad=True
    return model


def peft_method(model):
    """Which method `model` carries: "ptuning_v2", "lora" or None."""
    if getattr(model, "prefix_encoder", None) is not None:
        return "ptuning_v2"
    if any(hasattr(module, "lora_A") for module in model.modules()):
        return "lora"
    return None


def _method_parameter_names(model, method):
    if method == "ptuning_v2":
        return [name for name, _ in model.named_parameters() if name.startswith("prefix_encoder.")]
    return [name for name, _ in model.named_parameters() if "lora_" in name]


def count_parameters(model):
    """(trainable, total) parameter counts of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def add_peft_args(parser):
    """Adds --peft (default: full fine-tuning), its methods' flags and --peft_weights; returns `parser`."""
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
    """PEFT_FLAGS, base_model_name_or_path and seed of a `save_trainable_weights` folder, or the LoRA flags of
    a peft folder (seed None). Raises UsageError when it is neither."""
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
    """Messages when --peft_weights is no saved folder, --peft names another method, or glm-tiny's --seed
    differs from the one the weights were trained on."""
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


def peft_args_problems(args):
    """Messages for PEFT flag values that peft or the prefix encoder would refuse with a traceback."""
    problems = []
    if args.pre_seq_len < 1 or args.prefix_hidden_size < 1 or args.lora_r < 1:
        problems.append("--pre_seq_len, --prefix_hidden_size and --lora_r must be >= 1")
    if not 0 <= args.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    return problems


def saved_peft_flags(directory):
    """The PEFT_FLAGS the weights in `directory` were trained with."""
    config = read_peft_config(directory)
    return {name: config[name] for name in PEFT_FLAGS if name in config}


def apply_peft(model, args):
    """Gives `model` `args.peft`'s method, the rest frozen, and loads `args.peft_weights` (whose flags `args`
    holds) strictly. Raises ValueError when the model already carries a method, UsageError when no LoRA target
    matches (peft) or the weights do not fit."""
    current = peft_method(model)
    if current is not None and args.peft is not None:
        raise ValueError(f"The model already carries {current}; apply_peft expects a base model")
    if args.peft == "ptuning_v2":
        add_prefix_encoder(model, args.pre_seq_len, args.prefix_projection, args.prefix_hidden_size)
    elif args.peft == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        # LoRA (Hu et al., ICLR 2022): W x + (lora_alpha / r) B A dropout(x), B zero at first.
        config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            target_modules=list(args.lora_target_modules), bias="none")
        try:
            model = inject_adapter_in_model(config, model)
        except ValueError as error:  # peft's NoMatchingPeftModuleError: a name in --lora_target_modules matches nothing
            raise UsageError(f"--lora_target_modules: {error}") from None
        model.train(model.training)  # peft's new modules start in training mode (dropout on) whatever the model's
    if args.peft_weights:
        _load_weights(model, Path(args.peft_weights), args.peft)
    trainable, total = count_parameters(model)
    logger.info("peft=%s: %s trainable of %s parameters (%.4f%%)", args.peft, f"{trainable:,}", f"{total:,}",
                100 * trainable / total)
    return model


def save_trainable_weights(model, directory, args):
    """Writes only the weights `args.peft` trains and glm_peft.json; ValueError unless it is the model's method."""
    from peft import get_peft_model_state_dict

    if args.peft is None or peft_method(model) != args.peft:
        raise ValueError(f"args.peft is {args.peft!r} but the model carries {peft_method(model)!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if args.peft == "lora":
        config = copy.copy(model.peft_config["default"])  # `apply_peft`'s LoraConfig, peft's base model left unset
        config.base_model_name_or_path = args.model_name_or_path
        config.save_pretrained(directory)
        state = {PEFT_MODEL_PREFIX + name: value.detach().contiguous()
                 for name, value in get_peft_model_state_dict(model).items()}
    else:
        params = dict(model.named_parameters())
        state = {name: params[name].detach().contiguous() for name in _method_parameter_names(model, args.peft)}
    save_weights(state, directory / WEIGHTS_NAMES[args.peft], {"format": "pt"})
    flags = [name for name in PEFT_FLAGS if name == "peft" or name.startswith("lora_") == (args.peft == "lora")]
    config = {**{name: getattr(args, name) for name in flags},
              "base_model_name_or_path": args.model_name_or_path, "seed": args.seed}
    (directory / GLM_PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2))


def save_model_and_tokenizer(model, tokenizer, directory, args):
    """--save_best_model: the whole model, or only the PEFT weights with --peft; and the tokenizer."""
    if args.peft is None:
        model.save_pretrained(directory)
    else:
        save_trainable_weights(model, directory, args)
    tokenizer.save_pretrained(directory)


def load_trainable_weights(model, directory):
    """Loads a `save_trainable_weights` folder strictly onto `model` (a base model gets the method first).
    Raises UsageError for no such folder, another method, missing or unexpected keys, or other shapes."""
    flags = argparse.Namespace(**saved_peft_flags(directory), peft_weights=None)
    current = peft_method(model)
    if current is None and flags.peft is not None:
        model = apply_peft(model, flags)
    elif current != flags.peft:
        raise UsageError(f"Method mismatch: {directory} holds {flags.peft} weights but the model carries {current}")
    _load_weights(model, Path(directory), flags.peft)
    return model


def _load_weights(model, directory, method):
    """Copies `method`'s saved weights into the model, strictly (peft's LoRA keys omit the adapter name)."""
    from safetensors.torch import load_file

    weights_file = directory / WEIGHTS_NAMES[method]
    state = load_file(str(weights_file))
    params = dict(model.named_parameters())
    expected = set(_method_parameter_names(model, method))
    if method == "lora":
        state = {name.removeprefix(PEFT_MODEL_PREFIX): value for name, value in state.items()}
        by_name = {name.replace(".default.", "."): name for name in expected}
        state = {by_name.get(name, name): value for name, value in state.items()}
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
