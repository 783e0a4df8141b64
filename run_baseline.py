#!/usr/bin/env python
"""Baselines for GLM's prompt-based fine-tuning, on the same splits, prompts and metrics, with Accelerate.

--method linear_head: a new head on the encoder (RoBERTa, or GLM) fed the raw input text.
--method mlm_prompt: PET-style (Schick & Schuetze, NAACL 2021) masks in the template, one per
  verbalizer token, all masks scored in one pass (mean log p by default). --method seq2seq: T5 / BART,
  generation (--task gen) or rank classification of the answer choices (--task cls).

    accelerate launch run_baseline.py --method linear_head --output_dir runs/trec_roberta_head
    accelerate launch run_baseline.py --task gen --method seq2seq --model_name_or_path t5-large \\
        --output_dir runs/e2e_t5

Writes to --output_dir what run_cls.py / run_gen.py write (results.json, predictions_test.jsonl or
generations_test.jsonl, checkpoints, best_model/ with --save_best_model).
"""

import argparse
import functools
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from baselines import (
    FULL_LEARNING_RATES,
    TINY_LEARNING_RATE,
    TINY_MODELS,
    MaskedLMScorer,
    apply_baseline_peft,
    check_method_and_model,
    class_scores,
    collate_linear_head,
    collate_mlm,
    collate_rank,
    collate_seq2seq,
    collate_sources,
    default_text_columns,
    encode_linear_head,
    encode_mlm,
    encode_seq2seq,
    load_baseline_model,
    load_baseline_tokenizer,
    max_model_positions,
    model_family,
    training_loss,
)
from cli import (
    ArgumentParser,
    UsageError,
    add_data_and_prompt_args,
    add_few_shot_args,
    add_generation_args,
    add_model_args,
    add_training_args,
    data_args_problems,
    default_learning_rate,
    derived_defaults,
    few_shot_problems,
    generation_args_problems,
    offline_unless_hub_answers,
    parse_or_list_prompts,
    position_problem,
    run_script,
    tokenizer_problems,
    training_args_problems,
    will_train,
)
from glm_peft import count_parameters
from metrics import (
    CLS_METRICS,
    GEN_METRICS,
    evaluate_choices,
    evaluate_generation,
    majority_class_baseline,
    most_frequent_reference_baseline,
)
from modeling_glm import readable_like_results
from templates import TASKS, group_references, list_prompts, load_prompted_splits
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

METHODS = ("linear_head", "mlm_prompt", "seq2seq")
METHOD_TASKS = {"linear_head": ("cls",), "mlm_prompt": ("cls",), "seq2seq": ("cls", "gen")}
DEFAULT_MODELS = {"linear_head": "roberta-large", "mlm_prompt": "roberta-large", "seq2seq": "t5-large"}
EXAMPLES = """examples:
  python run_baseline.py --method linear_head --model_name_or_path roberta-tiny --tokenizer_name train \\
      --dataset_name fine_foods --learning_rate 1e-3 --output_dir runs/b_fine_foods  # offline, CPU
  accelerate launch run_baseline.py --method linear_head --output_dir runs/trec_roberta_head  # roberta-large
"""


