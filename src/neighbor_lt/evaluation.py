"""Evaluate a saved model again: Overall / Many / Medium / Few accuracy on any split, at any time after training.

The groups come from the model's own training counts (``neighbor_lt.json`` beside it), never from the data being
evaluated, so a test split, a development split or another dataset with the same classes are all grouped as the
training run grouped its own evaluation. Images go through the model's saved image processor (what
``pipeline(...)`` gives it). Results are written beside the model as ``eval_<split>.json`` and
``per_class_accuracy_<split>.csv`` (:class:`~neighbor_lt.run_folder.RunFolder`); the training run's
``eval_results.json`` and the model card are left alone unless ``update_card`` is set.

Usage:
    neighbor-lt evaluate --model outputs/demo                          # the run's own data (its args.yaml)
    neighbor-lt evaluate --model outputs/demo --config data.yaml --split test
    neighbor-lt evaluate --model outputs/demo --dataset_name parquet --eval_files 'test-*.parquet'
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .configs import ConfigError, DataArguments, ModelArguments, NeighborLTTrainingArguments, parse_args
from .run_folder import ARGS_FILE, RunFolder, RunInfo

logger = logging.getLogger(__name__)


@dataclass
class EvaluateArguments:
    """What to evaluate and how; the data comes from the ``DataArguments`` keys of ``--config`` or the command line."""

    model: str | None = field(
        default=None, metadata={"help": "Folder of a trained model (output_dir of train), with its neighbor_lt.json."}
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "Split to evaluate (default: eval_split of the data). 'train': the long-tailed training images; "
            "another name selects that split of a dataset_name source, or names what eval_files / lt_eval_list hold. "
            "Results go to eval_<split>.json."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes that decode the images."})
    device: str | None = field(default=None, metadata={"help": "torch device; default: cuda when available."})
    update_card: bool = field(
        default=False,
        metadata={
            "help": "Also make these the run's results: write eval_results.json / per_class_accuracy.csv and "
            "re-render the model card (README.md) from them."
        },
    )


def _data_defaults(values: dict, where: str) -> dict:
    """The data (and evaluate) keys of a config mapping; keys of the model / training arguments are dropped (a train
    YAML or a run's ``args.yaml`` work as the data config), anything else is an error naming ``where``."""
    from .configs import RUN_KEY

    kept = {f.name for dc in (DataArguments, EvaluateArguments) for f in dataclasses.fields(dc)}
    skipped = {f.name for dc in (ModelArguments, NeighborLTTrainingArguments) for f in dataclasses.fields(dc)}
    unknown = sorted(set(values) - kept - skipped - {RUN_KEY})
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    return {k: v for k, v in values.items() if k in kept}


def parse_evaluate_args(argv: list[str]) -> tuple[EvaluateArguments, DataArguments]:
    """``--model DIR`` plus the data: ``--config YAML`` (a data YAML, a train YAML or an ``args.yaml``: its data keys)
    and ``--KEY VALUE`` overrides; with neither, the data keys of the model's own ``args.yaml``.

    Example:
        >>> args, data = parse_evaluate_args(["--model", "outputs/demo", "--split", "validation"])  # doctest: +SKIP
    """
    from .configs import pop_config_path, read_yaml_mapping

    argv = list(argv)
    config_path = pop_config_path(argv)
    defaults = _data_defaults(read_yaml_mapping(config_path), config_path) if config_path is not None else {}
    probe, data = parse_args((EvaluateArguments, DataArguments), argv, defaults=defaults)
    if not probe.model:
        raise ConfigError("--model is required: the folder of a trained model (the output_dir of neighbor-lt train)")
    if config_path is None:
        run = RunFolder(probe.model)
        if run.has(ARGS_FILE):
            defaults = _data_defaults(run.read_args(), run.file(ARGS_FILE))
        elif not (data.dataset_name or data.train_files or data.lt_train_list):
            raise ConfigError(
                f"{probe.model} has no args.yaml to take the data settings from: pass --config data.yaml or the "
                "data keys (e.g. --dataset_name parquet --train_files ... --eval_files ...)"
            )
    return parse_args((EvaluateArguments, DataArguments), argv, defaults=defaults)


def _label_map(data_names: list[str], info: RunInfo, model_names: list[str]) -> np.ndarray:
    """Index of each data class in the model's (target) label space; a class the model does not know is an error."""
    if info.target_classes and list(info.target_classes) != list(model_names):
        raise ConfigError(
            "neighbor_lt.json and the model's id2label name different target classes; is the folder's model the "
            "one trained with that file?"
        )
    index = {name: i for i, name in enumerate(model_names)}
    unknown = [name for name in data_names if name not in index]
    if unknown:
        raise ConfigError(
            f"{len(unknown)} class(es) of the evaluation data are not classes of the model, e.g. {unknown[:3]}; "
            "evaluate on data with the model's classes (the data keys of its args.yaml select them)"
        )
    return np.asarray([index[name] for name in data_names], dtype=np.int64)


@torch.no_grad()
def predict(model, dataset, batch_size: int = 64, num_workers: int = 0, device: str | None = None) -> np.ndarray:
    """Argmax prediction of ``model`` for every row of ``dataset`` (``{"pixel_values", "labels"}`` rows), in order."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out = []
    for i, batch in enumerate(loader):
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        out.append(logits.argmax(-1).cpu().numpy())
        if i % 50 == 0:
            logger.info("predicted %d of %d images", min((i + 1) * batch_size, len(dataset)), len(dataset))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_saved_model(args: EvaluateArguments, data_args: DataArguments) -> dict:
    """Evaluate the model in ``args.model`` on a split of ``data_args``; the :func:`long_tail_accuracy` result plus
    ``split`` and ``num_images``.

    Example:
        >>> results = evaluate_saved_model(EvaluateArguments(model="outputs/demo"), DataArguments(...))  # doctest: +SKIP
        >>> results["few"]  # doctest: +SKIP

    Args:
        args: the model folder, split, batch size, device and whether to update the card.
        data_args: the data to load (:func:`~neighbor_lt.data.load_target_dataset`); its groups are not used.

    Raises:
        ConfigError: no ``neighbor_lt.json`` beside the model, a missing split, or evaluation classes the model
            does not have.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .augment import ProcessorTransform
    from .data import MergedImageDataset, load_target_dataset
    from .metrics import long_tail_accuracy

    run = RunFolder(args.model)
    info = run.read_info()
    if info is None:
        raise ConfigError(
            f"{args.model} has no neighbor_lt.json: the Many / Medium / Few groups come from the model's training "
            "counts, which that file records (a folder written by neighbor-lt train has it)"
        )
    split = args.split or data_args.eval_split
    if split != "train":
        data_args = dataclasses.replace(data_args, eval_split=split)
    target = load_target_dataset(data_args)
    key = "train" if split == "train" else "validation"
    if key not in target:
        raise ConfigError(f"no {split!r} split in the data: set eval_files / eval_split (or --split train)")
    dataset = target[key]
    model = AutoModelForImageClassification.from_pretrained(args.model, use_safetensors=True)
    model_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    remap = _label_map(dataset.features["label"].names, info, model_names)
    processor = AutoImageProcessor.from_pretrained(args.model)
    images = MergedImageDataset(dataset, None, len(model_names), ProcessorTransform(processor))
    references = remap[images.target_labels]
    logger.info("evaluating %s on %d %s images (%d classes)", args.model, len(images), split, len(set(references)))
    predictions = predict(model, images, args.batch_size, args.num_workers, args.device)
    results = long_tail_accuracy(
        predictions, references, info.target_train_counts, info.many_threshold, info.few_threshold
    )
    name = "development" if (data_args.heldout_eval_per_class and split != "train") else split
    for evaluation in (name, None) if args.update_card else (name,):
        run.write_eval_results(results, split=name, num_images=len(predictions), evaluation=evaluation)
        run.write_per_class(results, info, evaluation=evaluation)
    if args.update_card:
        from .hub import write_model_card

        write_model_card(args.model)
    results.update(split=name, num_images=len(predictions))
    return results
