"""The baselines of run_baseline.py: RoBERTa, T5, BART and GLM-with-a-linear-head models and tokenizers (tiny
random ones offline), the inputs and collators of each --method (linear_head, mlm_prompt, seq2seq), and
their scoring. The scoring rules and their sources are in run_baseline.py's docstring.
"""

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from accelerate.logging import get_logger
from accelerate.utils import extract_model_from_parallel

from glm_peft import LORA_TARGET_MODULES as GLM_LORA_TARGET_MODULES
from glm_peft import apply_peft, count_parameters
from glm_utils import encode_choice, truncate_around
from modeling_glm import HUB_MODEL_ID, GLMForSequenceClassification, UsageError, max_positions
from modeling_glm import TINY_MODEL_NAME as GLM_TINY
from templates import HIDDEN_LABEL, make_mlm_context, template_fields
from tokenization_glm import load_or_train_tokenizer, train_tokenizer

logger = get_logger(__name__)

TINY_MODELS = {"roberta-tiny": "roberta", "t5-tiny": "t5", "bart-tiny": "bart", GLM_TINY: "glm"}
TINY_SIZE = {"layers": 2, "hidden": 256, "heads": 4, "ffn": 1024}  # the size of glm-tiny
# Full fine-tuning learning rates usual for each architecture (large models); tiny random models
# learn nothing at those and get TINY_LEARNING_RATE; LoRA gets PEFT_DEFAULT_LEARNING_RATES["lora"].
FULL_LEARNING_RATES = {"roberta": 1e-5, "glm": 1e-5, "bart": 3e-5, "t5": 1e-4}
TINY_LEARNING_RATE = 3e-4
# The attention and MLP projections, as GLM's LORA_TARGET_MODULES (peft matches name endings); heads stay out.
LORA_TARGET_MODULES = {
    "roberta": ["query", "key", "value", "output.dense", "intermediate.dense"],
    "bart": ["q_proj", "k_proj", "v_proj", "self_attn.out_proj", "encoder_attn.out_proj", "fc1", "fc2"],
    "t5": ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"],
}
HEAD_MODULES = ("classifier", "classification_head", "score")  # new heads: trained in full with LoRA
OFFLINE_HINT = ("Offline, use a tiny random model: --model_name_or_path roberta-tiny|t5-tiny|bart-tiny|glm-tiny "
                "with --tokenizer_name train (a BPE trained on the training texts) or --tokenizer_name DIR "
                "(vocab.json + merges.txt, as glm-roberta-large's files), or a local folder holding a saved "
                "model; and data that needs no network: your --train_file, or --dataset_name fine_foods "
                "(classification) / wildlife_strikes (generation).")