def parse_args(argv=None):
    first = ArgumentParser(add_help=False)
    first.add_argument("--task", choices=TASKS, default="cls")
    task = first.parse_known_args(argv)[0].task  # the task's data flags and defaults

    parser = ArgumentParser(description="Baselines (RoBERTa / T5 / BART / GLM linear head) on the data and prompts "
                                        "of run_cls.py / run_gen.py.", epilog=EXAMPLES)
    parser.add_argument("--task", choices=TASKS, default="cls", help="cls (classification) or gen (generation).")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="linear_head (cls), mlm_prompt (cls) or seq2seq (cls by rank classification, gen).")
    add_data_and_prompt_args(parser, task)
    add_few_shot_args(parser)
    add_training_args(parser, GEN_METRICS if task == "gen" else CLS_METRICS)
    add_model_args(parser)
    add_generation_args(parser)
    # learning_rate None: main resolves it from the model family and --peft.
    parser.set_defaults(learning_rate=None, warmup_ratio=0.06 if task == "gen" else 0.1,
                        label_smoothing=0.1 if task == "gen" else 0.0)
    group = parser.add_argument_group("baseline")
    group.add_argument("--text_column", nargs="+", default=None,
                       help="linear_head: the raw text column(s) fed to the model (default: the template's "
                            "string fields of its input part); two columns are encoded as a pair.")
    group.add_argument("--max_seq_length", type=int, default=256,
                       help="Input tokens for linear_head (raw text) and mlm_prompt (the prompt, cut around "
                            "its masks, which always survive).")
    group.add_argument("--choice_score", choices=("mean", "sum"), default=None,
                       help="How the log-probabilities of a choice's tokens combine: mlm_prompt default mean, "
                            "seq2seq rank classification default sum (mean = length-normalised).")
    group.add_argument("--choice_prefix_space", action=argparse.BooleanOptionalAction, default=True,
                       help="mlm_prompt: encode a verbalizer as a mid-sentence word (' good'), as it follows "
                            "the space before the answer slot.")
    args = parse_or_list_prompts(parser, argv, task)
    if args.list_prompts:
        return args
    problems = data_args_problems(args, task) + few_shot_problems(args, task) + training_args_problems(args)
    if args.method is None:
        problems.append(f"--method is required: one of {METHODS}")
    elif args.task not in METHOD_TASKS[args.method]:
        problems.append(f"--method {args.method} does {' and '.join(METHOD_TASKS[args.method])} only, not --task "
                        f"{args.task}" + (" (generation baselines: --method seq2seq)" if args.task == "gen" else ""))
    if args.peft_weights:
        problems.append("--peft_weights loads GLM's PEFT weights in run_cls.py / run_gen.py, not in a baseline")
    if args.peft == "ptuning_v2":
        problems.append("--peft ptuning_v2 is GLM's native prefix (run_cls.py / run_gen.py) and is incompatible "
                        "with the baselines; use --peft lora, or no --peft")
    if problems:
        parser.error("; ".join(problems))
    if args.model_name_or_path is None:
        args.model_name_or_path = DEFAULT_MODELS[args.method]
    if args.choice_score is None:
        args.choice_score = "mean" if args.method == "mlm_prompt" else "sum"
    problems += generation_args_problems(args, 8) + tokenizer_problems(args, TINY_MODELS)
    if args.max_seq_length < 8:
        problems.append("--max_seq_length must be >= 8")
    if args.text_column is not None and (args.method != "linear_head" or len(args.text_column) > 2):
        problems.append("--text_column is for --method linear_head, with one or two columns")
    if problems:
        parser.error("; ".join(problems))
    vars(args).update(derived_defaults(args, task))
    return args


def generate(args, model, batch):
    """[B, L] ids of transformers' `generate` for a batch of sources, with the decoding flags."""
    sampling = dict(top_p=args.top_p, temperature=args.temperature) if args.do_sample else {}
    return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          max_new_tokens=args.max_target_length, min_new_tokens=args.min_target_length,
                          num_beams=args.num_beams, length_penalty=args.length_penalty,
                          no_repeat_ngram_size=args.no_repeat_ngram_size, do_sample=args.do_sample, **sampling)


