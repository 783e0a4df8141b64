"""GLM for prompt-based fine-tuning: the model, its tokenizer, and the builders of its inputs.

GLM (Du et al., ACL 2022, "GLM: General Language Model Pretraining with Autoregressive Blank
Infilling") reads a corrupted text (Part A, bidirectional) in which each blank is one `[MASK]`,
then writes the missing spans (Part B, left to right), each span opened by `<|startofpiece|>`
(sop) and closed by `<|endofpiece|>` (eop). Every token carries two positions:

    position_ids[:, 0]   where the token sits in Part A; a span token carries its [MASK]'s index
    position_ids[:, 1]   the block position: 0 in Part A, 1, 2, 3, ... inside a span

Fine-tuning keeps this layout (paper, Figure 2): a cloze question is a context with one `[MASK]`
whose answer choices are scored as spans (`build_multiple_choice_inputs`, `score_choices`), and
generation is writing the span of a `[MASK]` placed after the prompt (`build_generation_inputs`,
`generate`). This file holds the whole model in plain PyTorch (no remote code), in the spirit of
nanoGPT; the facts it matches are in GLM_NOTES.md of the team's shared folder.
"""

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

HUB_MODEL_ID = "BAAI/glm-roberta-large"
TINY_MODEL_NAME = "glm-tiny"
SOP_TOKEN, EOP_TOKEN, MASK_TOKEN = "<|startofpiece|>", "<|endofpiece|>", "[MASK]"


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class GLMConfig:
    """Hyper-parameters of GLM, with the field names of the released `config.json`.

    The defaults are those of `BAAI/glm-roberta-large` (24 layers, hidden 1024, 16 heads,
    ~355M parameters). `attention_scale` only changes the order of operations in the released
    code (it rescales scores for numerical range), not the result, so it is kept for the round
    trip and otherwise unused. The layer-norm epsilon is fixed at 1e-5 in the released code.
    """

    num_layers: int = 24
    hidden_size: int = 1024
    num_attention_heads: int = 16
    vocab_size: int = 50304
    max_sequence_length: int = 512
    embedding_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    output_dropout_prob: float = 0.1
    output_predict: bool = True
    block_position_encoding: bool = True
    attention_scale: float = 1.0
    layernorm_epsilon: float = 1e-5
    initializer_range: float = 0.02

    @classmethod
    def tiny(cls, vocab_size: int) -> "GLMConfig":
        """The `glm-tiny` preset: 2 layers, hidden 256, 4 heads; random init, for tests and CPU runs."""
        return cls(num_layers=2, hidden_size=256, num_attention_heads=4, vocab_size=vocab_size)

    @classmethod
    def from_dict(cls, config: dict) -> "GLMConfig":
        """Reads a released or saved config.json; fields not used here (auto_map, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        if not config.get("block_position_encoding", True):
            raise ValueError("Only GLM checkpoints with block_position_encoding=true are supported.")
        return cls(**{k: v for k, v in config.items() if k in known})

    def to_dict(self) -> dict:
        return {"model_type": "glm", "architectures": ["GLMForConditionalGeneration"], **asdict(self)}


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


@dataclass
class GLMOutput:
    """What `GLMForConditionalGeneration.forward` returns.

    loss:            scalar cross-entropy over the positions whose label is not -100, or None
    logits:          [B, S, V], or [N, V] for the N positions picked by `logits_positions`
    past_key_values: per layer a (key, value) pair, each [B, heads, T, head_dim], when use_cache
    """

    loss: Optional[torch.Tensor]
    logits: torch.Tensor
    past_key_values: Optional[tuple] = None


class GLMSelfAttention(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_dropout_prob
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x, mask, past=None):
        B, Q, H = x.shape
        # The fused projection's output is [q | k | v], each then split into heads.
        q, k, v = (t.view(B, Q, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in self.query_key_value(x).split(H, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        dropout = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, Q, H)
        return self.output_dropout(self.dense(y)), (k, v)


class GLMMLP(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x):
        # Exact erf GELU, as the released Hugging Face code (pretraining used the tanh form).
        return self.dropout(self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x))))


class GLMLayer(nn.Module):
    """Pre-LN transformer block: h + attn(LN(h)), then h + mlp(LN(h))."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMSelfAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, h, mask, past=None):
        a, present = self.attention(self.input_layernorm(h), mask, past)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), present


class GLMStack(nn.Module):
    """Position tables, the layers and the final layer norm (the released `transformer.*`)."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
        self.block_position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList(GLMLayer(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class GLMModel(nn.Module):
    """The GLM body: embeddings and transformer; returns final hidden states [B, S, H]."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMStack(config)

    def forward(self, input_ids, position_ids, mask, past_key_values=None):
        t = self.transformer
        h = (self.word_embeddings(input_ids) + t.position_embeddings(position_ids[:, 0])
             + t.block_position_embeddings(position_ids[:, 1]))
        h = t.embedding_dropout(h)
        presents = []
        for i, layer in enumerate(t.layers):
            h, present = layer(h, mask, None if past_key_values is None else past_key_values[i])
            presents.append(present)
        return t.final_layernorm(h), tuple(presents)


