"""GLM (Du et al., ACL 2022) in plain PyTorch, matching GLM_NOTES.md: `GLMConfig`, the pre-LN blocks,
`GLMForConditionalGeneration` (tied LM output, transformers' `generate`), `GLMForSequenceClassification` (the
linear-head baseline), P-tuning v2's `PrefixEncoder`, and loading `BAAI/glm-roberta-large` without remote code.
Trap: transformers 5's "glm" model_type (the hub config's) is GLM-4: load through these classes, not Auto*.
"""

import inspect
import json
import logging
import math
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

logger = logging.getLogger(__name__)


HUB_MODEL_ID = "BAAI/glm-roberta-large"
TINY_MODEL_NAME = "glm-tiny"
SOP_TOKEN, EOP_TOKEN, MASK_TOKEN = "<|startofpiece|>", "<|endofpiece|>", "[MASK]"


class UsageError(ValueError):
    """A user's mistake: `cli.run_script` prints it as one line and exits 2 (other exceptions are bugs)."""


def readable_like_results(*paths):
    """Mode 0666 less the umask, as `open` gives results.json (safetensors writes 0600: unreadable to a team)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)


def save_weights(state, path, metadata):
    """safetensors' save_file, readable like the results files."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    readable_like_results(path)


class GLMConfig(PreTrainedConfig):
    """The released config.json's fields (`attention_scale` kept, unused); UsageError without block positions."""

    model_type = "glm_blank_infilling"
    max_sequence_length = 512  # also the input builders' default limit
    attribute_map = {"num_hidden_layers": "num_layers", "max_position_embeddings": "max_sequence_length"}

    def __init__(self, num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=50304,
                 max_sequence_length=512, embedding_dropout_prob=0.1, attention_dropout_prob=0.1,
                 output_dropout_prob=0.1, output_predict=True, block_position_encoding=True, attention_scale=1.0,
                 layernorm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=True, **kwargs):
        if not block_position_encoding:
            raise UsageError("Only GLM checkpoints with block_position_encoding=true are supported.")
        self.num_layers, self.hidden_size, self.num_attention_heads = num_layers, hidden_size, num_attention_heads
        self.vocab_size, self.max_sequence_length = vocab_size, max_sequence_length
        self.embedding_dropout_prob, self.attention_dropout_prob = embedding_dropout_prob, attention_dropout_prob
        self.output_dropout_prob, self.output_predict = output_dropout_prob, output_predict
        self.block_position_encoding, self.attention_scale = block_position_encoding, attention_scale
        self.layernorm_epsilon, self.initializer_range = layernorm_epsilon, initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class GLMSelfAttention(nn.Module):
    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_dropout_prob
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x, mask, prefix_key=None, prefix_value=None, cache=None):
        B, Q, H = x.shape
        # The released weights' fused output is [q | k | v] in contiguous thirds, not interleaved per head.
        q, k, v = (t.view(B, Q, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in self.query_key_value(x).split(H, dim=-1))
        if prefix_key is not None:
            k, v = torch.cat([prefix_key, k], dim=2), torch.cat([prefix_value, v], dim=2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, Q, H)
        return self.output_dropout(self.dense(y))


class GLMMLP(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x):
        # Exact erf GELU, as the released Hugging Face code (pretraining used the tanh form).
        return self.dropout(self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x))))