def _hub_error(what, name, error):
    return UsageError(f"Could not load the {what} '{name}': it is not a local folder and the Hugging Face hub did not "
                   f"serve it ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                   + OFFLINE_HINT)


def model_family(name_or_path):
    """"glm" (glm-tiny, BAAI/glm-roberta-large, a folder with GLMConfig fields) or the config's model_type.
    Raises UsageError (with the offline alternatives) when a hub config cannot be fetched."""
    if name_or_path in TINY_MODELS:
        return TINY_MODELS[name_or_path]
    if name_or_path == HUB_MODEL_ID:
        return "glm"
    config_file = Path(name_or_path) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("model_type") == "glm" and "num_layers" in config and "max_sequence_length" in config:
            return "glm"
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise _hub_error("model", name_or_path, error) from None
    return config.model_type


def max_model_positions(name_or_path, family):
    """The longest input the position table takes, or None (tiny models are built to fit; T5 is relative):
    GLM's max_sequence_length, else max_position_embeddings less RoBERTa's offset (pad_token_id + 1)."""
    if family == "glm":
        return max_positions(name_or_path)
    if name_or_path in TINY_MODELS:
        return None
    config = transformers.AutoConfig.from_pretrained(name_or_path)  # fetched by model_family already
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and family == "roberta":
        positions -= config.pad_token_id + 1
    return positions


def check_method_and_model(method, family, name):
    """Refuses a model that cannot run a method, saying which script or model fits."""
    if method == "mlm_prompt" and (family in ("glm", "t5", "bart") or family.endswith("t5")):
        other = "run_cls.py (GLM cloze)" if family == "glm" else "--method seq2seq"
        raise UsageError(f"--method mlm_prompt needs a masked LM (RoBERTa: roberta-large, roberta-tiny); "
                         f"{name} is {family}: use {other}.")
    if method == "seq2seq" and family in ("glm", "roberta", "bert"):
        other = "run_gen.py / run_cls.py" if family == "glm" else "--method linear_head or mlm_prompt"
        raise UsageError(f"--method seq2seq needs an encoder-decoder (t5-large, facebook/bart-large, t5-tiny, "
                         f"bart-tiny); {name} is {family}: use {other}.")


def roberta_bpe_tokenizer(directory):
    """RoBERTa's byte-level BPE from `vocab.json` + `merges.txt` alone (GLM's other files ignored), with a
    `<mask>` that absorbs the space before it, as RoBERTa's."""
    from transformers import AddedToken, RobertaTokenizer

    directory = Path(directory)
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    return RobertaTokenizer(vocab=vocab, merges=merges, mask_token=mask)


def load_baseline_tokenizer(args, family, train_texts, output_dir):
    """GLM's own tokenizer for GLM; `train`: a BPE of the training texts (saved to output_dir/tokenizer); a
    folder with vocab.json + merges.txt: RoBERTa's BPE; otherwise AutoTokenizer. Raises UsageError."""
    name = args.tokenizer_name
    if family == "glm":
        return load_or_train_tokenizer(name, args.model_name_or_path, train_texts, output_dir,
                                       mask_token_id=args.mask_token_id)
    if args.mask_token_id is not None:
        raise UsageError("--mask_token_id chooses GLM's [MASK] id; other models use their tokenizer's own mask token")
    if name == "train":
        tokenizer = train_tokenizer(train_texts)
        tokenizer.pad_token = "<pad>"  # not </s>: RoBERTa's positions and T5's decoder start read the pad id
        tokenizer.save_pretrained(Path(output_dir) / "tokenizer")
        return tokenizer
    name = name or args.model_name_or_path  # not a tiny model: parse_args asks them for a tokenizer
    if (Path(name) / "vocab.json").is_file() and (Path(name) / "merges.txt").is_file():
        return roberta_bpe_tokenizer(name)
    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _hub_error("tokenizer", name, error) from None


def tiny_config(family, tokenizer, num_labels=None, max_positions=1024):
    """A random 2-layer configuration of an architecture, sized like glm-tiny, with the tokenizer's ids."""
    from transformers import BartConfig, RobertaConfig, T5Config

    s, vocab = TINY_SIZE, len(tokenizer)
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    extra = {} if num_labels is None else {"num_labels": num_labels}
    if family == "roberta":
        return RobertaConfig(vocab_size=vocab, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                             num_attention_heads=s["heads"], intermediate_size=s["ffn"], type_vocab_size=1,
                             max_position_embeddings=max_positions + 2, pad_token_id=pad, bos_token_id=bos,
                             eos_token_id=eos, **extra)
    if family == "t5":
        return T5Config(vocab_size=vocab, d_model=s["hidden"], d_kv=s["hidden"] // s["heads"], d_ff=s["ffn"],
                        num_layers=s["layers"], num_decoder_layers=s["layers"], num_heads=s["heads"],
                        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, **extra)
    return BartConfig(vocab_size=vocab, d_model=s["hidden"], encoder_layers=s["layers"],
                      decoder_layers=s["layers"], encoder_attention_heads=s["heads"],
                      decoder_attention_heads=s["heads"], encoder_ffn_dim=s["ffn"], decoder_ffn_dim=s["ffn"],
                      max_position_embeddings=max_positions, pad_token_id=pad, bos_token_id=bos,
                      eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=eos, **extra)


def load_baseline_model(args, family, tokenizer, num_labels=None):
    """The model a method trains: a sequence classifier (linear_head), a masked LM (mlm_prompt) or
    an encoder-decoder LM (seq2seq); tiny names are built from their configuration."""
    auto = {"linear_head": transformers.AutoModelForSequenceClassification,
            "mlm_prompt": transformers.AutoModelForMaskedLM,
            "seq2seq": transformers.AutoModelForSeq2SeqLM}[args.method]
    name = args.model_name_or_path
    if family == "glm":
        return GLMForSequenceClassification.from_pretrained(name, num_labels, vocab_size=len(tokenizer))
    if name in TINY_MODELS:
        longest = max(args.max_seq_length, args.max_source_length, args.max_target_length + 2)
        return auto.from_config(tiny_config(family, tokenizer, num_labels, max_positions=longest))
    extra = {} if num_labels is None else {"num_labels": num_labels}
    try:
        model = auto.from_pretrained(name, **extra)
    except OSError as error:
        raise _hub_error("model", name, error) from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def apply_baseline_peft(model, args, family):
    """--peft lora: GLM through glm_peft.apply_peft (its new head trained), others through peft's
    get_peft_model with LORA_TARGET_MODULES[family] unless --lora_target_modules is given."""
    if args.peft is None:
        return model
    if family == "glm":
        model = apply_peft(model, args)
        model.classifier.requires_grad_(True)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    targets = args.lora_target_modules
    if list(targets) == list(GLM_LORA_TARGET_MODULES):  # the flag's default is GLM's module names
        if family not in LORA_TARGET_MODULES:
            raise UsageError(f"No default LoRA targets for {family}: pass --lora_target_modules")
        targets = LORA_TARGET_MODULES[family]
    task_type = {"linear_head": TaskType.SEQ_CLS, "seq2seq": TaskType.SEQ_2_SEQ_LM}.get(args.method)
    heads = [h for h in HEAD_MODULES if hasattr(model, h)] if args.method == "linear_head" else None
    config = LoraConfig(task_type=task_type, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=list(targets), modules_to_save=heads, bias="none")
    try:
        model = get_peft_model(model, config)
    except ValueError as error:  # peft's NoMatchingPeftModuleError: a name in --lora_target_modules matches nothing
        raise UsageError(f"--lora_target_modules: {error}") from None
    trainable, total = count_parameters(model)
    logger.info("peft=lora on %s: %s trainable of %s parameters (%.4f%%)", targets, f"{trainable:,}", f"{total:,}",
                100 * trainable / max(total, 1))
    return model


class MaskedLMScorer(torch.nn.Module):
    """A *ForMaskedLM (or its peft model) whose LM head (`lm_head` or `cls`) runs only at the K scored
    positions: logits [K, V], not [R, S, V] (a 50k vocabulary). Other heads fall back to full logits."""

    def __init__(self, mlm):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids, attention_mask, score_row, score_pos):
        base = self.mlm.get_base_model() if hasattr(self.mlm, "get_base_model") else self.mlm
        head = base.lm_head if hasattr(base, "lm_head") else getattr(base, "cls", None)
        encoder = getattr(base, base.base_model_prefix, None)
        if head is None or encoder is None:
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits[score_row, score_pos]
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head(hidden[score_row, score_pos])

    def save_pretrained(self, directory):
        self.mlm.save_pretrained(directory)