def expand_attention_mask(attention_mask, batch_size, query_length, key_length, device):
    """Turns any attention-mask form GLM accepts into a boolean [B, 1, Q, K] (True = may attend).

    Forms (the released code's): None (all visible); `[B]` integer separator `sep` (key j is
    visible from query i when j < sep or j <= i: Part A bidirectional, then causal); `[B, K']`
    0/1 key-padding mask; `[B, 1, Q, K']` 0/1 full mask. The mask describes the last K' keys;
    keys before them (a P-tuning v2 prefix, see `past_key_values`) are visible to every query.
    A query row with no visible key (only padding ever has one) is opened to every key so that
    attention stays finite; the released code makes such a row uniform instead. Neither reaches
    a real token. A mask that hides nothing gives None, as no mask at all: SDPA then takes its
    fastest kernel (flash attention on a GPU) and skips the masking work (benchmarks/bench.py).

    Raises ValueError for a mask of another shape.
    """
    if attention_mask is None:
        return None
    m = attention_mask.to(device)
    if m.dim() == 1:  # separator form, over the current tokens
        i = torch.arange(query_length, device=device)
        m = (i[None, None, :] < m[:, None, None]) | (i[None, None, :] <= i[None, :, None])
        m = m[:, None]
    elif m.dim() == 2:
        m = m[:, None, None, :].expand(-1, 1, query_length, -1)
    elif m.dim() != 4:
        raise ValueError(f"attention_mask must be [B], [B, K] or [B, 1, Q, K]; got shape {tuple(m.shape)}")
    m = m.bool()
    if m.shape[-1] < key_length:
        visible = m.new_ones(batch_size, 1, m.shape[2], key_length - m.shape[-1])
        m = torch.cat([visible, m], dim=-1)
    if m.shape[-1] != key_length or m.shape[2] != query_length:
        raise ValueError(f"attention_mask covers {tuple(m.shape[2:])} (queries, keys) but the input has "
                         f"{query_length} queries and {key_length} keys")
    if m.all():  # e.g. a padding mask of a batch without padding, or a decoding step
        return None
    return m | ~m.any(dim=-1, keepdim=True)


