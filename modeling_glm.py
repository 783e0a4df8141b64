"""GLM in plain PyTorch, as nanoGPT would write it: config, layers, the two heads, loading.

GLM (Du et al., ACL 2022, "GLM: General Language Model Pretraining with Autoregressive Blank
Infilling") reads a corrupted text (Part A, bidirectional) in which each blank is one `[MASK]`,
then writes the missing spans (Part B, left to right). Every token carries two positions,
`position_ids[:, 0]` (its place in Part A; a span token carries its [MASK]'s index) and
`position_ids[:, 1]` (the block position: 0 in Part A, 1, 2, ... inside a span); the embedding
adds both tables to the word embedding. This file holds the model only: `GLMConfig`, the pre-LN
blocks, `GLMForConditionalGeneration` (tied LM output), `GLMForSequenceClassification` (the linear-
head baseline), the P-tuning v2 `PrefixEncoder` (its keys and values live in the attention cache),
and loading of the released `BAAI/glm-roberta-large` layout, with a check that the embedding rows a run
uses for [MASK], sop and eop were trained (`special_rows_report`). No remote code is run. The facts it
matches are in GLM_NOTES.md of the team's shared folder.

The models are transformers `PreTrainedModel`s (save_pretrained / from_pretrained with dtype, device_map,
safetensors; gradient_checkpointing_enable), and `GLMForConditionalGeneration` is a `GenerationMixin`:
`model.generate` extends the two position rows and the Figure 2(b) attention layout step by step
(`prepare_inputs_for_generation`) over a transformers `Cache` of keys and values.

Trap: transformers 5 ships its own `model_type: "glm"` (GLM-4, another architecture), and the hub
config of glm-roberta-large says "glm" too, so `AutoModel.from_pretrained("BAAI/glm-roberta-large")`
builds GLM-4's classes. Our config has its own type, `GLMConfig.model_type` ("glm_blank_infilling"),
never registered under "glm": load through these classes, not the Auto classes.
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
    """A mistake of the user's (a flag, a file, the data, a prompt) found by one of our checks: its
    message says what is wrong and how to fix it. `cli.run_script` prints it as one line and exits
    with 2; every other exception is a bug and keeps its traceback. Defined here, in the module every
    other one imports, so that each can raise it (cli re-exports it for the scripts)."""



def readable_like_results(*paths):
    """Gives files the mode `open` gives a new file (0666 less the umask: 0644 usually), as results.json
    has: safetensors writes its files 0600 (a private temporary file, renamed), so that a teammate on a
    shared server could not read the weights."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)