def default_text_columns(template, dataset):
    """linear_head's text columns: the template's string fields of its input part, not its target part, in
    order. Raises UsageError unless one or two are found."""
    source_part, _, target_part = template.jinja.partition("|||")
    found = []
    for field in template_fields(template):
        where = re.search(rf"\b{re.escape(field)}\b", source_part)
        if where and not re.search(rf"\b{re.escape(field)}\b", target_part) and len(dataset) \
                and isinstance(dataset[0][field], str):
            found.append((where.start(), field))
    columns = [field for _, field in sorted(found)]
    if not columns or len(columns) > 2:
        raise UsageError(f"Could not tell the raw text column(s) of template {template.name!r} (found {columns}); "
                         f"pass --text_column with one or two of {list(dataset.column_names)}.")
    return columns


def encode_linear_head(tokenizer, examples, dataset, text_columns, max_length):
    """Raw text of each example's row (one column, or two as a pair) -> input ids, with the label."""
    rows = dataset.select([e["row"] for e in examples])
    ids = tokenizer(*[list(map(str, rows[column])) for column in text_columns], truncation=True,
                    max_length=max_length)["input_ids"]
    return [{"index": index, "input_ids": row_ids, "label": e["label"]}
            for index, (e, row_ids) in enumerate(zip(examples, ids))]


