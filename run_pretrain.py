#!/usr/bin/env python
"""Continue GLM's pretraining by autoregressive blank infilling (paper, section 2.1, Figure 1).

Spans (lengths ~ Poisson(--poisson_lambda), about --mask_ratio of the tokens) become [MASK] in Part A and
are written back in Part B; the loss is on Part B. Masks are redrawn each epoch from (--seed, epoch,
example), so a resumed run sees the blanks of an uninterrupted one. Use: task-adaptive pretraining
(Gururangan et al., ACL 2020) and a pretrained `glm-tiny` for CPU demonstrations.

    accelerate launch run_pretrain.py --dataset_name trec --text_column text --output_dir runs/glm_trec_tapt
    python run_pretrain.py --model_name_or_path glm-tiny --tokenizer_name train --dataset_name trec \\
        --train_file ../shared/data/trec/train.csv --text_column text --output_dir runs/glm_tiny_trec

Writes to --output_dir: the model and tokenizer in the released layout (for --model_name_or_path DIR),
results.json (infilling loss, perplexity, token accuracy), step_N / epoch_N checkpoints.
"""

import math
import time
from pathlib import Path

import numpy
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cli import (
    ArgumentParser,
    UsageError,
    add_data_and_prompt_args,
    add_training_args,
    data_args_problems,
    derived_defaults,
    offline_unless_hub_answers,
    position_problem,
    run_script,
    training_args_problems,
    will_train,
)
from glm_peft import count_parameters
from glm_utils import build_blank_infilling_inputs, max_infilling_text_length, sample_spans
from metrics import PRETRAIN_METRICS
from modeling_glm import HUB_MODEL_ID, GLMForConditionalGeneration, max_positions
from templates import load_texts
from tokenization_glm import load_or_train_tokenizer
from training import (
    EpochSampler,
    TrainingPlan,
    TrainingTracker,
    clear_previous_run,
    create_lr_scheduler,
    create_optimizer,
    end_tracking,
    load_checkpoint,
    results_record,
    resume_settings,
    save_checkpoint,
    setup_accelerator,
    start_tracking,
    stop_interrupted,
    log_values,
    write_json_atomic,
)

logger = get_logger(__name__)

EXAMPLES = """examples:
  python run_pretrain.py --model_name_or_path glm-tiny --tokenizer_name train --dataset_name fine_foods \\
      --text_column review --learning_rate 1e-3 --output_dir runs/glm_tiny_foods    # offline, CPU
  accelerate launch run_pretrain.py --dataset_name trec --text_column text --output_dir runs/glm_trec_tapt
"""


def parse_args(argv=None):
    parser = ArgumentParser(description="Continue GLM's pretraining by autoregressive blank infilling.",
                            epilog=EXAMPLES)
    add_data_and_prompt_args(parser, "cls", pretraining=True)
    add_training_args(parser, PRETRAIN_METRICS, zero_shot=False)
    # Pretraining learns from scratch or adapts on unlabeled text: larger steps than fine-tuning.
    parser.set_defaults(model_name_or_path=HUB_MODEL_ID, learning_rate=1e-4, weight_decay=0.01, num_train_epochs=3)
    group = parser.add_argument_group("blank infilling")
    group.add_argument("--text_column", default=None,
                       help="Column holding the texts; default: the text prompt --prompt_id renders.")
    group.add_argument("--mask_ratio", type=float, default=0.15, help="Share of each text's tokens blanked.")
    group.add_argument("--poisson_lambda", type=float, default=3.0, help="Mean span length (Poisson).")
    group.add_argument("--max_seq_length", type=int, default=512,
                       help="Tokens per example, Part A and Part B together; longer texts are cut at the end.")
    group.add_argument("--tokenizer_vocab_size", type=int, default=8000,
                       help="Vocabulary of the BPE trained by --tokenizer_name train.")
    args = parser.parse_args(argv)
    problems = data_args_problems(args, "cls") + training_args_problems(args)
    if not will_train(args):
        problems.append("run_pretrain.py trains: --num_train_epochs and --max_train_steps must be >= 1")
    if not 0 < args.mask_ratio < 1:
        problems.append("--mask_ratio must lie in (0, 1)")
    if args.poisson_lambda <= 0:
        problems.append("--poisson_lambda must be > 0")
    if args.max_seq_length < 8:
        problems.append("--max_seq_length must be >= 8")
    if problems:
        parser.error("; ".join(problems))
    vars(args).update(derived_defaults(args, "cls"))
    return args


