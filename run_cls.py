#!/usr/bin/env python
"""Fine-tune GLM for classification as a cloze question (paper, Figure 2a), with Accelerate.

The template's answer slot becomes `[MASK]`; all answer choices of an example are packed after its
context and scored in one forward pass (score(c) = sum, or mean, of log p of c's tokens); the loss is
cross-entropy over the scores: no new head. Default: TREC (6 classes), the paper's cloze settings.

    accelerate launch run_cls.py --prompt_id 2 --output_dir runs/trec      # glm-roberta-large
    python run_cls.py --model_name_or_path glm-tiny --tokenizer_name train --learning_rate 3e-4 \\
        --dataset_name trec --train_file ../shared/data/trec/train.csv --output_dir runs/trec-tiny
    python run_cls.py --list_prompts                                       # prompt ids and examples

Writes to --output_dir: results.json, predictions_test.jsonl, step_N / epoch_N checkpoints with
best_weights.safetensors, best_model/ (--save_best_model), searched_prompts/ (--search_verbalizers).
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cli import (
    ArgumentParser,
    UsageError,
    add_data_and_prompt_args,
    add_few_shot_args,
    add_model_args,
    add_training_args,
    data_args_problems,
    default_learning_rate,
    derived_defaults,
    few_shot_problems,
    offline_unless_hub_answers,
    parse_or_list_prompts,
    position_problem,
    run_script,
    tokenizer_problems,
    training_args_problems,
    will_train,
)
from glm_peft import apply_peft, count_parameters, save_model_and_tokenizer
from glm_utils import (
    build_multiple_choice_inputs,
    encode_choices,
    encode_context,
    score_choices,
    score_contexts,
    search_label_words,
    with_demonstrations,
)
from metrics import (
    CHOICE_BASELINES,
    CLS_METRICS,
    calibrate,
    choice_baselines,
    classification_metrics,
    content_free_distribution,
    evaluate_choices,
    majority_class_baseline,
)
from modeling_glm import HUB_MODEL_ID, GLMForConditionalGeneration, max_positions
from templates import (
    CONTENT_FREE_INPUTS,
    HIDDEN_LABEL,
    choice_fields,
    content_free_contexts,
    demonstration_ids,
    list_prompts,
    load_prompted_splits,
    prompt_file_name,
    searched_template,
    shared_choices,
    use_label_words,
    write_template,
)
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

CHOICE_EOP = {"auto": None, "on": True, "off": False}  # --choice_eop -> encode_choices(choice_eop=)
EXAMPLES = """examples:
  python run_cls.py --dataset_name fine_foods --model_name_or_path glm-tiny --tokenizer_name train \\
      --learning_rate 3e-4 --output_dir runs/fine_foods           # offline, CPU: a random tiny GLM
  accelerate launch run_cls.py --prompt_id 2 --output_dir runs/trec  # TREC, BAAI/glm-roberta-large
