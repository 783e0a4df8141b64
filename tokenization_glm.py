"""GLM's tokenizer (RoBERTa's byte-level BPE plus sop 50265 and eop 50266), the check of its special rows in a
checkpoint, and `train_tokenizer`, an offline stand-in (`--tokenizer_name train`). [MASK] is vocab.json's
`<mask>` (50264), the row glm-roberta-large was pretrained with, not the hub's 50267 (GLM_NOTES.md "Tokenizer").
"""

import json
import logging
import math
from pathlib import Path
from typing import Optional

import torch

from modeling_glm import EOP_TOKEN, MASK_TOKEN, SOP_TOKEN, TINY_MODEL_NAME, UsageError, _resolve_pretrained_dir

logger = logging.getLogger(__name__)


BASE_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..3 and 50264 in RoBERTa
PRETRAINING_MASK = "<mask>"  # the vocab.json entry whose row GLM was pretrained with as [MASK]


def load_tokenizer(name_or_path: str, mask_token_id: Optional[int] = None):
    """A `PreTrainedTokenizerFast` with `sop_token_id`, `eop_token_id` from released files (vocab.json, merges.txt,
    added_tokens.json; no remote code), a saved tokenizer.json, or a hub id: `<s> ... </s>`, "[MASK]" one token
    absorbing a space before it, on `<mask>`'s row (THUDM/GLM `data_utils/tokenization.py`) unless `mask_token_id`
    picks the id after eop (the hub's). Raises UsageError when added_tokens.json disagrees on sop/eop, for another
    `mask_token_id` (or one a tokenizer.json does not have), or when the hub cannot be reached."""
    from tokenizers import Tokenizer, models

    directory = _resolve_pretrained_dir(name_or_path,
                                        ["vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"])
    if (directory / "tokenizer.json").exists() and not (directory / "vocab.json").exists():
        tokenizer = _wrap_tokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")))
        if mask_token_id not in (None, tokenizer.mask_token_id):
            raise UsageError(f"{directory} holds a saved tokenizer whose [MASK] is id {tokenizer.mask_token_id}: "
                             f"--mask_token_id {mask_token_id} applies to released vocab.json + merges.txt files only")
        return tokenizer
    vocab, merges = models.BPE.read_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    added_file = directory / "added_tokens.json"
    added = json.loads(added_file.read_text()) if added_file.exists() else {}
    pretrained_id, appended_id = vocab[PRETRAINING_MASK], len(vocab) + 2  # a new token comes after sop and eop
    if mask_token_id not in (None, pretrained_id, appended_id):
        raise UsageError(f"--mask_token_id {mask_token_id}: [MASK] can be {pretrained_id} (the {PRETRAINING_MASK} row "
                         f"GLM was pretrained with) or {appended_id} (a new token, as the hub's added_tokens.json)")
    if mask_token_id in (None, pretrained_id):
        vocab[MASK_TOKEN] = vocab.pop(PRETRAINING_MASK)  # the text "[MASK]" now encodes to this row
    tokenizer = _wrap_tokenizer(Tokenizer(models.BPE(vocab, merges)))
    for token, token_id in added.items():
        if token != MASK_TOKEN and tokenizer.convert_tokens_to_ids(token) != token_id:
            raise UsageError(f"{added_file}: {token} should have id {token_id} but gets "
                             f"{tokenizer.convert_tokens_to_ids(token)}")
    hub_id = added.get(MASK_TOKEN)
    if mask_token_id is None:
        logger.info("[MASK] is id %d (%s in vocab.json), the blank this checkpoint was pretrained with (THUDM/GLM "
                    "data_utils/tokenization.py)%s.", pretrained_id, PRETRAINING_MASK,
                    "" if hub_id in (None, pretrained_id) else
                    f"; added_tokens.json's {hub_id} is a row no pretraining example used (pass --mask_token_id "
                    f"{hub_id} to use it, as the hub's tokenizer does)")
    else:
        logger.info("[MASK] is id %d, as --mask_token_id says (the row GLM was pretrained with is %d).",
                    mask_token_id, pretrained_id)
    return tokenizer