class GLMForConditionalGeneration(nn.Module):
    """GLM with its tied language-model output (logits = hidden @ word_embeddings^T).

    `prefix_encoder` is None, or a `PrefixEncoder` set by `add_prefix_encoder` (P-tuning v2):
    its keys/values then sit before every input, as if they were a cache.
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        self.glm = GLMModel(config)
        self.prefix_encoder = None
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, position_ids, attention_mask=None, labels=None, past_key_values=None,
                use_cache=False, logits_positions=None, label_smoothing=0.0):
        """Runs GLM on `input_ids` [B, S] with `position_ids` [B, 2, S].

        attention_mask:   any form `expand_attention_mask` accepts.
        labels:           [B, S] token ids to predict AT each position (GLM's targets are already
                          aligned, no shift), -100 where nothing is predicted.
        past_key_values:  per layer (key, value) [B, heads, T, head_dim] computed earlier (a cache
                          from `use_cache=True`, or a P-tuning v2 prefix); new tokens attend to them.
                          When None and a `prefix_encoder` is set, the prefix is used (a cache
                          returned then begins with it, so cached decoding needs nothing more).
        logits_positions: optional bool [B, S]; vocabulary logits are then computed only there and
                          returned as [N, V] in row-major order (a large saving with a 50k vocab).
        label_smoothing:  as in `torch.nn.functional.cross_entropy`.

        Returns a `GLMOutput`; `loss` is the mean cross-entropy over labelled positions.
        """
        B, S = input_ids.shape
        if past_key_values is None and self.prefix_encoder is not None:
            # P-tuning v2: the prefix is the first cache entry, so a returned cache already holds it
            # and `expand_attention_mask` shows it to every query (real positions are unchanged).
            past_key_values = self.prefix_encoder(B)
        past_length = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        mask = expand_attention_mask(attention_mask, B, S, past_length + S, input_ids.device)
        hidden, presents = self.glm(input_ids, position_ids, mask, past_key_values)
        if logits_positions is not None:
            hidden = hidden[logits_positions]
            if labels is not None:
                labels = labels[logits_positions]
        logits = F.linear(hidden, self.glm.word_embeddings.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=-100, label_smoothing=label_smoothing)
        return GLMOutput(loss, logits, presents if use_cache else None)

    @classmethod
    def from_pretrained(cls, name_or_path: str, vocab_size: Optional[int] = None):
        """Loads GLM from a local directory or a hub id (default `BAAI/glm-roberta-large`).

        The directory holds `config.json` and `model.safetensors` or `pytorch_model.bin` (read
        with `weights_only=True`: a pickle that would run code is refused). State-dict keys may
        carry the released `glm.` prefix or not. `glm-tiny` builds a random small model instead
        (`GLMConfig.tiny`), which needs `vocab_size` (the tokenizer's length).

        Raises ValueError when keys are missing or unexpected (both listed), OSError when the hub
        cannot be reached (with the flags that point at local files instead).
        """
        if name_or_path == TINY_MODEL_NAME:
            if vocab_size is None:
                raise ValueError("glm-tiny needs vocab_size (the tokenizer's length)")
            return cls(GLMConfig.tiny(vocab_size=_round_up(vocab_size, 64)))
        directory = _resolve_pretrained_dir(name_or_path, ["config.json", "*.safetensors", "pytorch_model.bin"])
        config = GLMConfig.from_dict(json.loads((directory / "config.json").read_text()))
        model = cls(config)
        model.load_state_dict(_normalise_keys(_read_state_dict(directory), model), strict=True)
        if vocab_size is not None and vocab_size > config.vocab_size:
            raise ValueError(f"The tokenizer has {vocab_size} tokens but the model only {config.vocab_size} "
                             "embedding rows: use the tokenizer that came with the checkpoint.")
        return model

    def save_pretrained(self, directory):
        """Writes `config.json` and `model.safetensors` (keys with the released `glm.` prefix)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


def _resolve_pretrained_dir(name_or_path: str, allow_patterns) -> Path:
    """A local directory as is; otherwise downloads the needed files of a hub repository."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=allow_patterns))
    except Exception as error:  # offline, unknown repo, no permission: all end the same way
        raise OSError(
            f"Could not load '{name_or_path}': it is not a local directory and the Hugging Face hub "
            f"did not serve it ({type(error).__name__}: {error}).\n"
            "Point at local files instead: --model_name_or_path DIR (config.json + weights) and "
            "--tokenizer_name DIR (vocab.json, merges.txt, added_tokens.json), or run the offline "
            f"default: --model_name_or_path {TINY_MODEL_NAME} --tokenizer_name train "
            "(a random small GLM and a tokenizer trained on the training texts)."
        ) from None


def _read_state_dict(directory: Path) -> dict:
    if (directory / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").exists():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")


def _normalise_keys(state: dict, model: nn.Module) -> dict:
    """Adds the `glm.` prefix where the checkpoint lacks it; raises on missing or extra keys."""
    state = {k if k.startswith("glm.") else "glm." + k: v for k, v in state.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"The checkpoint does not match GLMConfig: missing keys {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
    return state


@dataclass
class GLMClassifierOutput:
    """What `GLMForSequenceClassification.forward` returns: loss (or None), logits [B, num_labels]."""

    loss: Optional[torch.Tensor]
    logits: torch.Tensor


class GLMForSequenceClassification(nn.Module):
    """GLM with a linear head on the first token: the conventional fine-tuning baseline that the
    cloze formulation (`score_choices`, no new parameters) is compared with on GLM itself.

    The input is plain text `<s> x1 .. xn </s>` (no `[MASK]`), read bidirectionally: positions
    0..S-1, block positions 0. logits = Linear(dropout(h[:, 0])), h the final hidden states (after
    the final layer norm) and position 0 the `<s>` token; dropout = `output_dropout_prob`.
    """

    def __init__(self, config: GLMConfig, num_labels: int, glm: Optional[GLMModel] = None):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels must be at least 2, got {num_labels}")
        self.config, self.num_labels = config, num_labels
        self.glm = GLMModel(config) if glm is None else glm
        self.dropout = nn.Dropout(config.output_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init = GLMForConditionalGeneration._init_weights
        (self.classifier if glm is not None else self).apply(lambda module: init(self, module))

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None):
        """input_ids [B, S]; attention_mask [B, S] 0/1 (1 = real token) or None (all real);
        labels [B] class ids (optional); position_ids [B, 2, S] (default: 0..S-1 and zeros).
        Returns a `GLMClassifierOutput` (loss = mean cross-entropy when labels are given)."""
        B, S = input_ids.shape
        if position_ids is None:
            position_ids = torch.zeros(B, 2, S, dtype=torch.long, device=input_ids.device)
            position_ids[:, 0] = torch.arange(S, device=input_ids.device)
        mask = expand_attention_mask(attention_mask, B, S, S, input_ids.device)
        hidden, _ = self.glm(input_ids, position_ids, mask)
        logits = self.classifier(self.dropout(hidden[:, 0]))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return GLMClassifierOutput(loss, logits)

    @classmethod
    def from_pretrained(cls, name_or_path: str, num_labels: Optional[int] = None, vocab_size: Optional[int] = None):
        """The body of a GLM checkpoint (loaded by `GLMForConditionalGeneration.from_pretrained`:
        local directory, hub id or `glm-tiny`) under a new random head of `num_labels` classes; or,
        from a directory written by this class's `save_pretrained`, the whole classifier (the head
        included; `num_labels` may then be omitted, and must match when given)."""
        saved = Path(name_or_path) / "config.json"
        if os.path.isdir(name_or_path) and saved.is_file():
            config = json.loads(saved.read_text())
            if cls.__name__ in config.get("architectures", []):
                if num_labels is not None and num_labels != config["num_labels"]:
                    raise ValueError(f"{name_or_path} holds a {config['num_labels']}-class head, not {num_labels}")
                model = cls(GLMConfig.from_dict(config), config["num_labels"])
                model.load_state_dict(_read_state_dict(Path(name_or_path)), strict=True)
                return model
        if num_labels is None:
            raise ValueError("num_labels is needed to put a new classification head on a GLM checkpoint")
        lm = GLMForConditionalGeneration.from_pretrained(name_or_path, vocab_size=vocab_size)
        return cls(lm.config, num_labels, glm=lm.glm)

    def save_pretrained(self, directory):
        """Writes `config.json` (GLMConfig fields, architectures, num_labels) and `model.safetensors`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__], "num_labels": self.num_labels}
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


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


