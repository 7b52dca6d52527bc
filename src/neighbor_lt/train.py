"""One training run, in parts a reader can follow: data, model and Trainer, train, mask, evaluate, publish.

``recipes/train.py``, ``neighbor-lt train``, the ablation and the benchmarks all run training through :func:`run`
(or, for the benchmarks, through its parts), so what they measure is what users run.

Example:
    >>> config = load_config(["--config", "recipes/demo/train.yaml", "--max_steps", "2"])  # doctest: +SKIP
    >>> run(config).results["few"]  # doctest: +SKIP
    0.12
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .configs import (
    ConfigError,
    DataArguments,
    ModelArguments,
    NeighborLTTrainingArguments,
    no_pin_memory_on_cpu,
    parse_args,
    resolve_resume,
    setup_logging,
)
from .metrics import ACCURACY_KEYS, format_table
from .run_folder import RunFolder, RunInfo
from .sources import check_data_paths

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The resolved arguments of a training run.

    Args:
        model, data, training: the three argument dataclasses of the train recipe YAML.
        push_to_hub: push the masked model at the end (taken off ``training.push_to_hub``: the Trainer itself would
            push unmasked checkpoints).
        resume_from: the checkpoint folder the run resumes (``resume_from_checkpoint``, with ``true`` / ``last``
            resolved to the newest ``checkpoint-*`` of ``output_dir``); None for a fresh run.
    """

    model: ModelArguments
    data: DataArguments
    training: NeighborLTTrainingArguments
    push_to_hub: bool = False
    resume_from: str | None = None


def load_config(argv: list[str]) -> TrainConfig:
    """The :class:`TrainConfig` of ``--config YAML`` plus command-line overrides, checked before any work.

    Example:
        >>> load_config(["--config", "recipes/demo/train.yaml", "--loss", "balanced_softmax"]).training.loss
        'balanced_softmax'

    Args:
        argv: ``--config YAML`` and ``--KEY VALUE`` overrides of its keys.
    """
    from .pixels import INPUT_PIPELINES

    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments), argv
    )
    training_args.remove_unused_columns = False  # the collator needs pixel_values and labels only
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    no_pin_memory_on_cpu(training_args)
    if data_args.input_pipeline not in INPUT_PIPELINES:
        raise ConfigError(f"input_pipeline must be one of {INPUT_PIPELINES}, got {data_args.input_pipeline!r}")
    resume_from = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    return TrainConfig(model_args, data_args, training_args, push_to_hub, resume_from)


@dataclass
class TrainData:
    """The target set (``train`` and maybe ``validation``) and what merging the auxiliary set adds."""

    target: Any  # datasets.DatasetDict
    merged: Any  # neighbor_lt.data.MergedTrainingSet


@dataclass
class ModelParts:
    """The model, its image processor and the datasets built with the processor's size and normalisation."""

    model: Any
    processor: Any
    size: int
    train_dataset: Any
    batch_augment: Any
    collator: Any
    eval_transform: Any
    eval_dataset: Any = None


@dataclass
class RunResult:
    """What a run produced: its folder, the masked model's results on the eval split (None without one), the
    Trainer's training metrics and the optimizer steps taken."""

    output_dir: str
    results: dict | None
    train_metrics: dict = field(default_factory=dict)
    train_steps: int = 0


class GroupAccuracy:
    """``compute_metrics`` for the Trainer: Overall / Many / Medium / Few of the target rows; the full result of the
    last call (with per-class accuracy and group sizes) is kept in :attr:`last`, its image count in :attr:`num_images`.

    Args:
        class_counts: training images per target class (they define the groups).
        many_threshold, few_threshold: the group thresholds of the data arguments.
    """

    def __init__(self, class_counts, many_threshold: int, few_threshold: int):
        import evaluate

        import neighbor_lt

        self.metric = evaluate.load(neighbor_lt.LONG_TAIL_ACCURACY)
        self.class_counts = class_counts
        self.groups = {"many_threshold": many_threshold, "few_threshold": few_threshold}
        self.last: dict | None = None
        self.num_images = 0

    def __call__(self, eval_pred) -> dict:
        predictions = np.argmax(eval_pred.predictions, axis=-1)
        self.last = self.metric.compute(
            predictions=predictions, references=eval_pred.label_ids, class_counts=self.class_counts, **self.groups
        )
        self.num_images = len(predictions)
        return {k: self.last[k] for k in ACCURACY_KEYS}


# --------------------------------------------------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------------------------------------------------
def prepare(config: TrainConfig) -> None:
    """Seed, logging, and a Hub access check before any work when the run pushes."""
    from transformers import set_seed

    from .hub import check_hub_access

    set_seed(config.training.seed)
    setup_logging(config.training)
    check_data_paths(config.data)  # a wrong folder is one line, before anything loads
    check_output_dir(config)
    logger.info("model %s | data %s | loss %s", config.model, config.data, config.training.loss)
    if config.push_to_hub:
        check_hub_access(config.training.hub_model_id, config.training.hub_token)  # fail now, not after training


