#!/usr/bin/env python
"""Fine-tune GLM to generate text as blank infilling (paper, Figure 2b), with Accelerate.

The prompt ends with `[MASK]`; the model learns to write its span and decodes it with a K/V cache.
Each distinct source is decoded once and scored against all its references (BLEU, ROUGE).
Default: E2E NLG with the paper's seq2seq settings.

    accelerate launch run_gen.py --output_dir runs/e2e                       # glm-roberta-large
    python run_gen.py --model_name_or_path glm-tiny --tokenizer_name train \\
        --dataset_name wildlife_strikes --learning_rate 1e-3 --output_dir runs/strikes  # offline
    python run_gen.py --list_prompts                                         # the prompt ids

Writes to --output_dir: results.json (with the baselines and output statistics),
generations_test.jsonl, step_N / epoch_N checkpoints with best_weights.safetensors, best_model/.
"""

import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import GenerationConfig

from cli import (
    ArgumentParser,
    UsageError,
    add_data_and_prompt_args,
    add_generation_args,
    add_model_args,
    add_training_args,
    data_args_problems,
    default_learning_rate,
    derived_defaults,
    generation_args_problems,
    offline_unless_hub_answers,
    parse_or_list_prompts,
    position_problem,
    run_script,
    tokenizer_problems,
    training_args_problems,
    will_train,
)
from glm_peft import apply_peft, count_parameters, save_model_and_tokenizer
from glm_utils import build_generation_inputs, encode_context, encode_target, generate_spans
from metrics import (
    GEN_METRICS,
    evaluate_generation,
    generation_metrics,
    most_frequent_target,
    nearest_training_targets,
    output_statistics,
)
from modeling_glm import HUB_MODEL_ID, GLMForConditionalGeneration, max_positions
from templates import group_references, list_prompts, load_prompted_splits
from tokenization_glm import check_special_rows, load_or_train_tokenizer
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
    write_jsonl_atomic,
)

logger = get_logger(__name__)

EXAMPLES = """examples:
  python run_gen.py --dataset_name hhs_breaches --model_name_or_path glm-tiny --tokenizer_name train \\
      --learning_rate 1e-3 --num_train_epochs 15 --output_dir runs/hhs_breaches  # offline, CPU: a random tiny GLM
  accelerate launch run_gen.py --prompt_id 0 --output_dir runs/e2e  # E2E NLG, BAAI/glm-roberta-large
"""


def parse_args(argv=None):
    parser = ArgumentParser(description="Fine-tune GLM for generation (blank infilling).", epilog=EXAMPLES)
    add_data_and_prompt_args(parser, "gen")
    add_training_args(parser, GEN_METRICS)
    add_model_args(parser)
    add_generation_args(parser)
    parser.set_defaults(model_name_or_path=HUB_MODEL_ID, learning_rate=None, warmup_ratio=0.06)
    args = parse_or_list_prompts(parser, argv, "gen")
    if args.list_prompts:
        return args
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate(args.peft, 2e-5)  # full fine-tuning: the paper's 1e-5..3e-5
    problems = (data_args_problems(args, "gen") + training_args_problems(args) + tokenizer_problems(args)
                + generation_args_problems(args, 3))  # 3: <s> [MASK] </s>
    if problems:
        parser.error("; ".join(problems))
    vars(args).update(derived_defaults(args, "gen"))
    return args


def tokenize_prompts(tokenizer, examples, split):
    """Gives each example its prompt's `context_ids` (`encode_context`, whole), each distinct prompt tokenized
    once. Raises UsageError naming the split, example and data row of a prompt without exactly one [MASK]."""
    ids_of = {}
    for index, example in enumerate(examples):
        if example["context"] not in ids_of:
            try:
                ids_of[example["context"]] = encode_context(tokenizer, example["context"])
            except ValueError as err:
                raise UsageError(f"{split} example {index} (data row {example['row']}): {err}") from err
        example["context_ids"] = ids_of[example["context"]]