class GLMLayer(GradientCheckpointingLayer):
    """Pre-LN block; h and the prefix are positional so that gradient checkpointing passes their gradients."""

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMSelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, h, mask, prefix_key=None, prefix_value=None, cache=None):
        h = h + self.attention(self.input_layernorm(h), mask, prefix_key, prefix_value, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class GLMModel(nn.Module):
    """The GLM body: embeddings and transformer; returns final hidden states [B, S, H]."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = nn.ModuleDict(dict(  # the released checkpoint's `transformer.*`
            position_embeddings=nn.Embedding(config.max_sequence_length + 1, config.hidden_size),
            block_position_embeddings=nn.Embedding(config.max_sequence_length + 1, config.hidden_size),
            embedding_dropout=nn.Dropout(config.embedding_dropout_prob),
            layers=nn.ModuleList(GLMLayer(config, i) for i in range(config.num_layers)),
            final_layernorm=nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon),
        ))

    def forward(self, input_ids, position_ids, mask, prefix=None, cache=None):
        """prefix: None or per layer a P-tuning v2 (key, value) pair; cache: None or a transformers `Cache`."""
        t = self.transformer
        h = (self.word_embeddings(input_ids) + t.position_embeddings(position_ids[:, 0])
             + t.block_position_embeddings(position_ids[:, 1]))
        h = t.embedding_dropout(h)
        for i, layer in enumerate(t.layers):
            prefix_key, prefix_value = (None, None) if prefix is None else prefix[i]
            h = layer(h, mask, prefix_key, prefix_value, cache=cache)
        return t.final_layernorm(h)


def expand_attention_mask(attention_mask, batch_size, query_length, key_length, device):
    """The released code's mask forms as bool [B, 1, Q, K] (True = may attend), or None if nothing is hidden (SDPA's
    fastest kernel): `[B]` separator sep (key j visible from query i when j < sep or j <= i), `[B, K']` key padding,
    `[B, 1, Q, K']` full, 0/1 over the last K' keys (earlier prefix/cache keys visible). A query that sees no key
    sees all, staying finite (the released code makes it uniform). Raises ValueError for another shape."""
    if attention_mask is None:
        return None
    m = attention_mask.to(device)
    if m.dim() == 1:
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


def span_attention_mask(key_padding_mask, block_position_ids):
    """Paper Figure 2b: Part A sees the real Part A, a span token also the span up to itself. key_padding_mask
    [B, S] (1 = real), block_position_ids [B, S] (0 = Part A) -> bool [B, 1, S, S]."""
    S = block_position_ids.shape[1]
    in_span = block_position_ids > 0
    i = torch.arange(S, device=block_position_ids.device)
    causal = i[None, :] <= i[:, None]                                               # [S(q), S(k)]
    visible = ~in_span[:, None, :] | (in_span[:, :, None] & causal[None])          # [B, Q, K]
    return (visible & key_padding_mask.bool()[:, None, :])[:, None]


class GLMPreTrainedModel(PreTrainedModel):
    """GLM models' config class, transformers' default init and the released `glm.` key prefix."""

    config_class = GLMConfig
    base_model_prefix = "glm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMLayer"]
    _supports_sdpa = True

    def get_input_embeddings(self):
        return self.glm.word_embeddings

    @classmethod
    def _load_glm(cls, name_or_path, config, new_keys=(), **kwargs):
        """transformers' `from_pretrained` with our `config`. Raises UsageError for missing keys (other than
        `new_keys`, a new head) or unexpected ones (transformers only logs them), or an unreachable hub."""
        directory = _resolve_pretrained_dir(name_or_path, ["config.json", "*.safetensors", "pytorch_model.bin"])
        model, info = super().from_pretrained(str(directory), config=config, output_loading_info=True, **kwargs)
        missing, unexpected = sorted(set(info["missing_keys"]) - set(new_keys)), sorted(info["unexpected_keys"])
        if missing or unexpected:
            raise UsageError(f"The checkpoint does not match GLMConfig: missing keys {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                             f"{' ...' if len(unexpected) > 10 else ''}")
        return model

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' `save_pretrained`, the weights readable like the results files."""
        super().save_pretrained(save_directory, **kwargs)
        readable_like_results(*Path(save_directory).glob("*.safetensors"))


