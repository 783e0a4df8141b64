"""GLM in plain PyTorch, as nanoGPT would write it: config, layers, the two heads, loading.

GLM (Du et al., ACL 2022, "GLM: General Language Model Pretraining with Autoregressive Blank
Infilling") reads a corrupted text (Part A, bidirectional) in which each blank is one `[MASK]`,
then writes the missing spans (Part B, left to right). Every token carries two positions,
`position_ids[:, 0]` (its place in Part A; a span token carries its [MASK]'s index) and
`position_ids[:, 1]` (the block position: 0 in Part A, 1, 2, ... inside a span); the embedding
adds both tables to the word embedding. This file holds the model only: `GLMConfig`, the pre-LN
blocks, `GLMForConditionalGeneration` (tied LM output), `GLMForSequenceClassification` (the linear-
head baseline), the P-tuning v2 `PrefixEncoder` (its keys and values live in the attention cache),
and `from_pretrained` / `save_pretrained` for the released `BAAI/glm-roberta-large` layout, with a
check that the embedding rows a run uses for [MASK], sop and eop were trained (`special_rows_report`).
No remote code is run. The facts it matches are in GLM_NOTES.md of the team's shared folder.
"""

import json
import logging
import math
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
    def from_pretrained(cls, name_or_path: str, vocab_size: Optional[int] = None,
                        special_token_ids: Optional[dict] = None):
        """Loads GLM from a local directory or a hub id (default `BAAI/glm-roberta-large`).

        The directory holds `config.json` and `model.safetensors` or `pytorch_model.bin` (read
        with `weights_only=True`: a pickle that would run code is refused). State-dict keys may
        carry the released `glm.` prefix or not. `glm-tiny` builds a random small model instead
        (`GLMConfig.tiny`), which needs `vocab_size` (the tokenizer's length).

        With `special_token_ids` ({token: id} of the rows a run uses, e.g. [MASK], sop, eop) and
        `vocab_size`, loaded weights get `check_special_rows` (not glm-tiny: all its rows are random).

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
        if special_token_ids is not None:
            check_special_rows(model.glm.word_embeddings.weight, special_token_ids, vocab_size)
        return model

    def save_pretrained(self, directory):
        """Writes `config.json` and `model.safetensors` (keys with the released `glm.` prefix)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def special_rows_report(weight, token_ids, tokenizer_length):
    """Tells whether the embedding rows a run uses for its special tokens were trained.

    Rows past the tokenizer's length (`tokenizer_length` .. V-1) were never the input of any
    training text: their L2 norms show what an untrained row of this checkpoint looks like (its
    initial scale, moved only by the tied output softmax and weight decay). When the padding
    rows' norms stand apart from the vocabulary rows' (0 .. tokenizer_length-1, the checked ids
    left out: the vocabulary median lies outside the padding range), a checked row looks untrained
    when its norm is nearer (in ratio) the padding median than the vocabulary median; otherwise
    norms cannot tell and no row is judged. GLM_NOTES.md "Tokenizer": glm-roberta-large learned
    [MASK] as row 50264; rows 50267..50303 were never reached by text.

    weight: the word embeddings [V, H]; token_ids: {name: id}, the rows to check (names are free,
    e.g. "[MASK]=50264" and "[MASK]=50267" side by side); tokenizer_length: int, <= V.
    Returns (table: str, a line per reference group and per checked row; warnings: {name: str}
    for each untrained-looking row, naming the token, its id and the figures).
    """
    norms = weight.detach().float().norm(dim=-1).cpu()
    ordinary = torch.ones(tokenizer_length, dtype=torch.bool)
    ordinary[[i for i in token_ids.values() if i < tokenizer_length]] = False
    vocabulary, padding = norms[:tokenizer_length][ordinary], norms[tokenizer_length:]
    vocabulary_median = vocabulary.median().item()
    lines = [f"vocabulary rows 0..{tokenizer_length - 1} ({len(vocabulary)} rows, the checked ones left out): "
             f"L2 norm median {vocabulary_median:.4f} (min {vocabulary.min():.4f}, max {vocabulary.max():.4f})"]
    separable = len(padding) > 0 and not padding.min() <= vocabulary_median <= padding.max()
    if len(padding):
        padding_median = padding.median().item()
        lines.append(f"padding rows {tokenizer_length}..{len(norms) - 1} ({len(padding)}, never an input): L2 norm "
                     f"median {padding_median:.4f} (min {padding.min():.4f}, max {padding.max():.4f})")
    if not separable:
        lines.append("the padding rows' norms do not stand apart from the vocabulary's (or there are none): "
                     "norms cannot tell a trained row here")
    lines.append(f"{'token':<24} {'id':>6} {'L2 norm':>9}  looks")
    warnings = {}
    for name, token_id in token_ids.items():
        norm = norms[token_id].item()
        untrained = separable and abs(math.log(norm / padding_median)) < abs(math.log(norm / vocabulary_median))
        lines.append(f"{name:<24} {token_id:>6} {norm:>9.4f}  "
                     f"{'?' if not separable else 'UNTRAINED (like a padding row)' if untrained else 'trained'}")
        if untrained:
            warnings[name] = (f"{name} uses embedding row {token_id}, which looks untrained: its L2 norm {norm:.4f} is "
                              f"near the padding rows' (median {padding_median:.4f}, range {padding.min():.4f}.."
                              f"{padding.max():.4f}), far from the vocabulary rows' median {vocabulary_median:.4f}. "
                              "The checkpoint never learned this row: check the tokenizer (for glm-roberta-large "
                              "[MASK] is 50264, see --mask_token_id).")
    return "\n".join(lines), warnings