def encode_mlm(tokenizer, examples, max_length, prefix_space=True):
    """PET-style inputs: per example a prompt for each verbalizer token length n, with n masks; each choice
    points at its prompt and first mask. Returns {"index", "rows", "choices": [(row, first mask, ids)],
    "label"} per example. Raises UsageError when a prompt holds a mask token of its own."""
    mask = tokenizer.mask_token
    features = []
    for index, example in enumerate(examples):
        choice_ids = [encode_choice(tokenizer, choice, prefix_space) for choice in example["choices"]]
        lengths = sorted({len(ids) for ids in choice_ids})
        rows, starts = [], {}
        for n in lengths:
            ids = tokenizer(make_mlm_context(example["input"], mask, n))["input_ids"]
            positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
            if len(positions) != n or positions[-1] - positions[0] != n - 1:
                raise UsageError(f"The prompt of example {index} holds {len(positions)} mask tokens where {n} "
                                 f"consecutive ones were placed; it contains a mask token of its own?")
            ids, start = truncate_around(ids, positions[0], positions[-1] + 1, max_length)
            starts[n] = (len(rows), start)
            rows.append(ids)
        choices = [(*starts[len(ids)], ids) for ids in choice_ids]
        features.append({"index": index, "rows": rows, "choices": choices, "label": example["label"]})
    return features


def encode_seq2seq(tokenizer, examples, max_source_length, max_target_length):
    """(prompt, target) -> encoder ids and target ids (the tokenizer's specials included, cut to
    max_target_length); for cls also the target ids of every answer choice (rank classification)."""
    sources = tokenizer([e["input"] for e in examples], truncation=True, max_length=max_source_length)["input_ids"]
    targets = tokenizer([e["target"] for e in examples], truncation=True, max_length=max_target_length)["input_ids"]
    features = []
    for index, (example, source, target) in enumerate(zip(examples, sources, targets)):
        feature = {"index": index, "input_ids": source, "labels": target, "label": example["label"]}
        if example["choices"] is not None:
            feature["choice_labels"] = tokenizer(example["choices"], truncation=True,
                                                 max_length=max_target_length)["input_ids"]
        features.append(feature)
    return features


def _pad(rows, value):
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _inputs(rows, pad_token_id):
    return {"input_ids": _pad(rows, pad_token_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0)}


def _class_labels(features):
    """[B] label ids; HIDDEN_LABEL where the label is hidden (predictions only, never a loss or a metric)."""
    return torch.tensor([HIDDEN_LABEL if f["label"] is None else f["label"] for f in features])


def collate_linear_head(features, pad_token_id):
    return {**collate_sources(features, pad_token_id), "class_labels": _class_labels(features)}


def collate_mlm(features, pad_token_id, num_choices):
    """Flattens every prompt of the batch into rows [R, S] and lists, for each scored token, its row,
    position, token id and flat choice index (b * num_choices + c)."""
    rows, score_row, score_pos, score_token, score_choice = [], [], [], [], []
    lengths = torch.zeros(len(features), num_choices)
    choice_mask = torch.zeros(len(features), num_choices, dtype=torch.bool)
    for b, feature in enumerate(features):
        offset = len(rows)
        rows.extend(feature["rows"])
        for c, (row, start, ids) in enumerate(feature["choices"]):
            for t, token in enumerate(ids):
                score_row.append(offset + row), score_pos.append(start + t)
                score_token.append(token), score_choice.append(b * num_choices + c)
            lengths[b, c], choice_mask[b, c] = len(ids), True
    return {**_inputs(rows, pad_token_id), "score_row": torch.tensor(score_row),
            "score_pos": torch.tensor(score_pos), "score_token": torch.tensor(score_token),
            "score_choice": torch.tensor(score_choice), "choice_lengths": lengths, "choice_mask": choice_mask,
            "class_labels": _class_labels(features),
            "index": torch.tensor([f["index"] for f in features])}