def evaluate(args, accelerator, model, tokenizer, dataloader, references, description):
    """metrics.evaluate_generation with GLM's span decoding (`generate_spans`, eop ends a span); spans are
    padded with `</s>`, which decoding skips. --no_repeat_ngram_size is applied over the span only, not by
    transformers (which would ban copying the context); sampling draws from the whole nucleus (top_k off)."""
    sampling = dict(do_sample=True, top_p=args.top_p, temperature=args.temperature, top_k=0) if args.do_sample else {}
    generation_config = GenerationConfig(max_new_tokens=args.max_target_length, min_new_tokens=args.min_target_length,
                                         num_beams=args.num_beams, length_penalty=args.length_penalty,
                                         eos_token_id=tokenizer.eop_token_id, pad_token_id=tokenizer.pad_token_id,
                                         **sampling)
    unwrapped = accelerator.unwrap_model(model)

    def generate(batch):
        inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask")}
        spans = generate_spans(unwrapped, inputs, generation_config, args.no_repeat_ngram_size)
        return pad_sequence([torch.tensor(ids, dtype=torch.long) for ids in spans], batch_first=True,
                            padding_value=tokenizer.pad_token_id).to(accelerator.device)

    return evaluate_generation(accelerator, model, dataloader, generate, tokenizer, references, description)


SYSTEM_NAMES = {"model": "this model", "nearest_training_target": "nearest training input's target",
                "most_frequent_reference": "most frequent training target", "references": "first reference"}


