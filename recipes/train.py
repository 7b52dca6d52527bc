"""Train a long-tail image classifier on target + neighbor classes, then publish a masked, target-only model.

Usage:
    accelerate launch recipes/train.py                                   # built-in demo (recipes/demo/train.yaml)
    accelerate launch recipes/train.py --config recipes/imagenet_lt/dinov2/train.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/train.py --config ...

Any key of the YAML can be overridden on the command line, e.g. `--num_train_epochs 1 --loss balanced_softmax`.
"""

import logging
import os
import sys

import evaluate
import numpy as np
from transformers import set_seed

import neighbor_lt
from neighbor_lt.augment import ProcessorTransform
from neighbor_lt.configs import (
    ConfigError,
    DataArguments,
    ModelArguments,
    NeighborLTTrainingArguments,
    parse_args,
    setup_logging,
)
from neighbor_lt.data import MergedImageDataset, load_target_dataset, merge_training_set
from neighbor_lt.hub import check_hub_access, push_model, write_model_card
from neighbor_lt.metrics import format_table
from neighbor_lt.modeling import load_image_processor, load_model, mask_auxiliary_classes, processor_settings
from neighbor_lt.pixels import INPUT_PIPELINES, CachedImageDataset, make_train_dataset
from neighbor_lt.run_folder import RunFolder, RunInfo
from neighbor_lt.trainer import NeighborSilencingTrainer