def check_output_dir(config: TrainConfig) -> None:
    """Refuse to mix two runs in one folder: a finished run's folder is reused only with ``overwrite_output_dir``
    or when this run resumes one of its checkpoints."""
    args = config.training
    folder = RunFolder(args.output_dir)
    if folder.is_finished() and not args.overwrite_output_dir and config.resume_from is None:
        raise ConfigError(
            f"output_dir {args.output_dir} holds a finished run: choose another --output_dir, pass "
            "--overwrite_output_dir true to replace it, or --resume_from_checkpoint last to continue it"
        )
    if folder.is_incomplete() and config.resume_from is None:
        logger.warning("%s holds an unfinished run; starting afresh (--resume_from_checkpoint last continues it)",
                       args.output_dir)  # fmt: skip


def build_data(config: TrainConfig) -> TrainData:
    """The target set and the merged label space (auxiliary set, neighbor pairs, counts, per-epoch sampler)."""
    from .data import load_target_dataset, merge_training_set
    from .losses import get_loss

    target = load_target_dataset(config.data)
    merged = merge_training_set(config.data, target, seed=config.training.seed)
    space = merged.space
    if get_loss(config.training.loss).uses_neighbors and len(space.neighbor_pairs) == 0:
        logger.warning("%s without neighbor pairs is balanced softmax", config.training.loss)
    logger.info(
        "%d target classes (%d images), %d auxiliary classes (%d images), %d neighbor pairs",
        space.num_targets, len(target["train"]), len(space.aux_names), len(merged.aux_labels),
        len(space.neighbor_pairs),
    )  # fmt: skip
    return TrainData(target, merged)


def build_model(config: TrainConfig, data: TrainData) -> ModelParts:
    """The model over the merged label space, its processor, and the training / evaluation datasets."""
    from .augment import ProcessorTransform
    from .data import MergedImageDataset
    from .modeling import load_image_processor, load_model, processor_settings
    from .pixels import make_train_dataset

    space, target = data.merged.space, data.target
    model = load_model(config.model, dict(enumerate(space.names)))
    processor = load_image_processor(config.model, model, crop_pct=config.data.crop_pct)  # the eval transform
    size, mean, std = processor_settings(processor)
    train_dataset, batch_augment, collator = make_train_dataset(  # input_pipeline: pil or tensor (uint8 cache)
        config.data, config.training, target["train"], data.merged.aux, space.num_targets, size, mean, std
    )
    eval_tf = ProcessorTransform(processor)  # what the published model sees through pipeline(...)
    eval_dataset = (
        MergedImageDataset(target["validation"], None, space.num_targets, eval_tf) if "validation" in target else None
    )
    return ModelParts(model, processor, size, train_dataset, batch_augment, collator, eval_tf, eval_dataset)


def build_trainer(config: TrainConfig, data: TrainData, parts: ModelParts, **overrides):
    """The :class:`~neighbor_lt.trainer.NeighborSilencingTrainer` of the run; ``overrides`` replace its arguments
    (a benchmark feeds other datasets or adds callbacks)."""
    from .trainer import NeighborSilencingTrainer

    merged = data.merged
    kwargs = dict(
        model=parts.model,
        args=config.training,
        train_dataset=parts.train_dataset,
        eval_dataset=parts.eval_dataset,
        processing_class=parts.processor,
        compute_metrics=GroupAccuracy(merged.target_counts, config.data.many_threshold, config.data.few_threshold),
        class_counts=merged.class_counts,
        neighbor_pairs=merged.space.neighbor_pairs,
        num_target_classes=merged.space.num_targets,
        train_sampler=merged.sampler,
        batch_augment=parts.batch_augment,
        data_collator=parts.collator,
    )
    return NeighborSilencingTrainer(**{**kwargs, **overrides})


def train(config: TrainConfig, trainer) -> dict:
    """Record the resolved arguments (``args.yaml``), train, save the training metrics; those metrics."""
    args = config.training
    world = args.world_size  # recorded: `accelerate launch --cpu --num_processes 2` runs one process
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    extra = {"num_processes": world, "global_train_batch_size": batch}
    if config.resume_from:
        extra["resumed_from"] = config.resume_from
    if trainer.is_world_process_zero():
        folder = RunFolder(args.output_dir)
        folder.start_run(f"a training run started writing this folder (resuming {config.resume_from or 'nothing'})")
        folder.write_args(config.model, config.data, args, extra=extra)
    logger.info("%d process(es), %d training images a step", world, batch)
    train_result = trainer.train(resume_from_checkpoint=config.resume_from)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    return train_result.metrics


