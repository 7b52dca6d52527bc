"""The ``neighbor-lt`` command: the recipes of the repository, for a pip install with no checkout.

Usage:
    neighbor-lt train --config my_train.yaml [--KEY VALUE ...]        # = recipes/train.py
    accelerate launch -m neighbor_lt.cli train --config my_train.yaml  # several processes / GPUs
    neighbor-lt curate --config my_curate.yaml [--stages ...]          # = recipes/curate.py
    neighbor-lt analyze outputs/run [outputs/baseline ...]            # = recipes/analyze.py
    neighbor-lt ablate --config my_ablate.yaml                         # = recipes/ablate.py (needs the checkout)

``recipes/train.py`` and ``recipes/analyze.py`` are thin wrappers of :func:`train` and :func:`analyze`. Without
``--config``, ``train`` runs the built-in demo, ``recipes/demo/train.yaml``, which lives in the repository (its data
paths are relative to the checkout's root): from a pip install, pass your own ``--config``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

from neighbor_lt.configs import ConfigError
from neighbor_lt.extras import missing_extra_message

DEMO_CONFIG = os.path.join("recipes", "demo", "train.yaml")


def _checkout_recipe(name: str) -> Path | None:
    """``recipes/<name>`` of a repository checkout: the current folder's, else the one an editable install runs from."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "recipes" / name).is_file():
            return root / "recipes" / name
    return None


def _load_checkout_recipe(name: str):
    path = _checkout_recipe(name)
    if path is None:
        raise ConfigError(f"recipes/{name} not found: run this from a checkout of the neighbor-lt repository")
    spec = importlib.util.spec_from_file_location(f"neighbor_lt_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------------
def train(argv=None, default_config: str | None = None):
    """Train on target + neighbor classes, save (and push) the masked, target-only model; the results on the eval
    split, or None without one. ``recipes/train.py`` and ``neighbor-lt train`` run this.

    Example:
        >>> train(["--config", "recipes/demo/train.yaml", "--max_steps", "2"])["overall"]  # doctest: +SKIP

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None): ``--config YAML`` and overrides of its keys.
        default_config: the YAML used without ``--config`` (default: the built-in demo, from a repository checkout).
    """
    import evaluate
    import numpy as np
    from transformers import set_seed

    import neighbor_lt
    from neighbor_lt.augment import ProcessorTransform
    from neighbor_lt.configs import (
        DataArguments,
        ModelArguments,
        NeighborLTTrainingArguments,
        no_pin_memory_on_cpu,
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

    logger = logging.getLogger("train")  # the recipe's name in the log lines
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        default_config = default_config or (DEMO_CONFIG if os.path.isfile(DEMO_CONFIG) else None)
        if default_config:
            argv = ["--config", default_config, *argv]
        elif not {"-h", "--help"} & set(argv):
            raise ConfigError(
                f"no --config given and no {DEMO_CONFIG} here: pass your training YAML with --config "
                "(the built-in demo ships with the repository; run it from the checkout's root)"
            )
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments), argv
    )
    training_args.remove_unused_columns = False  # the collator needs pixel_values and labels only
    # The Trainer itself would push unmasked checkpoints; this recipe pushes the masked model once, at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    no_pin_memory_on_cpu(training_args)

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


# --------------------------------------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------------------------------------
ANALYZE_HELP = """Plots of trained runs, written as PNG files into the first run's folder (its model card shows them).

1. per_class_accuracy.png: per-class accuracy against training-image count (log scale), Many / Medium / Few colors,
   one marker per run.
2. feature_map.png: 2-D UMAP / PCA map of features of a head class, a confusable tail class and their neighbor
   classes, before and after training (first run only).
3. group_accuracy.png: Overall / Many / Medium / Few bars for every run, each labelled with its training budget.

Run it from the folder training ran in, so the data paths of args.yaml resolve.
"""