def evaluate(accelerator, model, dataloader):
    """Blank-infilling loss (mean over Part B tokens), its perplexity and the share of Part B tokens
    predicted right (greedy); per-text sums are gathered, so that gather_for_metrics drops the padding copies."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # summed loss, right tokens, tokens
    with torch.inference_mode():
        for batch in dataloader:
            scored = batch["labels"] != -100
            logits = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"],
                           logits_positions=scored).logits.float()
            targets, text = batch["labels"][scored], scored.nonzero()[:, 0]
            per_text = torch.zeros(len(scored), 3, device=logits.device)
            per_text[:, 0].index_add_(0, text, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
            per_text[:, 1].index_add_(0, text, (logits.argmax(-1) == targets).float())
            per_text[:, 2] = scored.sum(-1)
            totals += accelerator.gather_for_metrics(per_text).sum(0).double().cpu()
    model.train(was_training)
    loss, correct, count = totals.tolist()
    return {"loss": loss / count, "perplexity": math.exp(min(loss / count, 50.0)), "token_accuracy": correct / count}


def main(argv=None):
    args = parse_args(argv)
    accelerator = setup_accelerator(args)
    output_dir = Path(args.output_dir)
    offline_unless_hub_answers(args)
    problem = position_problem("max_seq_length", args.max_seq_length, max_positions(args.model_name_or_path),
                               args.model_name_or_path, cut="texts are cut at their end")
    if problem:
        raise UsageError(problem)

    texts, carved = load_texts(args)  # train and validation (carved from train when not given)
    with accelerator.main_process_first():
        tokenizer = load_or_train_tokenizer(args.tokenizer_name, args.model_name_or_path, texts["train"], output_dir,
                                            vocab_size=args.tokenizer_vocab_size)
    max_text = max_infilling_text_length(args.max_seq_length, args.mask_ratio)
    token_ids = {split: [ids[:max_text] for ids in tokenizer(split_texts, add_special_tokens=False)["input_ids"]]
                 for split, split_texts in texts.items()}
    token_ids = {split: [ids for ids in split_ids if len(ids) >= 2] for split, split_ids in token_ids.items()}
    data_counts = {split: {"texts": len(split_ids), "tokens": sum(map(len, split_ids))}
                   for split, split_ids in token_ids.items()}
    logger.info("Texts and tokens per split: %s", data_counts)

    model = GLMForConditionalGeneration.from_pretrained(args.model_name_or_path, vocab_size=len(tokenizer))
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    trainable_params, total_params = count_parameters(model)

    def collate(features, epoch=None):
        """(index, token ids) -> Figure 1 inputs; spans drawn from (seed, epoch, index), or for validation from
        (data_seed, index): the same blanks at every evaluation and for every --seed."""
        keys = [[args.data_seed, index] if epoch is None else [args.seed, epoch, index] for index, _ in features]
        spans = [sample_spans(len(ids), args.mask_ratio, args.poisson_lambda, numpy.random.default_rng(key))
                 for key, (_, ids) in zip(keys, features)]
        return build_blank_infilling_inputs(tokenizer, [ids for _, ids in features], spans)

    train_features = list(enumerate(token_ids["train"]))
    sampler = EpochSampler(len(train_features), args.seed,
                           [len(ids) for _, ids in train_features] if args.group_by_length else None,
                           args.per_device_train_batch_size)
    # The sampler knows the epoch (the loop sets it); collate reads it there when it draws the blanks.
    train_dataloader = DataLoader(train_features, sampler=sampler, batch_size=args.per_device_train_batch_size,
                                  collate_fn=lambda features: collate(features, sampler.epoch),
                                  generator=torch.Generator())
    eval_dataloader = DataLoader(list(enumerate(token_ids["validation"])), batch_size=args.per_device_eval_batch_size,
                                 collate_fn=collate)

    output_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(args, output_dir)
    start_tracking(accelerator, args, "run_pretrain")
    optimizer = create_optimizer(model, args.learning_rate, args.weight_decay)
    plan = TrainingPlan.from_args(args, len(train_dataloader), accelerator.num_processes)
    lr_scheduler = create_lr_scheduler(args, optimizer, plan.max_train_steps, accelerator.num_processes)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler)

    tracker = TrainingTracker(args.metric_for_best_model, resume_settings(args, accelerator.num_processes),
                              lr_scheduler)
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    initial = evaluate(accelerator, model, eval_dataloader)  # the model as loaded, also when resuming
    logger.info("Before training: validation %s", {name: round(value, 4) for name, value in initial.items()})
    if args.resume_from_checkpoint:
        load_checkpoint(accelerator, tracker, args.resume_from_checkpoint, output_dir, plan.max_train_steps)
    logger.info("***** Running pretraining *****\n  Texts = %d, epochs = %d, total batch size = %d, "
                "optimization steps = %d, lr = %g", len(train_features), plan.num_train_epochs, total_batch_size,
                plan.max_train_steps, args.learning_rate)
    progress_bar = tqdm(range(plan.max_train_steps), initial=tracker.completed_steps,
                        disable=not accelerator.is_local_main_process)
    first_epoch, skip_batches = plan.resume_position(tracker.completed_steps)
    model.train()
    try:
        for epoch in range(first_epoch, plan.num_train_epochs):
            train_dataloader.set_epoch(epoch)
            batches = train_dataloader
            if epoch == first_epoch and skip_batches:
                batches = accelerator.skip_first_batches(train_dataloader, skip_batches)
            start = time.perf_counter()
            for batch in batches:
                with accelerator.accumulate(model):
                    scored = batch["labels"] != -100
                    loss = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"],
                                 labels=batch["labels"], logits_positions=scored).loss
                    tracker.add_batch(loss, len(batch["input_ids"]) * accelerator.num_processes)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                step, checkpoint = tracker.end_step(accelerator, plan, progress_bar, start)
                if plan.evaluates_at(step):
                    metrics = evaluate(accelerator, model, eval_dataloader)
                    tracker.record_evaluation(epoch, metrics, accelerator.unwrap_model(model))
                    accelerator.log(log_values("validation", metrics), step=step)
                if checkpoint:  # "step_N" / "epoch_N"
                    save_checkpoint(accelerator, tracker, output_dir / checkpoint, args.save_total_limit)
                if step == plan.max_train_steps:
                    break
                start = time.perf_counter()
    except KeyboardInterrupt:  # Ctrl-C: where the run stopped and how to resume it, exit 130
        progress_bar.close()
        stop_interrupted(tracker, plan, output_dir)
    progress_bar.close()
    validation_metrics = tracker.restore_best(accelerator.unwrap_model(model))

    record = None
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(output_dir)  # the released layout: --model_name_or_path DIR
        tokenizer.save_pretrained(output_dir)
        record = results_record(
            args, "pretrain", "blank_infilling", script="run_pretrain.py", accelerator=accelerator,
            prompt_id=None, prompt_name=None,
            total_train_batch_size=total_batch_size, tracker=tracker, plan=plan, validation=validation_metrics,
            test=None, baselines={"before_training": initial}, trainable_params=trainable_params,
            total_params=total_params, carved_validation=carved,
        )
        record["data"] = data_counts
        write_json_atomic(output_dir / "results.json", record)
    accelerator.wait_for_everyone()
    end_tracking(accelerator, args, tracker.completed_steps, None)  # no test split
    accelerator.print(f"validation blank-infilling loss {validation_metrics['loss']:.4f} (perplexity "
                      f"{validation_metrics['perplexity']:.1f}, token accuracy "
                      f"{validation_metrics['token_accuracy']:.4f}) vs {initial['loss']:.4f} before training; "
                      f"model in {output_dir}")
    return record


if __name__ == "__main__":
    run_script(main)