def save_weights(state, path, metadata):
    """safetensors' save_file of `state` ({name: tensor}) to `path` with `metadata` ({str: str}),
    readable like the results files (`readable_like_results`)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    readable_like_results(path)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


class GLMConfig(PreTrainedConfig):
    """Hyper-parameters of GLM, with the field names of the released `config.json`.

    The defaults are those of `BAAI/glm-roberta-large` (24 layers, hidden 1024, 16 heads,
    ~355M parameters). `attention_scale` only changes the order of operations in the released
    code (it rescales scores for numerical range), not the result, so it is kept for the round
    trip and otherwise unused. The layer-norm epsilon is fixed at 1e-5 in the released code.
    `model_type` is our own, not "glm" (GLM-4 in transformers 5; see the module docstring).
    Raises ValueError for `block_position_encoding=False` (checkpoints without block positions).
    """

    model_type = "glm_blank_infilling"
    max_sequence_length = 512  # class-level too: the input builders' default limit (glm-roberta-large's)
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

    @classmethod
    def tiny(cls, vocab_size: int) -> "GLMConfig":
        """The `glm-tiny` preset: 2 layers, hidden 256, 4 heads; random init, for tests and CPU runs."""
        return cls(num_layers=2, hidden_size=256, num_attention_heads=4, vocab_size=vocab_size)

    @classmethod
    def from_released(cls, config: dict) -> "GLMConfig":
        """Reads a released or saved config.json: our fields are kept, the rest (auto_map, the hub's
        model_type "glm", transformers' bookkeeping) dropped; a classifier's labels are kept
        (`id2label` as transformers saves them, or `num_labels` as our earlier versions did)."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        kept = {k: v for k, v in config.items() if k in known | {"id2label", "num_labels"}}
        return cls(**kept)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


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
        # The fused projection's output is [q | k | v], each then split into heads.
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
    """Pre-LN transformer block: h + attn(LN(h)), then h + mlp(LN(h)).

    Tensors that need gradients (h, a P-tuning v2 prefix) are positional, so that gradient
    checkpointing (which recomputes this forward in the backward pass) passes their gradients on."""

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMSelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, h, mask, prefix_key=None, prefix_value=None, cache=None):
        h = h + self.attention(self.input_layernorm(h), mask, prefix_key, prefix_value, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class GLMStack(nn.Module):
    """Position tables, the layers and the final layer norm (the released `transformer.*`)."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
        self.block_position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList(GLMLayer(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class GLMModel(nn.Module):
    """The GLM body: embeddings and transformer; returns final hidden states [B, S, H]."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMStack(config)

    def forward(self, input_ids, position_ids, mask, prefix=None, cache=None):
        """prefix: None or per layer a P-tuning v2 (key, value) pair put before this input's keys;
        cache: None or a transformers `Cache` that each layer's keys/values join (and come from)."""
        t = self.transformer
        h = (self.word_embeddings(input_ids) + t.position_embeddings(position_ids[:, 0])
             + t.block_position_embeddings(position_ids[:, 1]))
        h = t.embedding_dropout(h)
        for i, layer in enumerate(t.layers):
            prefix_key, prefix_value = (None, None) if prefix is None else prefix[i]
            h = layer(h, mask, prefix_key, prefix_value, cache=cache)
        return t.final_layernorm(h)


def expand_attention_mask(attention_mask, batch_size, query_length, key_length, device):
    """Turns any attention-mask form GLM accepts into a boolean [B, 1, Q, K] (True = may attend).

    Forms (the released code's): None (all visible); `[B]` integer separator `sep` (key j is
    visible from query i when j < sep or j <= i: Part A bidirectional, then causal); `[B, K']`
    0/1 key-padding mask; `[B, 1, Q, K']` 0/1 full mask. The mask describes the last K' keys;
    keys before them (a P-tuning v2 prefix, or a cache) are visible to every query.
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


def span_attention_mask(key_padding_mask, block_position_ids):
    """The attention layout of GLM's blank infilling (paper, Figure 2b) over a whole sequence.

    key_padding_mask: [B, S] (1/True = a real token anyone may see); block_position_ids: [B, S]
    (0 in Part A, 1, 2, ... in the span). Part A tokens see the real Part A tokens; a span token
    sees those and the span up to itself. Returns bool [B, 1, S, S] (True = may attend).
    """
    S = block_position_ids.shape[1]
    in_span = block_position_ids > 0
    i = torch.arange(S, device=block_position_ids.device)
    causal = i[None, :] <= i[:, None]                                               # [S(q), S(k)]
    visible = ~in_span[:, None, :] | (in_span[:, :, None] & causal[None])          # [B, Q, K]
    return (visible & key_padding_mask.bool()[:, None, :])[:, None]


class GLMPreTrainedModel(PreTrainedModel):
    """What GLM's models share: the config class, the initialisation (normal with std
    `initializer_range` for Linear and Embedding weights, zero biases; transformers' default),
    the released `glm.` key prefix, gradient checkpointing over the `GLMLayer`s."""

    config_class = GLMConfig
    base_model_prefix = "glm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMLayer"]
    _supports_sdpa = True

    @classmethod
    def _load_glm(cls, name_or_path, config, new_keys=(), **kwargs):
        """transformers' `from_pretrained` of a local directory or hub repository with our `config`
        (the released config.json says model_type "glm", GLM-4's type, so it is read by us, not by
        transformers). `new_keys` may be missing (a new head, initialised at random). Raises
        UsageError naming other missing and unexpected keys (transformers only logs them), or when the
        hub cannot serve the files."""
        directory = _resolve_pretrained_dir(name_or_path, ["config.json", "*.safetensors", "pytorch_model.bin"])
        model, info = super().from_pretrained(str(directory), config=config, output_loading_info=True, **kwargs)
        missing, unexpected = sorted(set(info["missing_keys"]) - set(new_keys)), sorted(info["unexpected_keys"])
        if missing or unexpected:
            raise UsageError(f"The checkpoint does not match GLMConfig: missing keys {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                             f"{' ...' if len(unexpected) > 10 else ''}")
        return model

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' `save_pretrained`, then the weights files made readable like the results files
        (safetensors writes them 0600)."""
        super().save_pretrained(save_directory, **kwargs)
        readable_like_results(*Path(save_directory).glob("*.safetensors"))


class GLMForConditionalGeneration(GLMPreTrainedModel, GenerationMixin):
    """GLM with its tied language-model output (logits = hidden @ word_embeddings^T).

    `prefix_encoder` is None, or a `PrefixEncoder` set by `glm_peft.add_prefix_encoder` (P-tuning
    v2): its keys/values then sit before every input, and begin the cache of `model.generate`.
    """

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.prefix_encoder = None
        self.post_init()

    def get_input_embeddings(self):
        return self.glm.word_embeddings

    def forward(self, input_ids, position_ids=None, attention_mask=None, labels=None, cache=None, use_cache=None,
                logits_positions=None, logits_to_keep=0, label_smoothing=0.0, **kwargs):
        """Runs GLM on `input_ids` [B, S] with `position_ids` [B, 2, S].

        attention_mask:   any form `expand_attention_mask` accepts.
        labels:           [B, S] token ids to predict AT each position (GLM's targets are already
                          aligned, no shift), -100 where nothing is predicted.
        cache:            a transformers `Cache` of earlier keys/values (per layer [B, heads, T,
                          head_dim]); new tokens attend to them and join them. With `use_cache` and
                          no cache a `DynamicCache` is started (and returned). A P-tuning v2 prefix
                          (`prefix_encoder`) goes before the input when the cache is absent or empty,
                          so a cache begins with it and cached decoding needs nothing more.
        logits_positions: optional bool [B, S]; vocabulary logits are then computed only there and
                          returned as [N, V] in row-major order (a large saving with a 50k vocab).
        logits_to_keep:   n > 0: logits of the last n positions only, [B, n, V] (`generate` asks for 1,
                          so that the prefill computes no vocabulary logits it will not read); 0: all.
        label_smoothing:  as in `torch.nn.functional.cross_entropy`.
        kwargs:           what `generate` passes besides (return_dict, ...); unused.

        Returns a `CausalLMOutputWithPast`: `loss` the mean cross-entropy over labelled positions (or
        None), `logits`, `cache` (with use_cache). Raises ValueError without position_ids.
        """
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
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=-100, label_smoothing=label_smoothing)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      position_ids=None, block_position_ids=None, use_cache=None, **kwargs):
        """What `generate` feeds each step (Figure 2b): the whole sequence while the cache is empty
        (or without a cache), with the span layout `span_attention_mask` rebuilt from the key
        padding mask and the block positions; afterwards the last `next_sequence_length` tokens,
        which see every real key (a span token sees the context and the span so far).

        Inputs (`glm_utils.generation_kwargs` makes them from a `build_generation_inputs` batch):
        input_ids [B, S] ending with sop; the two position rows apart, position_ids [B, S] and
        block_position_ids [B, S] (`generate` would take a 3D position tensor for a multimodal one,
        with the batch second); attention_mask [B, S] the key padding mask (`generate` takes 2D masks
        only, and drops one without padding: None = every key is real). Pass the mask: GLM's pad id
        is also `</s>`, so one guessed from the ids would hide `</s>`. Raises ValueError without
        position_ids or block_position_ids.
        """
        if position_ids is None or block_position_ids is None:
            raise ValueError("GLM's generate needs position_ids and block_position_ids: pass "
                             "glm_utils.generation_kwargs(batch) of a build_generation_inputs batch")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        position_ids = torch.stack([position_ids, block_position_ids], dim=1)
        if cache is None or cache.get_seq_length() == 0:  # the whole sequence: no keys are cached yet
            mask = span_attention_mask(attention_mask, block_position_ids)
        else:
            input_ids, position_ids, mask = (input_ids[:, -next_sequence_length:],
                                             position_ids[..., -next_sequence_length:], attention_mask)
        return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "cache": cache,
                "use_cache": use_cache}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        """After a step: the cache, the key padding mask grown by the new (real) tokens, and their
        positions: the span's mask index again, block positions counting on (Figure 2b)."""
        position_ids, block = model_kwargs.pop("position_ids"), model_kwargs.pop("block_position_ids")
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens)
        step = torch.arange(1, num_new_tokens + 1, device=block.device)
        model_kwargs["position_ids"] = torch.cat([position_ids, position_ids[:, -1:].expand(-1, num_new_tokens)], -1)
        model_kwargs["block_position_ids"] = torch.cat([block, block[:, -1:] + step], dim=-1)
        return model_kwargs

    @classmethod
    def from_pretrained(cls, name_or_path: str, vocab_size: Optional[int] = None,
                        special_token_ids: Optional[dict] = None, **kwargs):
        """Loads GLM from a local directory or a hub id (default `BAAI/glm-roberta-large`) through
        transformers' `from_pretrained` (kwargs such as dtype=torch.bfloat16, device_map="auto").

        The directory holds `config.json` and `model.safetensors` or `pytorch_model.bin` (read
        with `weights_only=True`: a pickle that would run code is refused). State-dict keys may
        carry the released `glm.` prefix or not. `glm-tiny` builds a random small model instead
        (`GLMConfig.tiny`), which needs `vocab_size` (the tokenizer's length).

        With `special_token_ids` ({token: id} of the rows a run uses, e.g. [MASK], sop, eop) and
        `vocab_size`, loaded weights get `check_special_rows` (not glm-tiny: all its rows are random).

        Raises UsageError when keys are missing or unexpected (both listed), or when the hub
        cannot be reached (with the flags that point at local files instead).
        """
        if name_or_path == TINY_MODEL_NAME:
            if vocab_size is None:
                raise ValueError("glm-tiny needs vocab_size (the tokenizer's length)")
            return cls(GLMConfig.tiny(vocab_size=_round_up(vocab_size, 64)))
        model = cls._load_glm(name_or_path, read_config(name_or_path), **kwargs)
        if vocab_size is not None and vocab_size > model.config.vocab_size:
            raise UsageError(f"The tokenizer has {vocab_size} tokens but the model only {model.config.vocab_size} "
                             "embedding rows: use the tokenizer that came with the checkpoint.")
        if special_token_ids is not None:
            check_special_rows(model.glm.word_embeddings.weight, special_token_ids, vocab_size)
        return model