def mask_and_save(config: TrainConfig, data: TrainData, parts: ModelParts, trainer) -> RunInfo:
    """Save the masked, target-only model, its processor and the run's label space (``neighbor_lt.json``)."""
    from .modeling import mask_auxiliary_classes

    args, space = config.training, data.merged.space
    if args.save_unmasked:
        trainer.save_model(os.path.join(args.output_dir, "unmasked"))
    info = RunInfo(
        target_classes=space.target_names,
        target_train_counts=data.merged.target_counts.tolist(),
        auxiliary_classes=space.aux_names,
        neighbor_of=space.neighbor_of,
        loss=args.loss,
        lambda_s=args.lambda_s,
        max_aux_per_class=config.data.max_aux_per_class,
        many_threshold=config.data.many_threshold,
        few_threshold=config.data.few_threshold,
    )
    masked = mask_auxiliary_classes(trainer.accelerator.unwrap_model(trainer.model), space.num_targets)
    if trainer.is_world_process_zero():
        masked.save_pretrained(args.output_dir)
        parts.processor.save_pretrained(args.output_dir)
        RunFolder(args.output_dir).write_info(info)
    return info


def evaluate(config: TrainConfig, data: TrainData, parts: ModelParts, trainer, info: RunInfo) -> dict | None:
    """The masked model (target rows only) on the eval split, and on the training images when
    ``report_train_accuracy``; written to ``eval_results.json`` and ``per_class_accuracy.csv``. None without an eval
    split."""
    if parts.eval_dataset is None:
        return None
    accuracy: GroupAccuracy = trainer.compute_metrics
    trainer.evaluate(parts.eval_dataset, metric_key_prefix="eval")
    results, num_images = accuracy.last, accuracy.num_images
    train_acc = {}
    if config.training.report_train_accuracy:  # same masked model and transform, on the target training images
        trainer.evaluate(_seen_images(config, data, parts), metric_key_prefix="train_eval")
        train_acc = {f"train_{k}": accuracy.last[k] for k in ACCURACY_KEYS}
        results.update(train_acc)
    if trainer.is_world_process_zero():
        args = config.training
        split = "development" if config.data.heldout_eval_per_class else config.data.eval_split
        seen = trainer.state.global_step * args.per_device_train_batch_size
        seen *= args.gradient_accumulation_steps * args.world_size
        run = RunFolder(args.output_dir)
        run.write_eval_results(
            results, split=split, num_images=num_images, train_steps=trainer.state.global_step, train_images=seen,
            **train_acc,
        )  # fmt: skip
        run.write_per_class(results, info)
        print(format_table(results, title=f"Evaluation on {split} ({num_images} images)"))
        if train_acc:
            print("training images (no augmentation): " + " ".join(f"{k} {100 * v:.2f}" for k, v in train_acc.items()))
    return results


def _seen_images(config: TrainConfig, data: TrainData, parts: ModelParts):
    """The target training images without augmentation, as the masked model sees them."""
    from .data import MergedImageDataset
    from .pixels import CachedImageDataset

    target, num_targets = data.target["train"], data.merged.space.num_targets
    if parts.batch_augment is not None:  # the tensor pipeline's cache, resized and normalised (no augmentation)
        return CachedImageDataset(target, None, num_targets, parts.size, config.data.pixel_cache_dir)
    return MergedImageDataset(target, None, num_targets, parts.eval_transform)


def publish(config: TrainConfig, trainer, results: dict | None) -> None:
    """The model card, and the push of the masked model (and of the unmasked one to a revision, when asked)."""
    from .hub import push_model, write_model_card

    args = config.training
    unmasked_revision = args.push_unmasked_revision if config.push_to_hub else None
    if unmasked_revision and not args.save_unmasked:  # every process takes part in saving
        trainer.save_model(os.path.join(args.output_dir, "unmasked"))
    if trainer.is_world_process_zero():
        write_model_card(args.output_dir, config.model, config.data, args, results)
        if config.push_to_hub:
            push_model(
                args.output_dir,
                args.hub_model_id,
                args.hub_token,
                private=args.hub_private_repo,
                unmasked_revision=unmasked_revision,
            )
        print(f"Masked target-only model saved to {args.output_dir}")  # once, also under torchrun


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------
def run(config: TrainConfig) -> RunResult:
    """Train on target + neighbor classes, save (and push) the masked, target-only model, evaluate it.

    Example:
        >>> result = run(load_config(["--config", "recipes/demo/train.yaml", "--max_steps", "2"]))  # doctest: +SKIP
        >>> result.results["overall"], result.output_dir  # doctest: +SKIP

    Args:
        config: from :func:`load_config`.
    """
    prepare(config)
    data = build_data(config)
    parts = build_model(config, data)
    trainer = build_trainer(config, data, parts)
    train_metrics = train(config, trainer)
    info = mask_and_save(config, data, parts, trainer)
    results = evaluate(config, data, parts, trainer, info)
    publish(config, trainer, results)
    if trainer.is_world_process_zero():
        RunFolder(config.training.output_dir).finish_run()
    return RunResult(config.training.output_dir, results, train_metrics, trainer.state.global_step)