def train_tokenizer(texts, vocab_size: int = 8000):
    """A byte-level BPE trained on `texts`: ids 0..4 `<s> <pad> </s> <unk> <mask>`, sop, eop and [MASK] last."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BASE_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap_tokenizer(tokenizer)


def load_or_train_tokenizer(tokenizer_name, model_name_or_path, train_texts, output_dir, vocab_size=8000,
                            mask_token_id=None):
    """The run's tokenizer: "train" trains one on `train_texts` and saves it to `output_dir/tokenizer`; else
    `load_tokenizer(tokenizer_name or model_name_or_path, mask_token_id)`. Raises UsageError for glm-tiny
    (no files) or a `mask_token_id` with a trained tokenizer."""
    if tokenizer_name == "train":
        if mask_token_id is not None:
            raise UsageError("--mask_token_id chooses the [MASK] id of released tokenizer files; a tokenizer trained "
                             "by --tokenizer_name train has its own: drop --mask_token_id or pass --tokenizer_name DIR")
        tokenizer = train_tokenizer(train_texts, vocab_size=vocab_size)
        tokenizer.save_pretrained(Path(output_dir) / "tokenizer")
        return tokenizer
    name = tokenizer_name or model_name_or_path
    if name == TINY_MODEL_NAME:
        raise UsageError("glm-tiny has no tokenizer files: pass --tokenizer_name train (a BPE trained on the "
                         "training texts) or --tokenizer_name DIR (e.g. the released glm-roberta-large files)")
    return load_tokenizer(name, mask_token_id)


def _wrap_tokenizer(tokenizer):
    """Adds GLM's pipeline and special tokens to a byte-level BPE `tokenizers.Tokenizer`."""
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")),
                                                            add_prefix_space=False)
    # `<mask>` is missing where load_tokenizer gave its row to [MASK].
    tokenizer.add_special_tokens([t for t in BASE_SPECIAL_TOKENS if tokenizer.token_to_id(t) is not None])
    tokenizer.add_special_tokens([AddedToken(SOP_TOKEN, special=True), AddedToken(EOP_TOKEN, special=True),
                                  AddedToken(MASK_TOKEN, lstrip=True, special=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", cls_token="<s>", eos_token="</s>",
                                   sep_token="</s>", pad_token="</s>", unk_token="<unk>", mask_token=MASK_TOKEN,
                                   additional_special_tokens=[SOP_TOKEN, EOP_TOKEN])
    fast.sop_token_id = fast.convert_tokens_to_ids(SOP_TOKEN)
    fast.eop_token_id = fast.convert_tokens_to_ids(EOP_TOKEN)
    return fast


def special_token_ids(tokenizer) -> dict:
    """{token: id} of [MASK], sop and eop, the rows `check_special_rows` checks."""
    return {MASK_TOKEN: tokenizer.mask_token_id, SOP_TOKEN: tokenizer.sop_token_id, EOP_TOKEN: tokenizer.eop_token_id}


def special_rows_report(weight, token_ids, tokenizer_length):
    """Whether the embedding rows of `token_ids` ({name: id}) in `weight` [V, H] were trained: rows
    `tokenizer_length`..V-1 were never an input. When their L2 norms stand apart from the other rows' (whose
    median lies outside their range), a checked row looks untrained when its norm is nearer (in ratio) their
    median than the vocabulary's; else none is judged. Returns (table: str, warnings: {name: message})."""
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


def check_special_rows(model, tokenizer, model_name_or_path):
    """Logs `special_rows_report` (the table at INFO, warnings as WARNING); not for glm-tiny (all rows random)."""
    if model_name_or_path == TINY_MODEL_NAME:
        return
    table, warnings = special_rows_report(model.glm.word_embeddings.weight, special_token_ids(tokenizer),
                                          len(tokenizer))
    logger.info("Embedding rows of the special tokens this run uses:\n%s", table)
    for warning in warnings.values():
        logger.warning(warning)