def check_special_rows(weight, token_ids, tokenizer_length):
    """Logs `special_rows_report` once: the table at INFO, each untrained-looking row as a WARNING."""
    table, warnings = special_rows_report(weight, token_ids, tokenizer_length)
    logger.info("Embedding rows of the special tokens this run uses:\n%s", table)
    for warning in warnings.values():
        logger.warning(warning)


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
        reason = str(error).split(". ")[0]  # huggingface_hub's later advice (HF_HUB_OFFLINE=0) misleads offline
        raise OSError(
            f"Could not load '{name_or_path}': it is not a local directory and the Hugging Face hub "
            f"did not serve it ({type(error).__name__}: {reason}).\n"
            "Point at local files instead: --model_name_or_path DIR (config.json + weights) and "
            "--tokenizer_name DIR (vocab.json, merges.txt, added_tokens.json), or run offline: "
            f"--model_name_or_path {TINY_MODEL_NAME} --tokenizer_name train (a random small GLM and a "
            "tokenizer trained on the training texts) on data that needs no network: your --train_file, or "
            "--dataset_name fine_foods (run_cls.py) / wildlife_strikes (run_gen.py)."
        ) from None


def max_positions(name_or_path: str) -> int:
    """The positions a checkpoint's tables hold, `max_sequence_length` (glm-roberta-large: 512): that of
    the `glm-tiny` preset, or of the config.json of a local directory or hub repository (only that file
    is downloaded), so that scripts can check their length flags before loading anything else.

    Raises OSError when the config cannot be had (as `from_pretrained`, with the local alternatives).
    """
    if name_or_path == TINY_MODEL_NAME:
        return GLMConfig.max_sequence_length
    config = _resolve_pretrained_dir(name_or_path, ["config.json"]) / "config.json"
    if not config.is_file():
        raise OSError(f"{name_or_path} holds no config.json: --model_name_or_path must be a GLM checkpoint folder "
                      f"(config.json + weights), a hub id, or {TINY_MODEL_NAME}.")
    return GLMConfig.from_dict(json.loads(config.read_text())).max_sequence_length


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