def collate_seq2seq(features, pad_token_id):
    return {**collate_sources(features, pad_token_id), "labels": _pad([f["labels"] for f in features], -100)}


def collate_sources(features, pad_token_id):
    return {**_inputs([f["input_ids"] for f in features], pad_token_id),
            "index": torch.tensor([f["index"] for f in features])}


def collate_rank(features, pad_token_id, num_choices):
    """Rank classification: one row per (example, choice): the example's encoder input, the choice's
    target ids as labels, and its flat choice index (b * num_choices + c)."""
    sources, targets, choice_index = [], [], []
    choice_mask = torch.zeros(len(features), num_choices, dtype=torch.bool)
    for b, feature in enumerate(features):
        for c, target in enumerate(feature["choice_labels"]):
            sources.append(feature["input_ids"]), targets.append(target), choice_index.append(b * num_choices + c)
            choice_mask[b, c] = True
    return {**_inputs(sources, pad_token_id), "labels": _pad(targets, -100),
            "choice_index": torch.tensor(choice_index), "choice_mask": choice_mask,
            "class_labels": _class_labels(features),
            "index": torch.tensor([f["index"] for f in features])}


def score_mlm_choices(model, batch, choice_score="mean"):
    """PET scores [B, C] (Schick & Schuetze, NAACL 2021): each verbalizer token's log-probability at its mask,
    summed per choice ("mean": over its tokens); padding choices -inf. `model`: a MaskedLMScorer."""
    logits = model(batch["input_ids"], batch["attention_mask"], batch["score_row"], batch["score_pos"])
    token_logp = logits.float().log_softmax(-1).gather(-1, batch["score_token"][:, None])[:, 0]
    B, C = batch["choice_mask"].shape
    scores = token_logp.new_zeros(B * C).index_add(0, batch["score_choice"], token_logp).view(B, C)
    if choice_score == "mean":
        scores = scores / batch["choice_lengths"].to(scores).clamp(min=1)
    return scores.masked_fill(~batch["choice_mask"], float("-inf"))


def seq2seq_logits(model, batch):
    """T5 / BART logits [B, T, V] of `batch["labels"]` [B, T] under teacher forcing. The decoder inputs are built
    from the labels as the model would (shifted right), without the loss it computes when given `labels`."""
    decoder_input_ids = extract_model_from_parallel(model).prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 decoder_input_ids=decoder_input_ids).logits


def rank_choices(model, batch, choice_score="sum"):
    """Rank classification scores [B, C]: log p(choice target | encoder input) = the sum of its target
    tokens' log-probabilities (teacher forcing), divided by their count for "mean". Padding -inf."""
    labels = batch["labels"]
    logits = seq2seq_logits(model, batch)
    valid = labels != -100
    token_logp = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * valid
    row_scores = token_logp.sum(-1)
    if choice_score == "mean":
        row_scores = row_scores / valid.sum(-1).clamp(min=1)
    B, C = batch["choice_mask"].shape
    scores = row_scores.new_full((B * C,), float("-inf")).index_copy(0, batch["choice_index"], row_scores)
    return scores.view(B, C)


def training_loss(args, model, batch):
    """The method's loss; seq2seq: the target's token cross-entropy (teacher forcing), --label_smoothing."""
    if args.method == "linear_head":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["class_labels"]).loss
    if args.method == "mlm_prompt":
        return F.cross_entropy(score_mlm_choices(model, batch, args.choice_score), batch["class_labels"])
    logits = seq2seq_logits(model, batch)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                           ignore_index=-100, label_smoothing=args.label_smoothing)


def class_scores(args, model, batch):
    """[B, C] scores of the answer choices (the prediction is the argmax)."""
    if args.method == "linear_head":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    if args.method == "mlm_prompt":
        return score_mlm_choices(model, batch, args.choice_score)
    return rank_choices(model, batch, args.choice_score)
