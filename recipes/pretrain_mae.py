"""MAE pre-training of a ViT on the target images (optionally plus the auxiliary images): LiVT's first stage.

Usage:
    accelerate launch recipes/pretrain_mae.py --config recipes/tiny_imagenet_lt/scratch/pretrain_mae.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/pretrain_mae.py \
        --config recipes/imagenet_lt/scratch/pretrain_mae.yaml
    # a preempted run continues from its newest checkpoint-* with the same line plus:
    #   --resume_from_checkpoint last
Then fine-tune from the output folder:
    accelerate launch recipes/train.py --config recipes/tiny_imagenet_lt/scratch/train.yaml

Any key of the YAML can be overridden on the command line, e.g. `--num_train_epochs 1 --mask_ratio 0.6`.
The output folder holds the MAE (`config.json` with `model_type: vit_mae`), its image processor, `args.yaml` and
`reconstructions.png` (original | masked | reconstruction | reconstruction + visible patches, one image a row).
"""

import logging
import os
import sys

import torch
from transformers import set_seed

from neighbor_lt.augment import ImageTransform
from neighbor_lt.configs import ConfigError, DataArguments, no_pin_memory_on_cpu, parse_args, save_args, setup_logging
from neighbor_lt.data import load_aux_dataset, load_target_dataset
from neighbor_lt.mae import (
    MAEModelArguments,
    MAEPretrainer,
    MAETrainingArguments,
    ReconstructionCallback,
    UnlabeledImages,
    apply_base_learning_rate,
    build_mae_model,
    pretrain_transform,
    resolve_resume,
    save_reconstruction_grid,
)
from neighbor_lt.modeling import IMAGENET_MEAN, IMAGENET_STD, crop_processor

logger = logging.getLogger("pretrain_mae")


def main(argv=None):
    model_args, data_args, training_args = parse_args((MAEModelArguments, DataArguments, MAETrainingArguments), argv)
    training_args.remove_unused_columns = False  # the model takes pixel_values only; keep them
    no_pin_memory_on_cpu(training_args)

    ################
    # Seed & logging
    ################
    set_seed(training_args.seed)
    setup_logging(training_args)
    apply_base_learning_rate(training_args)
    logger.info("model %s | data %s | lr %.3g", model_args, data_args, training_args.learning_rate)

    ################
    # Data: target training images (labels unused), plus the auxiliary images when aux_dataset is set
    ################
    target = load_target_dataset(data_args)
    aux = load_aux_dataset(data_args.aux_dataset, data_args.aux_split) if data_args.aux_dataset else None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
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

    ################
    # Model
    ################
    model = build_mae_model(model_args)
    # what the fine-tuned classifier is evaluated with: shorter side to size / crop_pct, then a center crop
    processor = crop_processor(model_args.image_size, eval_tf.crop_pct, mean, std)

    ################
    # Trainer
    ################
    trainer = MAEPretrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=[ReconstructionCallback(sample_pixels, mean, std, seed=training_args.seed)],
    )

    ################
    # Train
    ################
    save_args(os.path.join(training_args.output_dir, "args.yaml"), model_args, data_args, training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    ################
    # Save: the MAE (recipes/train.py builds the classifier on its encoder) and a reconstruction grid
    ################
    trainer.save_model(training_args.output_dir)
    grid = None
    if trainer.is_world_process_zero():
        grid = os.path.join(training_args.output_dir, "reconstructions.png")
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_reconstruction_grid(model, sample_pixels, grid, mean, std, seed=training_args.seed)

    ################
    # Evaluate: masked-patch reconstruction loss on the evaluation split
    ################
    metrics = None
    if eval_dataset is not None and training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    ################
    # Push
    ################
    if training_args.push_to_hub and trainer.is_world_process_zero():
        trainer.push_to_hub(commit_message="MAE pre-training (neighbor-lt)")
    print(f"MAE saved to {training_args.output_dir}; reconstructions in {grid}")
    return {"train": train_result.metrics, "eval": metrics, "reconstructions": grid}


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"configuration error: {err}")
