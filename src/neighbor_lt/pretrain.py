"""MAE pre-training run (LiVT protocol): the orchestration behind ``recipes/pretrain_mae.py``.

The model pieces (the MAE, its Trainer, the reconstruction grid, the classifier built on its encoder) live in
:mod:`neighbor_lt.mae`; this module wires data, model and Trainer, so ``mae`` and ``modeling`` need not import
each other.
"""

from __future__ import annotations

import logging
import os

import torch

from .augment import ImageTransform
from .configs import resolve_resume
from .mae import (
    MAEModelArguments,
    MAEPretrainer,
    MAETrainingArguments,
    ReconstructionCallback,
    UnlabeledImages,
    apply_base_learning_rate,
    build_mae_model,
    pretrain_transform,
    save_reconstruction_grid,
)

logger = logging.getLogger(__name__)


def _pretraining_data(model_args: MAEModelArguments, data_args, mean, std):
    """(training images, evaluation images or None, fixed sample pixels for the reconstruction grids, the
    evaluation transform)."""
    from .data import load_aux_dataset, load_target_dataset

    target = load_target_dataset(data_args)
    aux = load_aux_dataset(data_args.aux_dataset, data_args.aux_split) if data_args.aux_dataset else None
    train_dataset = UnlabeledImages(
        [target["train"], aux], pretrain_transform(model_args.image_size, mean, std, data_args.crop_min_scale)
    )
    eval_tf = ImageTransform(model_args.image_size, mean, std, train=False, crop_pct=data_args.crop_pct)
    eval_dataset = UnlabeledImages([target["validation"]], eval_tf) if "validation" in target else None
    # Fixed images (validation if any) for the reconstruction grids, so successive grids are comparable.
    samples = UnlabeledImages([target["validation"] if eval_dataset else target["train"]], eval_tf)
    count = min(model_args.num_reconstruction_images, len(samples))
    sample_pixels = torch.stack([samples[i]["pixel_values"] for i in range(count)])
    logger.info(
        "pre-training on %d images (%d target, %d auxiliary)",
        len(train_dataset), len(target["train"]), len(aux) if aux is not None else 0,
    )  # fmt: skip
    return train_dataset, eval_dataset, sample_pixels, eval_tf


def pretrain(argv: list[str] | None = None) -> dict:
    """MAE pre-training of a ViT on the target images (plus the auxiliary images when ``aux_dataset`` is set):
    train, save the MAE and a reconstruction grid, evaluate the reconstruction loss, push when asked.
    ``recipes/pretrain_mae.py`` runs this.

    Example:
        >>> pretrain(["--config", "recipes/tiny_imagenet_lt/scratch/pretrain_mae.yaml", "--max_steps", "2"])  # doctest: +SKIP

    Args:
        argv: ``--config YAML`` and ``--KEY VALUE`` overrides of its keys.

    Returns:
        ``{"train": training metrics, "eval": evaluation metrics or None, "reconstructions": the grid's path}``.
    """
    from transformers import set_seed

    from .configs import DataArguments, no_pin_memory_on_cpu, parse_args, save_args, setup_logging
    from .modeling import IMAGENET_MEAN, IMAGENET_STD, crop_processor

    model_args, data_args, training_args = parse_args((MAEModelArguments, DataArguments, MAETrainingArguments), argv)
    training_args.remove_unused_columns = False  # the model takes pixel_values only; keep them
    no_pin_memory_on_cpu(training_args)
    set_seed(training_args.seed)
    setup_logging(training_args)
    apply_base_learning_rate(training_args)
    logger.info("model %s | data %s | lr %.3g", model_args, data_args, training_args.learning_rate)

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    train_dataset, eval_dataset, sample_pixels, eval_tf = _pretraining_data(model_args, data_args, mean, std)
    model = build_mae_model(model_args)
    # what the fine-tuned classifier is evaluated with: shorter side to size / crop_pct, then a center crop
    processor = crop_processor(model_args.image_size, eval_tf.crop_pct, mean, std)
    trainer = MAEPretrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=[ReconstructionCallback(sample_pixels, mean, std, seed=training_args.seed)],
    )

    save_args(os.path.join(training_args.output_dir, "args.yaml"), model_args, data_args, training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # the MAE (train.run builds the classifier on its encoder) and a reconstruction grid
    trainer.save_model(training_args.output_dir)
    grid = None
    if trainer.is_world_process_zero():
        grid = os.path.join(training_args.output_dir, "reconstructions.png")
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_reconstruction_grid(model, sample_pixels, grid, mean, std, seed=training_args.seed)

    metrics = None  # masked-patch reconstruction loss on the evaluation split
    if eval_dataset is not None and training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.push_to_hub and trainer.is_world_process_zero():
        trainer.push_to_hub(commit_message="MAE pre-training (neighbor-lt)")
    logger.info("MAE saved to %s; reconstructions in %s", training_args.output_dir, grid)
    return {"train": train_result.metrics, "eval": metrics, "reconstructions": grid}