def read_config(name_or_path: str) -> GLMConfig:
    """The `GLMConfig` of a local directory or hub repository (only config.json is downloaded).
    Raises UsageError when it cannot be had (with the local alternatives) or holds no config.json."""
    config = _resolve_pretrained_dir(name_or_path, ["config.json"]) / "config.json"
    if not config.is_file():
        raise UsageError(f"{name_or_path} holds no config.json: --model_name_or_path must be a GLM checkpoint folder "
                      f"(config.json + weights), a hub id, or {TINY_MODEL_NAME}.")
    return GLMConfig.from_released(json.loads(config.read_text()))


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
        raise UsageError(
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

    Raises UsageError when the config cannot be had (as `from_pretrained`, with the local alternatives).
    """
    if name_or_path == TINY_MODEL_NAME:
        return GLMConfig.max_sequence_length
    return read_config(name_or_path).max_sequence_length


class GLMForSequenceClassification(GLMPreTrainedModel):
    """GLM with a linear head on the first token: the conventional fine-tuning baseline that the
    cloze formulation (`score_choices`, no new parameters) is compared with on GLM itself.

    The input is plain text `<s> x1 .. xn </s>` (no `[MASK]`), read bidirectionally: positions
    0..S-1, block positions 0. logits = Linear(dropout(h[:, 0])), h the final hidden states (after
    the final layer norm) and position 0 the `<s>` token; dropout = `output_dropout_prob`. The
    number of classes is `config.num_labels`.
    """

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.glm = GLMModel(config)
        self.dropout = nn.Dropout(config.output_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.glm.word_embeddings

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None, **kwargs):
        """input_ids [B, S]; attention_mask [B, S] 0/1 (1 = real token) or None (all real);
        labels [B] class ids (optional); position_ids [B, 2, S] (default: 0..S-1 and zeros).
        Returns a `SequenceClassifierOutput` (loss = mean cross-entropy when labels are given)."""
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
        """The body of a GLM checkpoint (local directory, hub id or `glm-tiny`, whose body is that of
        `GLMForConditionalGeneration.from_pretrained("glm-tiny")` with the same seed) under a new
        random head of `num_labels` classes; or, from a directory written by this class's
        `save_pretrained`, the whole classifier (the head included; `num_labels` may then be omitted,
        and must match when given). kwargs go to transformers' `from_pretrained` (dtype, ...).
        Raises ValueError for a wrong or missing `num_labels`, or keys that do not match."""
        if name_or_path == TINY_MODEL_NAME:
            if num_labels is None:
                raise ValueError("num_labels is needed to put a new classification head on a GLM checkpoint")
            lm = GLMForConditionalGeneration.from_pretrained(name_or_path, vocab_size=vocab_size)
            lm.config.num_labels = num_labels
            model = cls(lm.config)
            model.glm.load_state_dict(lm.glm.state_dict())
            return model
        config = read_config(name_or_path)
        saved = Path(name_or_path) / "config.json"
        if os.path.isdir(name_or_path) and cls.__name__ in json.loads(saved.read_text()).get("architectures", []):
            if num_labels is not None and num_labels != config.num_labels:
                raise UsageError(f"{name_or_path} holds a {config.num_labels}-class head, not {num_labels}")
            return cls._load_glm(name_or_path, config, **kwargs)
        if num_labels is None:
            raise ValueError("num_labels is needed to put a new classification head on a GLM checkpoint")
        config.num_labels = num_labels
        return cls._load_glm(name_or_path, config, new_keys=("classifier.weight", "classifier.bias"), **kwargs)


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
    [batch_size, heads, pre_seq_len, head_dim] (expanded, not copied), which
    `GLMForConditionalGeneration.forward` puts before the input's keys and values (and at the start of
    a cache). Raises ValueError when pre_seq_len < 1.
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