def format_summary(split, sources, references_list, predictions, metrics, statistics):
    """The end of a run, as printed: BLEU, ROUGE-L, distinct outputs and values copied of each system
    (`metrics`, `statistics`: {system: dict}; the references have statistics only), then three sources
    spread over the split with the model's output and the first reference."""
    def percent(value):
        return "n/a" if value is None else f"{value:.1f}%"

    lines = [f"{split}: {len(sources)} sources, {sum(map(len, references_list))} references",
             f"  {'':34} {'BLEU':>6} {'ROUGE-L':>8} {'distinct outputs':>17} {'input values copied':>20}"]
    for system, name in SYSTEM_NAMES.items():
        scores = metrics.get(system)
        bleu, rouge = (f"{scores['bleu']:.2f}", f"{scores['rougeL']:.2f}") if scores else ("-", "-")
        lines.append(f"  {name:34} {bleu:>6} {rouge:>8} {percent(statistics[system]['distinct_outputs']):>17} "
                     f"{percent(statistics[system]['values_copied']):>20}")
    shown = sorted({len(sources) * k // 3 for k in range(3)})
    lines.append(f"{len(shown)} {split} sources, this model's output and the first reference:")
    for i in shown:
        lines += [f"  source:    {sources[i]}", f"  output:    {predictions[i]}",
                  f"  reference: {references_list[i][0]}"]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.list_prompts:
        offline_unless_hub_answers(args)  # a hub dataset offline: its message at once
        return list_prompts(args, "gen")

    accelerator = setup_accelerator(args)
    output_dir = Path(args.output_dir)  # created once every check has passed

    # The model's position tables bound the length flags: checked before any data is read (config only).
    offline_unless_hub_answers(args)
    positions = max_positions(args.model_name_or_path)
    problems = [position_problem("max_source_length", args.max_source_length, positions, args.model_name_or_path,
                                 cut="prompts are cut around their [MASK]"),
                position_problem("max_target_length", args.max_target_length, positions, args.model_name_or_path,
                                 extra=1, cut="a span's block positions run from its sop to its eop")]
    if any(problems):
        raise UsageError("; ".join(problem for problem in problems if problem))

    # Data and prompt: every split rendered and checked here, before the first step.
    do_train = will_train(args)
    prompted = load_prompted_splits(args, "gen", do_train)
    template, examples, data_counts, hidden = prompted.template, prompted.examples, prompted.counts, prompted.hidden
    first = examples["train"][0]
    logger.info("Prompt %d: %s [%s]. GLM input of the first example (the target fills [MASK]):\n%s\ntarget: %r",
                prompted.prompt_id, template.name, template.source, first["context"], first["target"])
    # Decoding and scoring work per distinct source, against all its references.
    eval_splits = {split: group_references(examples[split]) for split in ("validation", "test") if split in examples}
    for split, (sources, _) in eval_splits.items():
        logger.info("%s: %d rows -> %d distinct sources", split, len(examples[split]), len(sources))

    # Every prompt and training target tokenized once, here, so the length checks cover all before step 1.
    with accelerator.main_process_first():
        tokenizer = load_or_train_tokenizer(args.tokenizer_name, args.model_name_or_path,
                                            [t for e in examples["train"] for t in (e["input"], e["target"])],
                                            output_dir, mask_token_id=args.mask_token_id)
    for split in examples:
        tokenize_prompts(tokenizer, examples[split], split)
    for example in examples["train"]:
        example["target_ids"] = encode_target(tokenizer, example["target"])
    long_sources = sum(len(e["context_ids"]) > args.max_source_length for e in examples["train"])
    long_targets = sum(len(e["target_ids"]) > args.max_target_length for e in examples["train"])
    train_lengths = [min(len(e["context_ids"]), args.max_source_length)  # as trained: prompt + target + eop
                     + min(len(e["target_ids"]), args.max_target_length) + 1 for e in examples["train"]]
    data_counts["train"].update(long_sources=long_sources, long_targets=long_targets)
    if long_targets:
        logger.warning("%d of %d training targets are longer than --max_target_length %d tokens: they are cut there "
                       "(raise --max_target_length to keep them whole).", long_targets, len(train_lengths),
                       args.max_target_length)
    if long_sources:
        logger.warning("%d of %d training prompts are longer than --max_source_length %d tokens: they are cut around "
                       "the [MASK].", long_sources, len(train_lengths), args.max_source_length)

    model = GLMForConditionalGeneration.from_pretrained(args.model_name_or_path, vocab_size=len(tokenizer))
    check_special_rows(model, tokenizer, args.model_name_or_path)  # [MASK], sop, eop: trained rows?
    model = apply_peft(model, args)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    trainable_params, total_params = count_parameters(model)

    def collate_train(batch):
        return build_generation_inputs(tokenizer, [e["context_ids"] for e in batch], [e["target_ids"] for e in batch],
                                       args.max_source_length, args.max_target_length)

    def collate_sources(batch):
        inputs = build_generation_inputs(tokenizer, [e["context_ids"] for e in batch], None, args.max_source_length)
        return {**inputs, "index": torch.tensor([e["index"] for e in batch])}

    # The order depends on (seed, epoch) only and each loader seeds from a private generator, not dropout's:
    # a resumed run sees the batches and dropout masks of an uninterrupted one.
    sampler = EpochSampler(len(examples["train"]), args.seed, train_lengths if args.group_by_length else None,
                           args.per_device_train_batch_size)
    train_dataloader = DataLoader(examples["train"], sampler=sampler, batch_size=args.per_device_train_batch_size,
                                  collate_fn=collate_train, generator=torch.Generator())
    contexts = {split: {e["source_key"]: e["context_ids"] for e in examples[split]} for split in eval_splits}
    eval_dataloaders = {  # each distinct source once: index i = source i
        split: DataLoader([{"index": i, "context_ids": contexts[split][s]} for i, s in enumerate(sources)],
                          collate_fn=collate_sources,
                          batch_size=args.per_device_eval_batch_size, generator=torch.Generator())
        for split, (sources, _) in eval_splits.items()
    }

    # Every check has passed: only now are --overwrite_output_dir's old outputs cleared.
    output_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(args, output_dir)
    start_tracking(accelerator, args, "run_gen")

    optimizer = lr_scheduler = plan = None
    if do_train:
        optimizer = create_optimizer(model, args.learning_rate, args.weight_decay)
        plan = TrainingPlan.from_args(args, len(train_dataloader), accelerator.num_processes)
        lr_scheduler = create_lr_scheduler(args, optimizer, plan.max_train_steps, accelerator.num_processes)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                           lr_scheduler)
    eval_dataloaders = {split: accelerator.prepare(loader) for split, loader in eval_dataloaders.items()}
    references_of = {split: None if split in hidden else split_references  # None: hidden, predictions only
                     for split, (_, split_references) in eval_splits.items()}

    tracker = TrainingTracker(args.metric_for_best_model, resume_settings(args, accelerator.num_processes),
                              lr_scheduler)
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if do_train:
        if args.resume_from_checkpoint:
            load_checkpoint(accelerator, tracker, args.resume_from_checkpoint, output_dir, plan.max_train_steps)
        logger.info("***** Running training *****\n  Examples = %d, epochs = %d, total batch size = %d, "
                    "optimization steps = %d, lr = %g", len(examples["train"]), plan.num_train_epochs,
                    total_batch_size, plan.max_train_steps, args.learning_rate)
        progress_bar = tqdm(range(plan.max_train_steps), initial=tracker.completed_steps,
                            disable=not accelerator.is_local_main_process)
        first_epoch, skip_batches = plan.resume_position(tracker.completed_steps)
        model.train()
        try:
            for epoch in range(first_epoch, plan.num_train_epochs):
                train_dataloader.set_epoch(epoch)  # this epoch's order, also for the skipping copy below
                batches = train_dataloader
                if epoch == first_epoch and skip_batches:
                    batches = accelerator.skip_first_batches(train_dataloader, skip_batches)
                start = time.perf_counter()
                for batch in batches:
                    with accelerator.accumulate(model):
                        # Teacher-forced blank infilling; vocabulary logits only where a target token is
                        # predicted (the target span and its eop), not over the whole [B, S, 50k].
                        labels = batch["labels"]
                        loss = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=labels,
                                     logits_positions=labels != -100, label_smoothing=args.label_smoothing).loss
                        tracker.add_batch(loss, len(labels) * accelerator.num_processes)
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
                        metrics, _ = evaluate(args, accelerator, model, tokenizer, eval_dataloaders["validation"],
                                              references_of["validation"], "validation")
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
    else:
        validation_metrics, _ = evaluate(args, accelerator, model, tokenizer, eval_dataloaders["validation"],
                                         references_of["validation"], "validation")
        logger.info("Validation without training: %s", validation_metrics)

    # Test with the best weights, and two trivial baselines (most frequent target, nearest training input's).
    # BLEU alone cannot tell a model that reads its input from fluent stock text: outputs are also counted.
    final_split = "test" if "test" in eval_splits else "validation"
    final_sources, final_references = eval_splits[final_split]
    final_metrics, predictions = evaluate(args, accelerator, model, tokenizer, eval_dataloaders[final_split],
                                          references_of[final_split], final_split)
    baselines, statistics = {}, {}
    if final_metrics is not None:
        train_inputs, train_targets = [e["input"] for e in examples["train"]], [e["target"] for e in examples["train"]]
        baseline_outputs = {
            "most_frequent_reference": [most_frequent_target(train_targets)] * len(final_sources),
            "nearest_training_target": nearest_training_targets(train_inputs, train_targets, final_sources),
        }
        baselines = {name: generation_metrics(texts, final_references) for name, texts in baseline_outputs.items()}
        texts = {"model": predictions, "references": [refs[0] for refs in final_references], **baseline_outputs}
        statistics = {name: output_statistics(outputs, final_sources) for name, outputs in texts.items()}

    if args.save_best_model and accelerator.is_main_process:
        save_model_and_tokenizer(accelerator.unwrap_model(model), tokenizer, output_dir / "best_model", args)

    record = None
    if accelerator.is_main_process:
        rows = [{"source": source, "references": references, "prediction": prediction}
                for source, references, prediction in zip(final_sources, final_references, predictions)]
        write_jsonl_atomic(output_dir / f"generations_{final_split}.jsonl", rows)
        record = results_record(
            args, "gen", "glm_gen", script="run_gen.py", accelerator=accelerator,
            prompt_id=prompted.prompt_id, prompt_name=template.name,
            total_train_batch_size=total_batch_size, tracker=tracker, plan=plan, validation=validation_metrics,
            test=final_metrics if final_split == "test" else None, baselines=baselines,
            trainable_params=trainable_params, total_params=total_params, test_labels_hidden="test" in hidden,
            carved_validation=prompted.carved,
        )
        record["data"] = data_counts
        record["output_statistics"] = statistics  # model, references (the first of each source), baselines
        write_json_atomic(output_dir / "results.json", record)
    accelerator.wait_for_everyone()
    end_tracking(accelerator, args, tracker.completed_steps, final_metrics if final_split == "test" else None)
    if final_metrics is None:
        accelerator.print(f"{final_split} references are hidden: {len(predictions)} generations in "
                          f"{output_dir / f'generations_{final_split}.jsonl'}, no metrics")
    else:
        accelerator.print(format_summary(final_split, final_sources, final_references, predictions,
                                         {"model": final_metrics, **baselines}, statistics))
        accelerator.print(f"Results in {output_dir / 'results.json'}, every output in "
                          f"{output_dir / f'generations_{final_split}.jsonl'}")
    return record


if __name__ == "__main__":
    run_script(main)