"""


def parse_args(argv=None):
    parser = ArgumentParser(description="Fine-tune GLM for classification as a cloze question.", epilog=EXAMPLES)
    add_data_and_prompt_args(parser, "cls")
    add_few_shot_args(parser)
    add_training_args(parser, CLS_METRICS)
    add_model_args(parser)
    parser.set_defaults(model_name_or_path=HUB_MODEL_ID, learning_rate=None)
    group = parser.add_argument_group("cloze classification")
    group.add_argument("--max_seq_length", type=int, default=256,
                       help="Tokens per example: the context (cut around its [MASK]) plus every answer choice.")
    group.add_argument("--choice_prefix_space", action=argparse.BooleanOptionalAction, default=True,
                       help="Encode each answer choice as a mid-sentence word (' word'), as spans were in pretraining.")
    group.add_argument("--choice_eop", choices=CHOICE_EOP, default="auto",
                       help="Close each answer choice with eop and score it: auto = GLM's rule (when a choice of the "
                            "example has several tokens), on, off (the Hugging Face remote code).")
    group.add_argument("--length_normalize", action="store_true",
                       help="Divide a choice's score by its token count (for choices of different lengths).")
    group.add_argument("--skip_eval_rows", action="store_true",
                       help="Skip validation and test rows that cannot be rendered instead of refusing them; the "
                            "scores then hold on fewer rows, as the last line and results.json ('data') say.")
    levers = parser.add_argument_group("levers (README: What moves the score)")
    levers.add_argument("--calibrate", action="store_true",
                        help="Also report contextual calibration (Zhao et al. 2021): each prediction divided by the "
                             "answer distribution on content-free inputs.")
    levers.add_argument("--num_demonstrations", type=int, default=0, metavar="K",
                        help="Append K training examples per class, answer filled in, after each input (LM-BFF).")
    levers.add_argument("--search_verbalizers", type=int, default=0, metavar="N",
                        help="Replace the answer words by the best combination of each class's N likeliest words "
                             "(LM-BFF, zero-shot on validation); writes output_dir/searched_prompts/.")

    args = parse_or_list_prompts(parser, argv, "cls")
    if args.list_prompts:
        return args
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate(args.peft, 1e-5)  # full fine-tuning: the paper's cloze rate
    problems = (data_args_problems(args, "cls") + few_shot_problems(args, "cls") + training_args_problems(args)
                + tokenizer_problems(args))
    if args.tokenizer_name == "train" and args.train_file is None and (args.validation_file or args.test_file):
        problems.append("--tokenizer_name train trains on the training texts: pass --train_file or a tokenizer folder")
    if args.max_seq_length < 4:
        problems.append("--max_seq_length must be >= 4 (<s> [MASK] </s> and one choice token)")
    if args.num_demonstrations < 0 or args.search_verbalizers < 0:
        problems.append("--num_demonstrations and --search_verbalizers must be >= 0")
    if args.num_demonstrations and args.search_verbalizers:
        problems.append("--search_verbalizers with --num_demonstrations: the demonstrations would show the "
                        "hand-written words; search first, then pass the written template with --prompts_dir")
    if problems:
        parser.error("; ".join(problems))
    vars(args).update(derived_defaults(args, "cls"))
    return args


def tokenize_examples(tokenizer, examples, max_seq_length, choice_prefix_space, choice_eop, split,
                      demonstrations=None):
    """Gives each example `context_ids` (whole, with its `demonstrations` as far as they fit) and
    `choice_ids` (`encode_choices`, shared by examples with the same choices), before the first step.
    Raises UsageError naming the split, example and data row (no single [MASK], choices too long).
    Returns (each example's packed length, at most max_seq_length; how many contexts are cut)."""
    spans_of = {}
    lengths, cut = [], 0
    for example in examples:
        try:
            choices = tuple(example["choices"])
            if choices not in spans_of:
                spans_of[choices] = encode_choices(tokenizer, choices, choice_prefix_space, choice_eop)
            example["choice_ids"] = spans_of[choices]
            spans = sum(len(span) for span in example["choice_ids"])
            if spans + 3 > max_seq_length:
                raise UsageError(f"its answer choices take {spans} tokens: raise --max_seq_length above {spans + 2}")
            example["context_ids"] = encode_context(tokenizer, example["context"])
            if demonstrations:
                example["context_ids"] = with_demonstrations(example["context_ids"], demonstrations[example["index"]],
                                                             max_seq_length - spans)
        except ValueError as err:
            raise UsageError(f"{split} example {example['index']} (data row {example['row']}): {err}") from err
        packed = len(example["context_ids"]) + spans
        cut += packed > max_seq_length
        lengths.append(min(packed, max_seq_length))
    return lengths, cut


def evaluate(accelerator, model, dataloader, length_normalize, num_choices, labelled=True):
    """metrics.evaluate_choices with GLM's choice scores (score_choices, looked up at each call: tests patch it)."""
    return evaluate_choices(accelerator, model, dataloader, lambda batch: score_choices(model, batch, length_normalize),
                            num_choices, labelled)


def calibrated_evaluation(accelerator, model, tokenizer, template, raw_datasets, examples, eval_dataloaders, hidden,
                          predictions, args, num_choices):
    """--calibrate: p_cf of the model as tested, then the calibrated metrics of every labelled split.
    Returns ({"content_free_inputs", "p_cf": {choice: p}, split: metrics}, {example index: calibrated
    log-probabilities} of the final split)."""
    choices = shared_choices(examples, "--calibrate")
    contexts = content_free_contexts(template, next(iter(raw_datasets.values()))[0])
    p_cf = content_free_distribution(score_contexts(accelerator.unwrap_model(model), tokenizer, contexts, choices,
                                                    args.max_seq_length, args.choice_prefix_space,
                                                    CHOICE_EOP[args.choice_eop]))
    record = {"content_free_inputs": list(CONTENT_FREE_INPUTS), "p_cf": dict(zip(choices, p_cf.tolist()))}
    final_split = "test" if "test" in eval_dataloaders else "validation"
    calibrated = {}
    for split, dataloader in eval_dataloaders.items():
        scores = predictions if split == final_split else evaluate(accelerator, model, dataloader,
                                                                   args.length_normalize, num_choices, False)[1]
        indices = sorted(scores)
        log_q = calibrate(torch.tensor([scores[i][: len(choices)] for i in indices]), p_cf)
        if split not in hidden:
            record[split] = classification_metrics(log_q.argmax(-1).tolist(),
                                                   [examples[split][i]["label"] for i in indices], num_choices)
        if split == final_split:
            calibrated = dict(zip(indices, log_q.tolist()))
    return record, calibrated


def main(argv=None):
    args = parse_args(argv)
    if args.list_prompts:
        offline_unless_hub_answers(args)  # a hub dataset offline: its message at once
        return list_prompts(args, "cls")

    accelerator = setup_accelerator(args)
    output_dir = Path(args.output_dir)  # created once every check has passed

    # The model's position table bounds --max_seq_length: checked before any data is read (config only).
    offline_unless_hub_answers(args)
    problem = position_problem("max_seq_length", args.max_seq_length, max_positions(args.model_name_or_path),
                               args.model_name_or_path, cut="contexts are cut around their [MASK]")
    if problem:
        raise UsageError(problem)

    # Data and prompt: every split rendered and checked here, before the first step.
    do_train = will_train(args)  # otherwise zero-shot
    prompted = load_prompted_splits(args, "cls", do_train, zero_shot=True)
    template, prompt_id = prompted.template, prompted.prompt_id
    raw_datasets, examples = prompted.rows, prompted.examples
    data_counts, hidden = prompted.counts, prompted.hidden
    if args.calibrate or args.search_verbalizers:  # these levers need one set of classes (checked before any work)
        shared_choices(examples, "--calibrate" if args.calibrate else "--search_verbalizers")
    first = next(iter(examples.values()))[0]
    logger.info("Prompt %d: %s [%s]. Cloze form of the first example (the answer fills [MASK]):\n%s\n"
                "answer choices %s, gold %r", prompt_id, template.name, template.source, first["context"],
                first["choices"], first["target"])
    num_choices = max(len(e["choices"]) for split_examples in examples.values() for e in split_examples)

    # --tokenizer_name train: a BPE trained on the training prompts and choices.
    train_texts = [e["context"] for e in examples.get("train", [])]
    train_texts += sorted({choice for e in examples.get("train", []) for choice in e["choices"]})
    with accelerator.main_process_first():
        tokenizer = load_or_train_tokenizer(args.tokenizer_name, args.model_name_or_path, train_texts, output_dir,
                                            mask_token_id=args.mask_token_id)
    # Every split tokenized once, here; collate only lays the ids out.
    demonstrations = demonstration_ids(tokenizer, examples, args.num_demonstrations, args.seed) \
        if args.num_demonstrations else {}
    lengths = {}
    for split in examples:
        lengths[split], data_counts[split]["cut_contexts"] = tokenize_examples(
            tokenizer, examples[split], args.max_seq_length, args.choice_prefix_space, CHOICE_EOP[args.choice_eop],
            split, demonstrations.get(split),
        )
        if data_counts[split]["cut_contexts"]:
            logger.warning("%s: %d of %d contexts are longer than --max_seq_length %d with their choices; they are "
                           "cut around the [MASK].", split, data_counts[split]["cut_contexts"], len(examples[split]),
                           args.max_seq_length)

    model = GLMForConditionalGeneration.from_pretrained(args.model_name_or_path, vocab_size=len(tokenizer))
    check_special_rows(model, tokenizer, args.model_name_or_path)  # [MASK], sop, eop: trained rows?
    label_words = None
    if args.search_verbalizers:  # with the model as loaded
        label_words = search_label_words(model.to(accelerator.device), tokenizer, examples, args.search_verbalizers,
                                         args.max_seq_length, args.per_device_eval_batch_size, args.choice_prefix_space)
        template = searched_template(template, label_words["words"])
        use_label_words(examples, raw_datasets, template, label_words["ids"], tokenizer,
                        CHOICE_EOP[args.choice_eop] is True)
        logger.info("Label-word search: %s (validation accuracy %.4f of %d combinations); candidates %s",
                    label_words["words"], label_words["validation_accuracy"], label_words["combinations"],
                    label_words["candidates"])
    model = apply_peft(model, args)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    trainable_params, total_params = count_parameters(model)

    def collate(batch):
        inputs = build_multiple_choice_inputs(tokenizer, [e["context_ids"] for e in batch],
                                              [e["choice_ids"] for e in batch], args.max_seq_length)
        # The same number of choice columns in every batch, so that scores gather across processes.
        inputs["choice_mask"] = F.pad(inputs["choice_mask"], (0, num_choices - inputs["choice_mask"].shape[1]))
        inputs["class_labels"] = torch.tensor([HIDDEN_LABEL if e["label"] is None else e["label"] for e in batch])
        inputs["index"] = torch.tensor([e["index"] for e in batch])
        return inputs

    # The order depends on (seed, epoch) only and each loader seeds from a private generator, not dropout's:
    # a resumed run sees the batches and dropout masks of an uninterrupted one.
    train_dataloader = None
    if do_train:
        sampler = EpochSampler(len(examples["train"]), args.seed,
                               lengths["train"] if args.group_by_length else None, args.per_device_train_batch_size)
        train_dataloader = DataLoader(examples["train"], sampler=sampler, batch_size=args.per_device_train_batch_size,
                                      collate_fn=collate, generator=torch.Generator())
    eval_dataloaders = {
        split: DataLoader(examples[split], batch_size=args.per_device_eval_batch_size, collate_fn=collate,
                          generator=torch.Generator())
        for split in ("validation", "test")
        if split in examples
    }

    # Every check has passed: only now are --overwrite_output_dir's old outputs cleared.
    output_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(args, output_dir)
    if label_words and accelerator.is_main_process:
        write_template(template, output_dir / "searched_prompts" / prompt_file_name(args.dataset_name))
    start_tracking(accelerator, args, "run_cls")

    optimizer = lr_scheduler = plan = None
    if do_train:
        optimizer = create_optimizer(model, args.learning_rate, args.weight_decay)
        plan = TrainingPlan.from_args(args, len(train_dataloader), accelerator.num_processes)
        lr_scheduler = create_lr_scheduler(args, optimizer, plan.max_train_steps, accelerator.num_processes)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                           lr_scheduler)
    eval_dataloaders = {split: accelerator.prepare(loader) for split, loader in eval_dataloaders.items()}

    tracker = TrainingTracker(args.metric_for_best_model, resume_settings(args, accelerator.num_processes),
                              lr_scheduler)
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    validation_metrics = None
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
                        scores = score_choices(model, batch, args.length_normalize)
                        loss = F.cross_entropy(scores, batch["class_labels"])
                        tracker.add_batch(loss, len(batch["class_labels"]) * accelerator.num_processes)
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
                        metrics, _ = evaluate(accelerator, model, eval_dataloaders["validation"], args.length_normalize,
                                              num_choices)
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
    elif "validation" in eval_dataloaders and "validation" not in hidden:
        validation_metrics, _ = evaluate(accelerator, model, eval_dataloaders["validation"], args.length_normalize,
                                         num_choices)
        logger.info("Zero-shot validation: %s", validation_metrics)

    # Test, and the trivial baselines (on labelled splits).
    final_split = "test" if "test" in eval_dataloaders else "validation"
    final_metrics = predictions = None
    if final_split in eval_dataloaders:
        final_metrics, predictions = evaluate(accelerator, model, eval_dataloaders[final_split], args.length_normalize,
                                              num_choices, labelled=final_split not in hidden)
    calibration = calibrated = None
    if args.calibrate and predictions is not None:
        calibration, calibrated = calibrated_evaluation(accelerator, model, tokenizer, template, raw_datasets, examples,
                                                        eval_dataloaders, hidden, predictions, args, num_choices)
        logger.info("Calibrated (p_cf %s): %s", calibration["p_cf"], calibration)
    baselines = {}
    if "train" in examples and "train" not in hidden and final_metrics is not None:
        baselines["majority_class"] = majority_class_baseline([e["label"] for e in examples["train"]],
                                                              [e["label"] for e in examples[final_split]],
                                                              num_choices)
    if choice_fields(template) and final_metrics is not None:  # each example has its own choices
        baselines.update(choice_baselines([[len(span) for span in e["choice_ids"]] for e in examples[final_split]],
                                          [e["label"] for e in examples[final_split]], num_choices))

    if args.save_best_model and accelerator.is_main_process:
        save_model_and_tokenizer(accelerator.unwrap_model(model), tokenizer, output_dir / "best_model", args)

    record = None
    if accelerator.is_main_process:
        if predictions is not None:
            rows = []
            for example in examples[final_split]:
                choice_scores = predictions[example["index"]][: len(example["choices"])]
                predicted = max(range(len(choice_scores)), key=choice_scores.__getitem__)
                rows.append({"input": example["context"], "gold": example["target"],
                             "predicted": example["choices"][predicted],
                             "scores": dict(zip(example["choices"], choice_scores)),
                             "gold_index": example["label"], "predicted_index": predicted,
                             "choice_tokens": [len(span) for span in example["choice_ids"]]})
                if calibrated:
                    rows[-1]["calibrated_scores"] = dict(zip(example["choices"], calibrated[example["index"]]))
            write_jsonl_atomic(output_dir / f"predictions_{final_split}.jsonl", rows)
        record = results_record(
            args, "cls", "glm_cloze", script="run_cls.py", accelerator=accelerator,
            prompt_id=prompt_id, prompt_name=template.name,
            total_train_batch_size=total_batch_size, tracker=tracker, plan=plan, validation=validation_metrics,
            test=final_metrics if final_split == "test" else None, baselines=baselines,
            trainable_params=trainable_params, total_params=total_params, test_labels_hidden="test" in hidden,
            few_shot=prompted.few_shot, carved_validation=prompted.carved,
        )
        record["data"] = data_counts
        record.update({key: value for key, value in (("calibration", calibration), ("label_word_search", label_words))
                       if value is not None})
        write_json_atomic(output_dir / "results.json", record)
    accelerator.wait_for_everyone()
    end_tracking(accelerator, args, tracker.completed_steps, final_metrics if final_split == "test" else None)
    if final_metrics is not None:
        majority = baselines.get("majority_class", {}).get("accuracy")
        counts = data_counts[final_split]
        scored = (f"on {counts['kept']} of {counts['rows']} {final_split} rows" if counts["kept"] < counts["rows"]
                  else f"{counts['kept']} examples")
        accelerator.print(
            f"{final_split} accuracy {final_metrics['accuracy']:.4f} (macro-F1 {final_metrics['macro_f1']:.4f}, "
            f"{scored}) vs majority class {'n/a' if majority is None else f'{majority:.4f}'}"
            + (" (no better than always answering it)" if majority is not None
               and final_metrics["accuracy"] <= majority else "")
            + "".join(f", {name.replace('_', ' ')} {baselines[name]['accuracy']:.4f}" for name in CHOICE_BASELINES
                      if name in baselines)
            + (f"; calibrated {calibration[final_split]['accuracy']:.4f}" if calibration and final_split in calibration
               else "")
            + f"; results in {output_dir / 'results.json'}"
        )
    elif predictions is not None:
        accelerator.print(f"{final_split} labels are hidden: {len(predictions)} predictions in "
                          f"{output_dir / f'predictions_{final_split}.jsonl'}, no metrics")
    return record


if __name__ == "__main__":
    run_script(main)