class GLMForConditionalGeneration(GLMPreTrainedModel, GenerationMixin):
    """GLM with its tied LM output; `prefix_encoder`: None or P-tuning v2's (`glm_peft.add_prefix_encoder`)."""

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.prefix_encoder = None
        self.post_init()

    def forward(self, input_ids, position_ids=None, attention_mask=None, labels=None, cache=None, use_cache=None,
                logits_positions=None, logits_to_keep=0, label_smoothing=0.0, **kwargs):
        """input_ids [B, S], position_ids [B, 2, S], attention_mask any `expand_attention_mask` form, labels [B, S]
        aligned (no shift, -100 unscored), cache a transformers `Cache` ([B, heads, T, head_dim] per layer, begun
        by the prefix). Logits [B, S, V], [N, V] at bool [B, S] `logits_positions`, or [B, n, V] for `logits_to_keep`
        n; loss: mean cross-entropy. Raises ValueError without position_ids."""
        if position_ids is None:
            raise ValueError("GLM needs position_ids [B, 2, S] (position, block position): use glm_utils' builders")
        B, S = input_ids.shape
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = 0 if cache is None else cache.get_seq_length()
        prefix = None
        if self.prefix_encoder is not None and past_length == 0:
            prefix = self.prefix_encoder(B)
            past_length = prefix[0][0].shape[2]
        mask = expand_attention_mask(attention_mask, B, S, past_length + S, input_ids.device)
        hidden = self.glm(input_ids, position_ids, mask, prefix, cache)
        if logits_positions is not None:
            hidden = hidden[logits_positions]
            if labels is not None:
                labels = labels[logits_positions]
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = F.linear(hidden, self.glm.word_embeddings.weight)
        loss = None if labels is None else F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                           labels.reshape(-1), label_smoothing=label_smoothing)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      position_ids=None, block_position_ids=None, use_cache=None, **kwargs):
        """Each step's inputs (Figure 2b): the whole sequence with `span_attention_mask` while the cache is empty,
        then the new tokens, which see every real key. From `glm_utils.generation_kwargs`: input_ids, position_ids,
        block_position_ids (apart: `generate` reads 3D positions as multimodal) and attention_mask [B, S] (pass
        it: pad is `</s>`, so a guessed mask would hide `</s>`). Raises ValueError without the position rows."""
        if position_ids is None or block_position_ids is None:
            raise ValueError("GLM's generate needs position_ids and block_position_ids: pass "
                             "glm_utils.generation_kwargs(batch) of a build_generation_inputs batch")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        position_ids = torch.stack([position_ids, block_position_ids], dim=1)
        if cache is None or cache.get_seq_length() == 0:
            mask = span_attention_mask(attention_mask, block_position_ids)
        else:
            input_ids, position_ids, mask = (input_ids[:, -next_sequence_length:],
                                             position_ids[..., -next_sequence_length:], attention_mask)
        return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "cache": cache,
                "use_cache": use_cache}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        """After a step: the new tokens take the span's mask index and the next block positions."""
        position_ids, block = model_kwargs.pop("position_ids"), model_kwargs.pop("block_position_ids")
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens)
        step = torch.arange(1, num_new_tokens + 1, device=block.device)
        model_kwargs["position_ids"] = torch.cat([position_ids, position_ids[:, -1:].expand(-1, num_new_tokens)], -1)
        model_kwargs["block_position_ids"] = torch.cat([block, block[:, -1:] + step], dim=-1)
        return model_kwargs

    @classmethod
    def from_pretrained(cls, name_or_path: str, vocab_size: Optional[int] = None, **kwargs):
        """GLM from a directory (config.json + safetensors or pytorch_model.bin, keys with or without `glm.`) or
        a hub id (kwargs go to transformers: dtype, device_map...); `glm-tiny` (2 layers, hidden 256, 4 heads) is
        random and needs `vocab_size`.
        Raises UsageError for mismatched keys, a tokenizer larger than the embeddings, or an unreachable hub."""
        if name_or_path == TINY_MODEL_NAME:
            if vocab_size is None:
                raise ValueError("glm-tiny needs vocab_size (the tokenizer's length)")
            return cls(GLMConfig(num_layers=2, hidden_size=256, num_attention_heads=4,
                                 vocab_size=64 * math.ceil(vocab_size / 64)))
        model = cls._load_glm(name_or_path, read_config(name_or_path), **kwargs)
        if vocab_size is not None and vocab_size > model.config.vocab_size:
            raise UsageError(f"The tokenizer has {vocab_size} tokens but the model only {model.config.vocab_size} "
                             "embedding rows: use the tokenizer that came with the checkpoint.")
        return model


def read_config(name_or_path: str) -> GLMConfig:
    """The `GLMConfig` of a directory or hub id (only config.json downloaded). Raises UsageError without one."""
    path = _resolve_pretrained_dir(name_or_path, ["config.json"]) / "config.json"
    if not path.is_file():
        raise UsageError(f"{name_or_path} holds no config.json: --model_name_or_path must be a GLM checkpoint folder "
                         f"(config.json + weights), a hub id, or {TINY_MODEL_NAME}.")
    # Our fields, architectures and a classifier's labels; the rest (auto_map, the hub's model_type "glm") dropped.
    ours = set(inspect.signature(GLMConfig.__init__).parameters) - {"self", "kwargs"}
    config = json.loads(path.read_text())
    return GLMConfig(**{k: v for k, v in config.items() if k in ours | {"id2label", "num_labels", "architectures"}})


