#!/usr/bin/env python
"""One minute on real weights: does the checkpoint know the [MASK] row this toolkit feeds it?

glm-roberta-large was pretrained with [MASK] = id 50264 (RoBERTa's `<mask>` row), while the hub's
added_tokens.json says 50267, a row no pretraining text ever reached (GLM_NOTES.md "Tokenizer";
THUDM/GLM `data_utils/tokenization.py`). The toolkit uses 50264; this check lets you confirm it on
your checkpoint. It prints (1) the embedding's special-token rows (L2 norms of [MASK] = 50264 and 50267,
sop, eop) against the vocabulary and padding rows; (2) the top-5 single-token fills of [MASK] (read after
sop, as GLM writes a blank) in five cloze sentences, both ids side by side; (3) the zero-shot scores of
two-choice sentiment examples, both ways; (4) a one-line verdict.

    python check_glm.py --model_name_or_path DIR --tokenizer_name DIR     # local files, offline
    python check_glm.py                                                   # BAAI/glm-roberta-large
    python check_glm.py --model_name_or_path glm-tiny --tokenizer_name ../shared/tokenizers/glm-roberta-large

Runs on a GPU when there is one, else on the CPU. With glm-tiny (random weights) its figures mean nothing.
"""

import argparse

import torch

from cli import run_script
from glm_utils import generation_inputs_from_text, multiple_choice_inputs_from_text, score_choices
from modeling_glm import EOP_TOKEN, HUB_MODEL_ID, SOP_TOKEN, TINY_MODEL_NAME, GLMForConditionalGeneration
from tokenization_glm import load_tokenizer, special_rows_report

PRETRAINED_MASK_ID, HUB_MASK_ID = 50264, 50267
TOP_K = 5

# (cloze sentence, answers counted as right among the top fills)
CLOZE_SENTENCES = [
    ("The capital of France is [MASK].", {"Paris"}),
    ("On a clear day the colour of the sky is [MASK].", {"blue"}),
    ("I loved every minute of this film. It was [MASK]!",
     {"great", "amazing", "wonderful", "fantastic", "excellent", "brilliant", "awesome", "perfect", "beautiful"}),
    ("Two plus two equals [MASK].", {"four", "4"}),
    ("Ice is cold and fire is [MASK].", {"hot", "warm"}),
]
# (context, choices, index of the right one)
SENTIMENT_EXAMPLES = [
    ("The food was cold and the waiter was rude. All in all, it was [MASK].", ["great", "terrible"], 1),
    ("A moving story with wonderful actors. All in all, it was [MASK].", ["great", "terrible"], 0),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Check on real GLM weights which [MASK] id the checkpoint knows.")
    parser.add_argument("--model_name_or_path", default=HUB_MODEL_ID,
                        help=f"A directory (config.json + weights), a hub id, or {TINY_MODEL_NAME} (random: runs, "
                             "means nothing).")
    parser.add_argument("--tokenizer_name", default=None,
                        help="A directory with the released tokenizer files (vocab.json, merges.txt, "
                             "added_tokens.json), or a hub id; default: --model_name_or_path.")
    return parser.parse_args(argv)


def top_fills(model, tokenizer, sentence, device):
    """The TOP_K most likely first tokens of the span of the sentence's [MASK], decoded."""
    batch = {k: v.to(device) for k, v in generation_inputs_from_text(tokenizer, [sentence]).items()}
    last = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    last[:, -1] = True  # sop: it predicts the span's first token
    logits = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], logits_positions=last).logits
    return [tokenizer.decode([i]).strip() for i in logits[0].topk(TOP_K).indices.tolist()]


def main(argv=None):
    args = parse_args(argv)
    tokenizer_name = args.tokenizer_name or args.model_name_or_path
    tokenizers = {mask_id: load_tokenizer(tokenizer_name, mask_token_id=mask_id)
                  for mask_id in (PRETRAINED_MASK_ID, HUB_MASK_ID)}
    hub_tokenizer = tokenizers[HUB_MASK_ID]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = GLMForConditionalGeneration.from_pretrained(args.model_name_or_path, vocab_size=len(hub_tokenizer))
    model.to(device).eval()
    names = {mask_id: f"[MASK]={mask_id}" for mask_id in tokenizers}

    print(f"== 1. Special-token rows of {args.model_name_or_path}'s embedding (tokenizer {tokenizer_name}) ==")
    table, untrained = special_rows_report(
        model.glm.word_embeddings.weight,
        {**{names[i]: i for i in tokenizers}, SOP_TOKEN: hub_tokenizer.sop_token_id,
         EOP_TOKEN: hub_tokenizer.eop_token_id},
        len(hub_tokenizer),
    )
    print(table)

    hits = dict.fromkeys(tokenizers, 0)
    with torch.inference_mode():
        print(f"\n== 2. Top-{TOP_K} fills of [MASK] (the span's first token, read after sop) ==")
        for sentence, answers in CLOZE_SENTENCES:
            print(f"{sentence}   (expected: {' / '.join(sorted(answers))})")
            for mask_id, tokenizer in tokenizers.items():
                fills = top_fills(model, tokenizer, sentence, device)
                hit = any(fill in answers for fill in fills)
                hits[mask_id] += hit
                print(f"    {names[mask_id]}: {' | '.join(fills):<60} {'right' if hit else '-'}")
        print("\n== 3. Zero-shot choice scores (sum of the choice's token log-probs) ==")
        right = dict.fromkeys(tokenizers, 0)
        for context, choices, gold in SENTIMENT_EXAMPLES:
            print(f"{context}   (right: {choices[gold]})")
            for mask_id, tokenizer in tokenizers.items():
                batch = multiple_choice_inputs_from_text(tokenizer, [context], [choices])
                scores = score_choices(model, {k: v.to(device) for k, v in batch.items()})[0].tolist()
                right[mask_id] += max(range(len(choices)), key=scores.__getitem__) == gold
                shown = "   ".join(f"{c} {s:8.3f}" for c, s in zip(choices, scores))
                print(f"    {names[mask_id]}: {shown}")

    verdict = make_verdict(args.model_name_or_path, untrained, names, hits, right)
    print(f"\n{verdict}")
    return verdict


def make_verdict(model_name, untrained, names, hits, right):
    """One line from the row check and the two ids' results."""
    figures = "; ".join(f"{names[i]}: {hits[i]}/{len(CLOZE_SENTENCES)} sentences with a right fill in the top "
                        f"{TOP_K}, {right[i]}/{len(SENTIMENT_EXAMPLES)} sentiments right" for i in names)
    if model_name == TINY_MODEL_NAME:
        return f"Verdict: {TINY_MODEL_NAME} is random, so these figures mean nothing ({figures})."
    pretrained, hub = names[PRETRAINED_MASK_ID], names[HUB_MASK_ID]
    total = {i: hits[i] + right[i] for i in names}
    if pretrained not in untrained and total[PRETRAINED_MASK_ID] >= total[HUB_MASK_ID]:
        rows = f"row {HUB_MASK_ID} looks untrained" if hub in untrained else "the row norms do not single out a row"
        return (f"Verdict: OK, {pretrained} (the toolkit's default) is the blank this checkpoint knows: {rows}; "
                f"{figures}.")
    return (f"Verdict: CHECK, {pretrained} does not do better than {hub} here"
            f"{' and its row looks untrained' if pretrained in untrained else ''}: {figures}. "
            "Is this glm-roberta-large with its released tokenizer files?")


if __name__ == "__main__":
    run_script(main)