def _analyze_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neighbor-lt analyze", description=ANALYZE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="output_dir folders of recipes/train.py; the first is analyzed")
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: folder name and loss)")
    parser.add_argument("--output_dir", help="where the PNG files go (default: the first run's folder)")
    parser.add_argument("--head_class", help="head class of the feature map (default: most images, has neighbors)")
    parser.add_argument("--tail_class", help="tail class of the feature map (default: most confusable Few class)")
    parser.add_argument("--before", help="checkpoint for the 'before' features (default: fresh model, same config)")
    parser.add_argument("--max_images_per_class", type=int, default=40, help="images per class in the feature map")
    parser.add_argument("--projection", choices=("auto", "umap", "pca"), default="auto", help="2-D projection")
    parser.add_argument("--no_feature_map", action="store_true", help="skip the feature map (no data or model pass)")
    parser.add_argument("--no_card", action="store_true", help="do not re-render the first run's README.md")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def analyze(argv=None) -> list[str]:
    """Write the plots of trained runs (and re-render the first run's card); the paths written.
    ``recipes/analyze.py`` and ``neighbor-lt analyze`` run this.

    Example:
        >>> analyze(["outputs/demo", "outputs/demo-baseline", "--projection", "pca"])  # doctest: +SKIP

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None); ``--help`` lists them.
    """
    parser = _analyze_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one name per run ({len(args.runs)})")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from neighbor_lt.hub import write_model_card
    from neighbor_lt.plots import feature_map_for_run, load_run, plot_group_accuracy, plot_per_class_accuracy

    ################
    # Runs
    ################
    runs = [load_run(folder, label) for folder, label in zip(args.runs, args.labels or [None] * len(args.runs))]
    output_dir = args.output_dir or runs[0].folder
    os.makedirs(output_dir, exist_ok=True)

    ################
    # Plots
    ################
    written = [
        plot_per_class_accuracy(runs, os.path.join(output_dir, "per_class_accuracy.png")),
        plot_group_accuracy(runs, os.path.join(output_dir, "group_accuracy.png")),
    ]
    if not args.no_feature_map:
        written.append(
            feature_map_for_run(
                runs[0],
                os.path.join(output_dir, "feature_map.png"),
                head=args.head_class,
                tail=args.tail_class,
                before=args.before,
                max_images_per_class=args.max_images_per_class,
                method=args.projection,
                seed=args.seed,
            )
        )

    ################
    # Card
    ################
    if not args.no_card and os.path.abspath(output_dir) == os.path.abspath(runs[0].folder):
        write_model_card(runs[0].folder)  # now shows the plots
    for path in written:
        print(f"wrote {path}")
    return written


# --------------------------------------------------------------------------------------------------------------------
# curate, ablate
# --------------------------------------------------------------------------------------------------------------------
def curate(argv=None) -> int:
    """The curation recipe (neighbors -> retrieve -> filter -> build): :func:`neighbor_lt.curate.main`; its exit
    status."""
    from neighbor_lt.curate import main as curate_main  # imported on use: --help stays light

    return curate_main(argv)


def ablate(argv=None) -> int:
    """``recipes/ablate.py`` of a repository checkout (it runs recipes/curate.py and recipes/train.py by path)."""
    _load_checkout_recipe("ablate.py").main(argv)
    return 0


# --------------------------------------------------------------------------------------------------------------------
# neighbor-lt
# --------------------------------------------------------------------------------------------------------------------
COMMANDS = {
    "train": (train, "train on target + neighbor classes, save the masked target-only model (recipes/train.py)"),
    "curate": (curate, "find neighbor classes and build the auxiliary dataset (recipes/curate.py)"),
    "analyze": (analyze, "plots of trained runs, linked from the model card (recipes/analyze.py)"),
    "ablate": (ablate, "do neighbors help on your data? every variant x seed, with a report (recipes/ablate.py)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: neighbor-lt COMMAND [ARGS ...]    (neighbor-lt COMMAND --help for its arguments)\n\ncommands:\n"
        + "\n".join(lines)
    )


def main(argv=None) -> int:
    """The ``neighbor-lt`` console script: ``neighbor-lt COMMAND [ARGS ...]``; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"neighbor-lt: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        status = COMMANDS[name][0](rest)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:  # an optional module of an extra that is not installed
        message = missing_extra_message(err)
        if message is None:
            raise
        print(f"neighbor-lt {name}: {message}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