def _resolve_pretrained_dir(name_or_path: str, allow_patterns) -> Path:
    """A local directory as is, else the hub's `allow_patterns` files."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=allow_patterns))
    except Exception as error:  # offline, unknown repo, no permission: all end the same way
        reason = " ".join(str(error).split(". ")[0].split())  # one line; the hub's later advice misleads offline
        raise UsageError(
            f"Could not load '{name_or_path}': it is not a local directory and the Hugging Face hub "
            f"did not serve it ({type(error).__name__}: {reason}). "
            "Point at local files instead: --model_name_or_path DIR (config.json + weights) and "
            "--tokenizer_name DIR (vocab.json, merges.txt, added_tokens.json), or run offline: "
            f"--model_name_or_path {TINY_MODEL_NAME} --tokenizer_name train (a random small GLM and a "
            "tokenizer trained on the training texts) on data that needs no network: your --train_file, or "
            "--dataset_name fine_foods (run_cls.py) / wildlife_strikes (run_gen.py)."
        ) from None


def max_positions(name_or_path: str) -> int:
    """A checkpoint's `max_sequence_length` from its config alone (scripts check flags before loading)."""
    config = GLMConfig if name_or_path == TINY_MODEL_NAME else read_config(name_or_path)
    return config.max_sequence_length


class GLMForSequenceClassification(GLMPreTrainedModel):
    """The cloze formulation's baseline: `<s> text </s>` read bidirectionally, Linear(dropout(h[:, 0]))."""

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.dropout = nn.Dropout(config.output_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None, **kwargs):
        """input_ids [B, S], attention_mask [B, S], labels [B], position_ids [B, 2, S] (default 0..S-1, zeros)."""
        B, S = input_ids.shape
        if position_ids is None:
            position_ids = torch.zeros(B, 2, S, dtype=torch.long, device=input_ids.device)
            position_ids[:, 0] = torch.arange(S, device=input_ids.device)
        mask = expand_attention_mask(attention_mask, B, S, S, input_ids.device)
        hidden = self.glm(input_ids, position_ids, mask)
        logits = self.classifier(self.dropout(hidden[:, 0]))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained(cls, name_or_path: str, num_labels: Optional[int] = None, vocab_size: Optional[int] = None,
                        **kwargs):
        """A GLM body (glm-tiny's: the LM's of the same seed) under a new `num_labels` head, or a saved classifier.
        Raises ValueError for a missing `num_labels`, UsageError for a wrong one or keys that do not match."""
        config = None if name_or_path == TINY_MODEL_NAME else read_config(name_or_path)
        if config is not None and cls.__name__ in (config.architectures or []):
            if num_labels not in (None, config.num_labels):
                raise UsageError(f"{name_or_path} holds a {config.num_labels}-class head, not {num_labels}")
            return cls._load_glm(name_or_path, config, **kwargs)
        if num_labels is None:
            raise ValueError("num_labels is needed to put a new classification head on a GLM checkpoint")
        if config is None:
            lm = GLMForConditionalGeneration.from_pretrained(name_or_path, vocab_size=vocab_size)
            lm.config.num_labels = num_labels
            model = cls(lm.config)
            model.glm.load_state_dict(lm.glm.state_dict())
            return model
        config.num_labels = num_labels
        return cls._load_glm(name_or_path, config, new_keys=("classifier.weight", "classifier.bias"), **kwargs)


class PrefixEncoder(nn.Module):
    """P-tuning v2's deep prompt (Liu et al., ACL 2022): `pre_seq_len` learned (key, value) pairs in every layer,
    a table [pre_seq_len, num_layers * 2 * hidden] (with `prefix_projection`: [pre_seq_len, hidden] through
    Linear, tanh, Linear) whose rows hold layer after layer [key | value] in heads (the P-tuning v2 code's
    layout). forward(B): num_layers pairs [B, heads, pre_seq_len, head_dim]. ValueError when pre_seq_len < 1."""

    def __init__(self, config: GLMConfig, pre_seq_len: int, prefix_projection: bool = False,
                 prefix_hidden_size: int = 512):
        super().__init__()
        if pre_seq_len < 1:
            raise ValueError(f"pre_seq_len must be at least 1, got {pre_seq_len}")
        self.num_layers, self.num_heads = config.num_layers, config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        width = config.num_layers * 2 * config.hidden_size
        self.embedding = nn.Embedding(pre_seq_len, config.hidden_size if prefix_projection else width)
        self.trans = (nn.Sequential(nn.Linear(config.hidden_size, prefix_hidden_size), nn.Tanh(),
                                    nn.Linear(prefix_hidden_size, width)) if prefix_projection else None)

    def forward(self, batch_size: int):
        prefix = self.embedding.weight if self.trans is None else self.trans(self.embedding.weight)
        P = prefix.shape[0]
        kv = prefix.view(P, 2 * self.num_layers, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        kv = kv[:, None].expand(-1, batch_size, -1, -1, -1)  # [2L, B, heads, P, head_dim]
        return tuple((kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers))