class PrefixEncoder(nn.Module):
    """The deep prompt of P-tuning v2 (Liu et al., ACL 2022, "P-Tuning v2: Prompt Tuning Can Be
    Comparable to Fine-tuning Universally Across Scales and Tasks"): `pre_seq_len` learned
    (key, value) pairs for EVERY layer, which every real token attends to.

    Without projection the prefix is one table `embedding` [pre_seq_len, num_layers * 2 * hidden];
    with `prefix_projection` (the paper's reparameterization) a table [pre_seq_len, hidden] goes
    through `trans` = Linear(hidden, prefix_hidden_size), tanh, Linear(prefix_hidden_size,
    num_layers * 2 * hidden). Each row holds, layer after layer, [key | value], each split into
    heads like the attention's own keys (the layout of the P-tuning v2 code).

    forward(batch_size) returns a tuple of num_layers (key, value) pairs, each
    [batch_size, heads, pre_seq_len, head_dim] (expanded, not copied), ready to be a model's
    `past_key_values`. Raises ValueError when pre_seq_len < 1.
    """

    def __init__(self, config: GLMConfig, pre_seq_len: int, prefix_projection: bool = False,
                 prefix_hidden_size: int = 512):
        super().__init__()
        if pre_seq_len < 1:
            raise ValueError(f"pre_seq_len must be at least 1, got {pre_seq_len}")
        self.num_layers, self.num_heads = config.num_layers, config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        width = config.num_layers * 2 * config.hidden_size
        self.embedding = nn.Embedding(pre_seq_len, config.hidden_size if prefix_projection else width)
        self.trans = None
        if prefix_projection:
            self.trans = nn.Sequential(nn.Linear(config.hidden_size, prefix_hidden_size), nn.Tanh(),
                                       nn.Linear(prefix_hidden_size, width))

    def forward(self, batch_size: int):
        prefix = self.embedding.weight if self.trans is None else self.trans(self.embedding.weight)
        P = prefix.shape[0]
        kv = prefix.view(P, 2 * self.num_layers, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        kv = kv[:, None].expand(-1, batch_size, -1, -1, -1)  # [2L, B, heads, P, head_dim]
        return tuple((kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers))


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
# Tokenizer
# ----------------------------------------------------------------------------------------------

TOKENIZER_FILES = ["vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"]
BASE_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..3 and 50264 in RoBERTa


def load_tokenizer(name_or_path: str):
    """The GLM RoBERTa tokenizer (byte-level BPE) as a `transformers.PreTrainedTokenizerFast`.

    `name_or_path` is a directory with the released files (vocab.json, merges.txt,
    added_tokens.json; the remote code named in tokenizer_config.json is NOT run), a directory
    saved by `train_tokenizer` (tokenizer.json), or a hub id. A text encodes as `<s> ... </s>`;
    `[MASK]` becomes one token whatever spaces surround it (a space before it is absorbed).
    The result carries `sop_token_id`, `eop_token_id` (and the usual `mask_token_id`, eos = pad).

    Raises ValueError when added_tokens.json disagrees with the ids this file builds, OSError
    when a hub id cannot be reached.
    """
    from tokenizers import Tokenizer, models

    directory = Path(name_or_path) if os.path.isdir(name_or_path) else _resolve_pretrained_dir(name_or_path, TOKENIZER_FILES)
    if (directory / "tokenizer.json").exists() and not (directory / "vocab.json").exists():
        return _wrap_tokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")))
    tokenizer = _wrap_tokenizer(Tokenizer(models.BPE.from_file(str(directory / "vocab.json"),
                                                               str(directory / "merges.txt"))))
    added_file = directory / "added_tokens.json"
    if added_file.exists():
        for token, token_id in json.loads(added_file.read_text()).items():
            if tokenizer.convert_tokens_to_ids(token) != token_id:
                raise ValueError(f"{added_file}: {token} should have id {token_id} but gets "
                                 f"{tokenizer.convert_tokens_to_ids(token)}")
    return tokenizer


def train_tokenizer(texts, vocab_size: int = 8000):
    """Trains a byte-level BPE with GLM's special tokens on `texts` (an offline stand-in).

    Ids 0..3 are `<s> <pad> </s> <unk>` as in RoBERTa; `<mask>`, sop, eop and `[MASK]` follow
    the learned vocabulary. Save it with `.save_pretrained(dir)`; `load_tokenizer(dir)` reads it.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BASE_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap_tokenizer(tokenizer)


def load_or_train_tokenizer(tokenizer_name, model_name_or_path, train_texts, output_dir, vocab_size=8000):
    """The tokenizer a run uses, as scripts resolve `--tokenizer_name` / `--model_name_or_path`.

    `tokenizer_name="train"` trains a byte-level BPE on `train_texts` (the offline default, see
    `train_tokenizer`) and saves it to `output_dir/tokenizer`, so the run's checkpoints can be
    reloaded with `--tokenizer_name OUTPUT_DIR/tokenizer`. Otherwise `tokenizer_name` (or, when
    None, `model_name_or_path`) goes to `load_tokenizer`.

    Raises ValueError for `glm-tiny` without a tokenizer (it has no files of its own).
    """
    if tokenizer_name == "train":
        tokenizer = train_tokenizer(train_texts, vocab_size=vocab_size)
        tokenizer.save_pretrained(Path(output_dir) / "tokenizer")
        return tokenizer
    name = tokenizer_name or model_name_or_path
    if name == TINY_MODEL_NAME:
        raise ValueError("glm-tiny has no tokenizer files: pass --tokenizer_name train (a BPE trained on the "
                         "training texts) or --tokenizer_name DIR (e.g. the released glm-roberta-large files)")
    return load_tokenizer(name)


def _wrap_tokenizer(tokenizer):
    """Adds GLM's pipeline and special tokens to a byte-level BPE `tokenizers.Tokenizer`."""
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")),
                                                            add_prefix_space=False)
    tokenizer.add_special_tokens(BASE_SPECIAL_TOKENS)
    tokenizer.add_special_tokens([AddedToken(SOP_TOKEN, special=True), AddedToken(EOP_TOKEN, special=True),
                                  AddedToken(MASK_TOKEN, lstrip=True, special=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", cls_token="<s>", eos_token="</s>",
                                   sep_token="</s>", pad_token="</s>", unk_token="<unk>", mask_token=MASK_TOKEN,
                                   additional_special_tokens=[SOP_TOKEN, EOP_TOKEN])
    fast.sop_token_id = fast.convert_tokens_to_ids(SOP_TOKEN)
    fast.eop_token_id = fast.convert_tokens_to_ids(EOP_TOKEN)
    return fast


# ----------------------------------------------------------------------------------------------
# Input builders (paper, Figure 2)
# ----------------------------------------------------------------------------------------------


def encode_context(tokenizer, context: str, max_length: int):
    """Encodes `<s> context </s>` with exactly one `[MASK]`, cut to `max_length` around it.

    When too long, tokens are dropped from the far end of whichever side of the mask is longer
    (the start of the left text, the end of the right text), so the mask always survives.
    Returns (token ids, index of the mask). Raises ValueError when the context has no `[MASK]`
    or several, or when max_length < 3.
    """
    ids = tokenizer(context)["input_ids"]
    count = ids.count(tokenizer.mask_token_id)
    if count != 1:
        raise ValueError(f"A GLM context needs exactly one {MASK_TOKEN}, found {count} in: {context!r}")
    if max_length < 3:
        raise ValueError(f"max_length={max_length} cannot hold <s> [MASK] </s>")
    mask = ids.index(tokenizer.mask_token_id)
    return truncate_around(ids, mask, mask + 1, max_length)


def truncate_around(ids, start, end, max_length):
    """Cuts `<s> left [start:end] right </s>` to max_length tokens, dropping tokens from the far end of
    the longer side (the start of the left text, the end of the right text) so that ids[start:end]
    (the masks) always survive. Returns (ids, new start). Raises ValueError when even the kept span
    and the two special tokens do not fit."""
    if end - start + 2 > max_length:
        raise ValueError(f"{end - start} answer-slot tokens do not fit in --max_seq_length {max_length}")
    left, middle, right = ids[1:start], ids[start:end], ids[end:-1]
    excess = len(ids) - max_length
    while excess > 0:
        if len(left) >= len(right):
            left = left[1:]
        else:
            right = right[:-1]
        excess -= 1
    return [ids[0], *left, *middle, *right, ids[-1]], len(left) + 1


def encode_choice(tokenizer, choice: str, prefix_space: bool = True):
    """Token ids of an answer choice as a span; with `prefix_space` it is encoded as a
    mid-sentence word (`Ġword`), as spans were in pretraining. Raises ValueError if empty."""
    ids = tokenizer((" " if prefix_space else "") + choice.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"Answer choice {choice!r} encodes to no token")
    return ids


def build_multiple_choice_inputs(tokenizer, contexts, choices, max_length=256, choice_prefix_space=True):
    """Packs every answer choice of each example after its context, in ONE sequence.

    contexts: B strings, each with one `[MASK]`; choices: B lists of strings (the verbalizers;
    lists may differ in length, choices in token count). For an example with context tokens
    `<s> x1 [MASK] x2 </s>` (mask index m) and choices c, d the sequence is

        input_ids            <s> x1 [MASK] x2 </s> | sop c1 .. c(n-1) | sop d1 .. d(k-1) | pad
        position_ids[0]       0  1    2     3   4  |  m   m  ..   m   |  m   m  ..   m   |  0
        position_ids[1]       0  0    0     0   0  |  1   2  ..   n   |  1   2  ..   k   |  0
        target_ids           -100 ...                 c1  c2 ..   cn  |  d1  d2 ..   dk  | -100

    Context tokens see the whole context; a choice token sees the context and its own block up
    to itself, never another choice; padding is seen by nobody. The context is cut around the
    mask (`encode_context`) so that it and all its choices fit in `max_length`.

    Returns a dict of tensors: input_ids [B, S], position_ids [B, 2, S], attention_mask bool
    [B, 1, S, S], target_ids [B, S] (-100 where nothing is scored), choice_index [B, S] (which
    choice a scored position belongs to, -1 elsewhere), choice_mask bool [B, C] (real choices).
    Raises ValueError for a bad context (see `encode_context`) or choices longer than max_length.
    """
    if len(contexts) != len(choices):
        raise ValueError(f"{len(contexts)} contexts but {len(choices)} choice lists")
    rows = []
    for context, example_choices in zip(contexts, choices):
        if not example_choices:
            raise ValueError(f"No answer choices for context {context!r}")
        choice_ids = [encode_choice(tokenizer, c, choice_prefix_space) for c in example_choices]
        span_length = sum(len(c) for c in choice_ids)
        if span_length + 3 > max_length:
            raise ValueError(f"The answer choices take {span_length} tokens; max_length={max_length} is too small")
        ids, m = encode_context(tokenizer, context, max_length - span_length)
        rows.append((ids, m, choice_ids))
    S = max(len(ids) + sum(len(c) for c in cs) for ids, _, cs in rows)
    B, C = len(rows), max(len(cs) for _, _, cs in rows)
    batch = {
        "input_ids": torch.full((B, S), tokenizer.pad_token_id, dtype=torch.long),
        "position_ids": torch.zeros(B, 2, S, dtype=torch.long),
        "attention_mask": torch.zeros(B, 1, S, S, dtype=torch.bool),
        "target_ids": torch.full((B, S), -100, dtype=torch.long),
        "choice_index": torch.full((B, S), -1, dtype=torch.long),
        "choice_mask": torch.zeros(B, C, dtype=torch.bool),
    }
    for b, (ids, m, choice_ids) in enumerate(rows):
        L = len(ids)
        batch["input_ids"][b, :L] = torch.tensor(ids)
        batch["position_ids"][b, 0, :L] = torch.arange(L)
        batch["attention_mask"][b, 0, :L, :L] = True
        start = L
        for c, tokens in enumerate(choice_ids):
            n, end = len(tokens), start + len(tokens)
            batch["input_ids"][b, start:end] = torch.tensor([tokenizer.sop_token_id, *tokens[:-1]])
            batch["position_ids"][b, 0, start:end] = m
            batch["position_ids"][b, 1, start:end] = torch.arange(1, n + 1)
            batch["attention_mask"][b, 0, start:end, :L] = True
            batch["attention_mask"][b, 0, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            batch["target_ids"][b, start:end] = torch.tensor(tokens)
            batch["choice_index"][b, start:end] = c
            batch["choice_mask"][b, c] = True
            start = end
    return batch


def score_choices(model, batch, length_normalize=False):
    """Log-likelihood of each packed answer choice: [B, C] (padding choices get -inf).

    score(c) = sum_t log p(c_t | context, c_<t), read at the positions of `sop c1 .. c(n-1)`;
    with `length_normalize` it is divided by the choice's token count. Vocabulary logits are
    computed only at scored positions. `batch` comes from `build_multiple_choice_inputs`
    (tensors on the model's device). Cross-entropy over these scores is the paper's cloze
    fine-tuning loss (no extra classifier).
    """
    scored = batch["target_ids"] != -100
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                attention_mask=batch["attention_mask"], logits_positions=scored)
    token_logp = out.logits.float().log_softmax(-1).gather(-1, batch["target_ids"][scored][:, None])[:, 0]
    B, C = batch["choice_mask"].shape
    flat_choice = (torch.arange(B, device=scored.device)[:, None] * C + batch["choice_index"])[scored]
    scores = token_logp.new_zeros(B * C).index_add(0, flat_choice, token_logp)
    if length_normalize:
        lengths = token_logp.new_zeros(B * C).index_add(0, flat_choice, torch.ones_like(token_logp))
        scores = scores / lengths.clamp(min=1)
    return scores.view(B, C).masked_fill(~batch["choice_mask"], float("-inf"))


def build_generation_inputs(tokenizer, contexts, targets=None, max_length=256, max_target_length=64):
    """GLM inputs for generating the span of a `[MASK]` (blank infilling, paper Figure 2b).

    Each context (one `[MASK]`, usually at its end) is cut around the mask to `max_length`
    tokens and padded to the batch's longest context Lc; the span block follows at column Lc:

        training (targets given)          inference (targets None)
        input_ids   ctx pad | sop t1 .. tn  pad       ctx pad | sop
        labels      -100    | t1  t2 .. eop -100      (none)
        position    0..L-1 0| m   m  .. m             0..L-1 0| m
        block pos   0 ..   0| 1   2  .. n+1           0 ..   0| 1

    Context tokens see the real context (bidirectional); span tokens see the real context and
    the span up to themselves (causal); padding is seen by nobody. Targets longer than
    `max_target_length` tokens are cut to it (eop is then added); the count of cut targets is
    returned as `num_truncated_targets`.

    Returns a dict: input_ids [B, S], position_ids [B, 2, S], attention_mask bool [B, 1, S, S],
    labels [B, S] (training only), mask_positions [B] (index of each [MASK]), context_length Lc
    (int), num_truncated_targets (int). Raises ValueError for a context without exactly one mask.
    """
    encoded = [encode_context(tokenizer, c, max_length) for c in contexts]
    Lc = max(len(ids) for ids, _ in encoded)
    spans, truncated = [[]] * len(contexts), 0
    if targets is not None:
        spans = []
        for target in targets:
            ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            truncated += len(ids) > max_target_length
            spans.append(ids[:max_target_length])
    T = max(len(s) for s in spans) + 1
    B, S = len(contexts), Lc + T
    batch = {
        "input_ids": torch.full((B, S), tokenizer.pad_token_id, dtype=torch.long),
        "position_ids": torch.zeros(B, 2, S, dtype=torch.long),
        "attention_mask": torch.zeros(B, 1, S, S, dtype=torch.bool),
        "mask_positions": torch.tensor([m for _, m in encoded]),
        "context_length": Lc,
        "num_truncated_targets": truncated,
    }
    if targets is not None:
        batch["labels"] = torch.full((B, S), -100, dtype=torch.long)
    for b, ((ids, m), span) in enumerate(zip(encoded, spans)):
        L, n = len(ids), len(span) + 1
        batch["input_ids"][b, :L] = torch.tensor(ids)
        batch["input_ids"][b, Lc:Lc + n] = torch.tensor([tokenizer.sop_token_id, *span])
        batch["position_ids"][b, 0, :L] = torch.arange(L)
        batch["position_ids"][b, 0, Lc:Lc + n] = m
        batch["position_ids"][b, 1, Lc:Lc + n] = torch.arange(1, n + 1)
        batch["attention_mask"][b, 0, :L, :L] = True
        batch["attention_mask"][b, 0, Lc:Lc + n, :L] = True
        batch["attention_mask"][b, 0, Lc:Lc + n, Lc:Lc + n] = torch.ones(n, n, dtype=torch.bool).tril()
        if targets is not None:
            batch["labels"][b, Lc:Lc + n] = torch.tensor([*span, tokenizer.eop_token_id])
    return batch


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


class _SpanDecoder:
    """Grows the span block of a `build_generation_inputs` batch one token at a time.

    With `use_cache` each step feeds only the new token and reuses every layer's keys/values
    (step t costs O(t)); without it, each step recomputes the whole sequence (the reference).
    A new token sits at position (mask index, previous block position + 1) and sees the real
    context and the span so far.
    """

    def __init__(self, model, batch, use_cache):
        self.model, self.use_cache = model, use_cache
        self.input_ids, self.position_ids = batch["input_ids"], batch["position_ids"]
        self.mask = batch["attention_mask"]            # [B, 1, S, S]
        self.key_valid = self.mask[:, 0].any(dim=1)    # [B, S]: keys anyone may see
        out = model(self.input_ids, self.position_ids, self.mask, use_cache=use_cache,
                    logits_positions=self._last())
        self.past, self.logits = out.past_key_values, out.logits.float()
        if use_cache:  # cached steps need only `key_valid`, not the [B, 1, S, S] mask
            self.mask = None

    def _last(self):
        last = torch.zeros_like(self.input_ids, dtype=torch.bool)
        last[:, -1] = True
        return last

    def reorder(self, index):
        """Keeps the rows `index` [B'] (beam search's surviving hypotheses)."""
        self.input_ids, self.position_ids = self.input_ids[index], self.position_ids[index]
        self.key_valid, self.logits = self.key_valid[index], self.logits[index]
        if self.mask is not None:
            self.mask = self.mask[index]
        if self.past is not None:
            self.past = tuple((k[index], v[index]) for k, v in self.past)

    def append(self, tokens):
        """Feeds `tokens` [B]; afterwards `self.logits` [B, V] predicts the next token."""
        position = self.position_ids[:, :, -1:].clone()
        position[:, 1] += 1
        self.input_ids = torch.cat([self.input_ids, tokens[:, None]], dim=1)
        self.position_ids = torch.cat([self.position_ids, position], dim=2)
        self.key_valid = F.pad(self.key_valid, (0, 1), value=True)
        if self.use_cache:
            out = self.model(tokens[:, None], position, self.key_valid[:, None, None, :],
                             past_key_values=self.past, use_cache=True)
            self.past, self.logits = out.past_key_values, out.logits[:, -1].float()
        else:
            self.mask = F.pad(self.mask, (0, 1, 0, 1))
            self.mask[:, 0, -1] = self.key_valid
            out = self.model(self.input_ids, self.position_ids, self.mask, logits_positions=self._last())
            self.logits = out.logits.float()


def _banned_ngram_tokens(tokens, n):
    """Tokens that would repeat an n-gram already in `tokens` (a list of ids)."""
    if n <= 0 or len(tokens) < n - 1:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1:])
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix]