logger = logging.getLogger("train")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo", "train.yaml")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", DEFAULT_CONFIG, *argv]
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments), argv
    )
    training_args.remove_unused_columns = False  # the collator needs pixel_values and labels only
    # The Trainer itself would push unmasked checkpoints; this recipe pushes the masked model once, at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if training_args.dataloader_pin_memory and training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns

    ################
    # Seed & logging
    ################
    if data_args.input_pipeline not in INPUT_PIPELINES:
        raise ConfigError(f"input_pipeline must be one of {INPUT_PIPELINES}, got {data_args.input_pipeline!r}")
    set_seed(training_args.seed)
    setup_logging(training_args)
    logger.info("model %s | data %s | loss %s", model_args, data_args, training_args.loss)
    if push_to_hub:
        check_hub_access(training_args.hub_model_id, training_args.hub_token)  # fail now, not after training

    ################
    # Data
    ################
    target = load_target_dataset(data_args)
    merged = merge_training_set(data_args, target, seed=training_args.seed)
    space, aux, target_counts = merged.space, merged.aux, merged.target_counts
    pairs = space.neighbor_pairs
    if training_args.loss == "neighbor_silencing" and len(pairs) == 0:
        logger.warning("neighbor_silencing without neighbor pairs is balanced softmax")
    logger.info(
        "%d target classes (%d images), %d auxiliary classes (%d images), %d neighbor pairs",
        space.num_targets, len(target["train"]), len(space.aux_names), len(merged.aux_labels), len(pairs),
    )  # fmt: skip

    ################
    # Model
    ################
    id2label = dict(enumerate(space.names))
    model = load_model(model_args, id2label)
    processor = load_image_processor(model_args, model)
    size, mean, std = processor_settings(processor)
    train_dataset, batch_augment, collator = make_train_dataset(  # input_pipeline: pil or tensor (uint8 cache)
        data_args, training_args, target["train"], aux, space.num_targets, size, mean, std
    )
    eval_tf = ProcessorTransform(processor)  # what the published model sees through pipeline(...)
    eval_dataset = (
        MergedImageDataset(target["validation"], None, space.num_targets, eval_tf) if "validation" in target else None
    )

    ################
    # Trainer
    ################
    metric = evaluate.load(neighbor_lt.LONG_TAIL_ACCURACY)
    groups = {"many_threshold": data_args.many_threshold, "few_threshold": data_args.few_threshold}

    def compute_metrics(eval_pred):
        predictions = np.argmax(eval_pred.predictions, axis=-1)
        result = metric.compute(
            predictions=predictions, references=eval_pred.label_ids, class_counts=target_counts, **groups
        )
        return {k: result[k] for k in ("overall", "many", "medium", "few")}

    trainer = NeighborSilencingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=compute_metrics,
        class_counts=merged.class_counts,
        neighbor_pairs=pairs,
        num_target_classes=space.num_targets,
        train_sampler=merged.sampler,
        batch_augment=batch_augment,
        data_collator=collator,
    )

    ################
    # Train
    ################
    run = RunFolder(training_args.output_dir)
    world = training_args.world_size  # recorded: `accelerate launch --cpu --num_processes 2` runs one process
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    if trainer.is_world_process_zero():
        run.write_args(
            model_args, data_args, training_args, extra={"num_processes": world, "global_train_batch_size": batch}
        )
    logger.info("%d process(es), %d training images a step", world, batch)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    ################
    # Save: the masked, target-only model
    ################
    if training_args.save_unmasked:
        trainer.save_model(os.path.join(training_args.output_dir, "unmasked"))
    info = RunInfo(
        target_classes=space.target_names,
        target_train_counts=target_counts.tolist(),
        auxiliary_classes=space.aux_names,
        neighbor_of=space.neighbor_of,
        loss=training_args.loss,
        lambda_s=training_args.lambda_s,
        max_aux_per_class=data_args.max_aux_per_class,
        many_threshold=data_args.many_threshold,
        few_threshold=data_args.few_threshold,
    )
    masked = mask_auxiliary_classes(trainer.accelerator.unwrap_model(trainer.model), space.num_targets)
    if trainer.is_world_process_zero():
        masked.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
        run.write_info(info)

    ################
    # Evaluate (target rows only, i.e. the masked model)
    ################
    results = None
    if eval_dataset is not None:
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
        predictions = np.argmax(prediction.predictions, axis=-1)
        results = metric.compute(
            predictions=predictions, references=prediction.label_ids, class_counts=target_counts, **groups
        )
        split = "development" if data_args.heldout_eval_per_class else data_args.eval_split
        train_acc = {}
        if training_args.report_train_accuracy:  # same masked model and transform, on the target training images
            seen = (  # the tensor pipeline's cache, resized and normalised (no augmentation)
                CachedImageDataset(target["train"], None, space.num_targets, size, data_args.pixel_cache_dir)
                if batch_augment is not None
                else MergedImageDataset(target["train"], None, space.num_targets, eval_tf)
            )
            train_pred = trainer.predict(seen, metric_key_prefix="train_eval")
            train_res = metric.compute(
                predictions=np.argmax(train_pred.predictions, axis=-1),
                references=train_pred.label_ids,
                class_counts=target_counts,
                **groups,
            )
            train_acc = {f"train_{k}": train_res[k] for k in ("overall", "many", "medium", "few")}
            results.update(train_acc)
        if trainer.is_world_process_zero():
            seen_images = trainer.state.global_step * training_args.per_device_train_batch_size
            seen_images *= training_args.gradient_accumulation_steps * training_args.world_size
            run.write_eval_results(
                results,
                split=split,
                num_images=len(predictions),
                train_steps=trainer.state.global_step,
                train_images=seen_images,
                **train_acc,
            )
            run.write_per_class(results, info)
            print(format_table(results, title=f"Evaluation on {split} ({len(predictions)} images)"))
            if train_acc:
                print(
                    "training images (no augmentation): "
                    + " ".join(f"{k} {100 * v:.2f}" for k, v in train_acc.items())
                )

    ################
    # Card & push
    ################
    unmasked_revision = training_args.push_unmasked_revision if push_to_hub else None
    if unmasked_revision and not training_args.save_unmasked:  # every process takes part in saving
        trainer.save_model(os.path.join(training_args.output_dir, "unmasked"))
    if trainer.is_world_process_zero():
        write_model_card(training_args.output_dir, model_args, data_args, training_args, results)
        if push_to_hub:
            push_model(
                training_args.output_dir,
                training_args.hub_model_id,
                training_args.hub_token,
                private=training_args.hub_private_repo,
                unmasked_revision=unmasked_revision,
            )
        print(f"Masked target-only model saved to {training_args.output_dir}")  # once, also under torchrun
    return results


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"configuration error: {err}")