def main(argv=None):
    args = parse_args(argv)
    if args.list_prompts:
        offline_unless_hub_answers(args, local_models=TINY_MODELS)  # a hub dataset offline: its message at once
        return list_prompts(args, args.task)

    accelerator = setup_accelerator(args)
    output_dir = Path(args.output_dir)  # created once every check has passed

    # The model must be reachable before any work, and its position table bounds the length flags.
    offline_unless_hub_answers(args, local_models=TINY_MODELS)
    family = model_family(args.model_name_or_path)
    check_method_and_model(args.method, family, args.model_name_or_path)
    positions = max_model_positions(args.model_name_or_path, family)
    if positions is not None:
        lengths = ({"max_source_length": 0, "max_target_length": 1} if args.method == "seq2seq"
                   else {"max_seq_length": 0})  # flag -> positions its input uses beyond the flag (decoder start)
        problems = [position_problem(flag, getattr(args, flag), positions, args.model_name_or_path, extra=extra)
                    for flag, extra in lengths.items()]
        if any(problems):
            raise UsageError("; ".join(problem for problem in problems if problem))
    if args.learning_rate is None:
        full = TINY_LEARNING_RATE if args.model_name_or_path in TINY_MODELS else FULL_LEARNING_RATES.get(family, 1e-5)
        args.learning_rate = default_learning_rate(args.peft, full)

    # Data and prompt exactly as run_cls.py / run_gen.py (--num_shots: the same rows).
    do_train = will_train(args)
    prompted = load_prompted_splits(args, args.task, do_train)
    template, prompt_id = prompted.template, prompted.prompt_id
    raw_datasets, examples = prompted.rows, prompted.examples
    data_counts, hidden = prompted.counts, prompted.hidden
    logger.info("Prompt %d: %s [%s]", prompt_id, template.name, template.source)

    text_columns = None
    if args.method == "linear_head":
        text_columns = args.text_column or default_text_columns(template, raw_datasets["train"])
        missing = sorted(set(text_columns) - set(raw_datasets["train"].column_names))
        if missing:
            raise UsageError(f"--text_column {missing} not in the data: {raw_datasets['train'].column_names}")
        logger.info("linear_head reads the raw text of column(s) %s (no template)", text_columns)
        train_texts = [str(raw_datasets["train"][e["row"]][c]) for e in examples["train"] for c in text_columns]
    else:
        train_texts = [t for e in examples["train"] for t in (e["input"], e["target"])]
    with accelerator.main_process_first():
        tokenizer = load_baseline_tokenizer(args, family, train_texts, output_dir)

    num_choices = None
    if args.task == "cls":
        num_choices = max(len(e["choices"]) for split in examples.values() for e in split)
        if args.method == "linear_head" and len({tuple(e["choices"]) for s in examples.values() for e in s}) != 1:
            raise UsageError(f"A linear head needs one fixed label set, but template {template.name!r} renders "
                             "several answer-choice lists; use --method mlm_prompt or seq2seq.")
    pad_id = tokenizer.pad_token_id
    if args.method == "linear_head":
        features = {split: encode_linear_head(tokenizer, examples[split], raw_datasets[split], text_columns,
                                              args.max_seq_length) for split in examples}
        lengths = [len(f["input_ids"]) for f in features["train"]]
        collate_train = collate_eval = functools.partial(collate_linear_head, pad_token_id=pad_id)
    elif args.method == "mlm_prompt":
        features = {split: encode_mlm(tokenizer, examples[split], args.max_seq_length, args.choice_prefix_space)
                    for split in examples}
        lengths = [sum(len(r) for r in f["rows"]) for f in features["train"]]
        collate_train = collate_eval = functools.partial(collate_mlm, pad_token_id=pad_id, num_choices=num_choices)
    else:
        features = {split: encode_seq2seq(tokenizer, examples[split], args.max_source_length, args.max_target_length)
                    for split in examples}
        lengths = [len(f["input_ids"]) + len(f["labels"]) for f in features["train"]]
        collate_train = functools.partial(collate_seq2seq, pad_token_id=pad_id)
        collate_eval = (functools.partial(collate_rank, pad_token_id=pad_id, num_choices=num_choices)
                        if args.task == "cls" else functools.partial(collate_sources, pad_token_id=pad_id))
        full_targets = tokenizer([e["target"] for e in examples["train"]])["input_ids"]
        data_counts["train"]["long_targets"] = sum(len(t) > args.max_target_length for t in full_targets)
        if data_counts["train"]["long_targets"]:
            logger.warning("%d training targets are longer than --max_target_length %d tokens: they are cut there.",
                           data_counts["train"]["long_targets"], args.max_target_length)
    eval_sets = {}  # split -> (rows of its DataLoader, references | None, sources | None)
    for split in ("validation", "test"):
        if split not in examples:
            continue
        if args.task == "cls":
            eval_sets[split] = (features[split], None, None)
        else:  # each distinct source is decoded once and scored against all its references
            sources, references = group_references(examples[split])
            first = {}
            for feature, example in zip(features[split], examples[split]):
                first.setdefault(example["source_key"], feature)
            rows = [{"index": i, "input_ids": first[source]["input_ids"]} for i, source in enumerate(sources)]
            eval_sets[split] = (rows, references, sources)
            logger.info("%s: %d rows -> %d distinct sources", split, len(examples[split]), len(sources))

    model = load_baseline_model(args, family, tokenizer, num_choices if args.method == "linear_head" else None)
    model = apply_baseline_peft(model, args, family)
    if args.gradient_checkpointing:  # on the transformers model, before a scorer wraps it
        model.activation_checkpointing_enable()
    if args.method == "mlm_prompt":
        model = MaskedLMScorer(model)
    trainable_params, total_params = count_parameters(model)

    train_dataloader = None
    if do_train:
        sampler = EpochSampler(len(features["train"]), args.seed, lengths if args.group_by_length else None,
                               args.per_device_train_batch_size)
        train_dataloader = DataLoader(features["train"], sampler=sampler, batch_size=args.per_device_train_batch_size,
                                      collate_fn=collate_train, generator=torch.Generator())
    eval_dataloaders = {split: DataLoader(rows, batch_size=args.per_device_eval_batch_size, collate_fn=collate_eval,
                                          generator=torch.Generator())
                        for split, (rows, _, _) in eval_sets.items()}

    # Every check has passed: only now are --overwrite_output_dir's old outputs cleared.
    output_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(args, output_dir)
    start_tracking(accelerator, args, "run_baseline")  # --with_tracking: live curves

    optimizer = lr_scheduler = plan = None
    if do_train:
        optimizer = create_optimizer(model, args.learning_rate, args.weight_decay)
        plan = TrainingPlan.from_args(args, len(train_dataloader), accelerator.num_processes)
        lr_scheduler = create_lr_scheduler(args, optimizer, plan.max_train_steps, accelerator.num_processes)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                           lr_scheduler)
    eval_dataloaders = {split: accelerator.prepare(loader) for split, loader in eval_dataloaders.items()}

    def evaluate(split):
        """(metrics or None when hidden, outputs): cls {index: scores}, gen the predictions in source order."""
        if args.task == "gen":
            return evaluate_generation(accelerator, model, eval_dataloaders[split],
                                       functools.partial(generate, args, accelerator.unwrap_model(model)), tokenizer,
                                       None if split in hidden else eval_sets[split][1], split)
        return evaluate_choices(accelerator, model, eval_dataloaders[split],
                                functools.partial(class_scores, args, model), num_choices, split not in hidden)

    tracker = TrainingTracker(args.metric_for_best_model, resume_settings(args, accelerator.num_processes),
                              lr_scheduler)
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if do_train:
        if args.resume_from_checkpoint:
            load_checkpoint(accelerator, tracker, args.resume_from_checkpoint, output_dir, plan.max_train_steps)
        logger.info("***** Running training: %s [%s] *****\n  Examples = %d, epochs = %d, total batch size = %d, "
                    "optimization steps = %d, lr = %g", args.method, args.model_name_or_path, len(features["train"]),
                    plan.num_train_epochs, total_batch_size, plan.max_train_steps, args.learning_rate)
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
                        loss = training_loss(args, model, batch)
                        tracker.add_batch(loss, len(batch["index"]) * accelerator.num_processes)
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
                        metrics = evaluate("validation")[0]
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
        validation_metrics = evaluate("validation")[0]
        logger.info("Untrained validation: %s", validation_metrics)

    final_split = "test" if "test" in eval_sets else "validation"
    final_metrics, outputs = evaluate(final_split)
    baselines = {}
    if final_metrics is not None and "train" not in hidden and args.task == "cls":
        baselines["majority_class"] = majority_class_baseline([e["label"] for e in examples["train"]],
                                                              [e["label"] for e in examples[final_split]], num_choices)
    elif final_metrics is not None and "train" not in hidden:
        baselines["most_frequent_reference"] = most_frequent_reference_baseline(
            [e["target"] for e in examples["train"]], eval_sets[final_split][1])

    if args.save_best_model and accelerator.is_main_process:  # a whole model, or a peft model's adapter (+ head)
        accelerator.unwrap_model(model).save_pretrained(output_dir / "best_model")
        readable_like_results(*(output_dir / "best_model").glob("*.safetensors"))  # transformers writes them 0600
        tokenizer.save_pretrained(output_dir / "best_model")

    record = None
    if accelerator.is_main_process:
        if args.task == "cls":  # the rows of run_cls.py's predictions file; input = what the model read
            rows = []
            for index, (example, feature) in enumerate(zip(examples[final_split], features[final_split])):
                choice_scores = outputs[index][: len(example["choices"])]
                predicted = max(range(len(choice_scores)), key=choice_scores.__getitem__)
                read = (tokenizer.decode(feature["input_ids"], skip_special_tokens=True) if args.method == "linear_head"
                        else example["context" if args.method == "mlm_prompt" else "input"])
                rows.append({"input": read, "gold": example["target"], "predicted": example["choices"][predicted],
                             "scores": dict(zip(example["choices"], choice_scores))})
            write_jsonl_atomic(output_dir / f"predictions_{final_split}.jsonl", rows)
        else:
            _, references, sources = eval_sets[final_split]
            rows = [{"source": s, "references": r, "prediction": p} for s, r, p in zip(sources, references, outputs)]
            write_jsonl_atomic(output_dir / f"generations_{final_split}.jsonl", rows)
        uses_prompt = args.method != "linear_head"  # a linear head reads the raw text: no prompt
        record = results_record(
            args, args.task, args.method, script="run_baseline.py", accelerator=accelerator,
            prompt_id=prompt_id if uses_prompt else None,
            prompt_name=template.name if uses_prompt else None, total_train_batch_size=total_batch_size,
            tracker=tracker, plan=plan, validation=validation_metrics,
            test=final_metrics if final_split == "test" else None, baselines=baselines,
            trainable_params=trainable_params, total_params=total_params, test_labels_hidden="test" in hidden,
            few_shot=prompted.few_shot, carved_validation=prompted.carved)
        record["data"] = data_counts
        write_json_atomic(output_dir / "results.json", record)
    accelerator.wait_for_everyone()
    end_tracking(accelerator, args, tracker.completed_steps, final_metrics if final_split == "test" else None)
    metric = args.metric_for_best_model
    best_epoch = tracker.best["epoch"] if tracker.best else None
    if final_metrics is None:
        accelerator.print(f"{args.method} [{args.model_name_or_path}] {final_split} labels are hidden: predictions "
                          f"only, in {output_dir}; best epoch {best_epoch}")
    else:
        trivial = "".join(f" vs {name} {scores[metric]:.4f}" for name, scores in baselines.items())
        accelerator.print(f"{args.method} [{args.model_name_or_path}] {final_split} {metric} "
                          f"{final_metrics[metric]:.4f}{trivial}; best epoch {best_epoch}; results in "
                          f"{output_dir / 'results.json'}")
    return record


if __name__ == "__main__":
    run_script(main)