def _adjust_log_probs(logp, generated, step, eop_token_id, min_new_tokens, no_repeat_ngram_size):
    if step < min_new_tokens:
        logp[:, eop_token_id] = float("-inf")
    for row, tokens in enumerate(generated):
        banned = _banned_ngram_tokens(tokens, no_repeat_ngram_size)
        if banned:
            logp[row, banned] = float("-inf")
    return logp


def _sample(logp, top_p, temperature):
    probs = (logp / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keeps the first token always
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1)[:, 0]


@torch.inference_mode()
def generate(model, batch, eop_token_id, max_new_tokens=64, min_new_tokens=0, num_beams=1, length_penalty=1.0,
             no_repeat_ngram_size=0, do_sample=False, top_p=1.0, temperature=1.0, use_cache=True):
    """Writes the span of each `[MASK]`: greedy, sampling or beam search, stopping at eop.

    batch: an inference batch of `build_generation_inputs` (targets=None), on the model's
    device. Contexts padded in a batch give the same output as alone. Beam search ranks
    finished hypotheses by sum log p / length ** length_penalty (length counted in generated
    tokens, eop included), and stops an example once no live beam can beat its worst kept
    hypothesis (the usual heuristic). `no_repeat_ngram_size` n bans any n-gram already in the
    span; `min_new_tokens` bans eop before that many tokens.

    Returns a list of B lists of token ids (eop not included).
    """
    if num_beams > 1:
        return _beam_search(model, batch, eop_token_id, max_new_tokens, min_new_tokens, num_beams,
                            length_penalty, no_repeat_ngram_size, use_cache)
    decoder = _SpanDecoder(model, batch, use_cache)
    B = batch["input_ids"].shape[0]
    generated, done = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool)
    for step in range(max_new_tokens):
        logp = _adjust_log_probs(decoder.logits.log_softmax(-1), generated, step, eop_token_id,
                                 min_new_tokens, no_repeat_ngram_size)
        tokens = _sample(logp, top_p, temperature) if do_sample else logp.argmax(-1)
        tokens = tokens.masked_fill(done.to(tokens.device), eop_token_id)
        for row, token in enumerate(tokens.tolist()):
            if not done[row] and token != eop_token_id:
                generated[row].append(token)
        done |= (tokens == eop_token_id).cpu()
        if done.all() or step == max_new_tokens - 1:
            break
        decoder.append(tokens)
    return generated


def _beam_search(model, batch, eop_token_id, max_new_tokens, min_new_tokens, num_beams, length_penalty,
                 no_repeat_ngram_size, use_cache):
    B, K = batch["input_ids"].shape[0], num_beams
    expanded = {k: v.repeat_interleave(K, dim=0) if torch.is_tensor(v) and v.dim() > 0 else v
                for k, v in batch.items()}
    decoder = _SpanDecoder(model, expanded, use_cache)
    device = decoder.logits.device
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0                                    # all beams start identical: keep one
    beams = [[] for _ in range(B * K)]
    finished = [[] for _ in range(B)]                          # (normalised score, tokens)
    done = [False] * B
    for step in range(max_new_tokens):
        logp = _adjust_log_probs(decoder.logits.log_softmax(-1), beams, step, eop_token_id,
                                 min_new_tokens, no_repeat_ngram_size)
        V = logp.shape[-1]
        candidates = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=-1)
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        source, next_tokens, next_scores = [], [], []
        for b in range(B):
            kept = []
            for score, index in zip(top_scores[b], top_index[b]):
                row, token = b * K + index // V, index % V
                if done[b] or score == float("-inf"):
                    break
                if token == eop_token_id:
                    if len(kept) < K:  # an eop among the best K candidates ends a hypothesis
                        finished[b].append((score / (step + 1) ** length_penalty, beams[row]))
                else:
                    kept.append((score, row, token))
                if len(kept) == K:
                    break
            kept += [(float("-inf"), b * K, eop_token_id)] * (K - len(kept))  # done or starved rows
            for score, row, token in kept:
                source.append(row), next_tokens.append(token), next_scores.append(score)
            if len(finished[b]) >= K:
                worst = sorted(s for s, _ in finished[b])[-K]
                done[b] = done[b] or kept[0][0] / (step + 1) ** length_penalty <= worst
        beams = [beams[row] + [token] for row, token in zip(source, next_tokens)]
        beam_scores = torch.tensor(next_scores, device=device).view(B, K)
        if all(done) or step == max_new_tokens - 1:
            break
        decoder.reorder(torch.tensor(source, device=device))
        decoder.append(torch.tensor(next_tokens, device=device))
    for b in range(B):
        if not done[b]:  # out of steps: the live beams compete with the finished ones
            for k in range(K):
                score = beam_scores[b, k].item()
                if score > float("-inf"):
                    finished[b].append((score / max(len(beams[b * K + k]), 1) ** length_penalty, beams[b * K + k]))
    return [max(hypotheses, key=lambda h: h[0])[1] if hypotheses else [] for hypotheses in finished]
