"""Argument dataclasses and the YAML + command-line front-end shared by every recipe.

A recipe is configured by a YAML file passed as ``--config``; any key can be overridden on the command line
(``--learning_rate 1e-4``). Unknown keys are an error, not a warning, so a typo never silently falls back to a
default. The resolved arguments are written next to the outputs (``args.yaml``).

The reader, the key check and the writer are :mod:`neighbor_lt.config_schema`'s, the front-end the curation and
the ablation (configs of sections rather than flat dataclasses) go through entirely; its pieces are importable from
here too (:func:`read_yaml_mapping`, :func:`split_overrides`, :func:`parse_value`, :func:`write_yaml`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from .config_schema import (
    ConfigError,
    ConfigSchema,
    build,
    close_matches,
    plain,
    pop_config_path,
    read_yaml_mapping,
    write_yaml,
)
from .config_schema import parse_value as parse_value  # re-exported: the front-end's pieces, as configs named them
from .config_schema import split_overrides as split_overrides
from .extras import missing_tracker_message
from .losses import LOSSES
from .secrets import REDACTED, is_secret_name

logger = logging.getLogger(__name__)

#: Arguments that belong to one invocation, written as null in ``args.yaml`` (a rerun from it starts afresh).
NOT_CARRIED = ("resume_from_checkpoint",)

#: Section of ``args.yaml`` with facts of the run that are not arguments (see :func:`save_args`).
RUN_KEY = "run"


@dataclass
class ModelArguments:
    """Which backbone to fine-tune, or which architecture to build from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of a checkpoint (e.g. facebook/dinov2-base, openai/clip-vit-base-patch16, "
            "an MAE output folder). Leave empty to build `model_type` from a config (from scratch)."
        },
    )
    model_type: str = field(
        default="vit", metadata={"help": "Architecture built from scratch when model_name_or_path is empty."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config overrides for a scratch model or a checkpoint, e.g. "
            "'hidden_size=64,num_hidden_layers=4,image_size=32,patch_size=4', or a YAML mapping for list values, "
            "e.g. '{hidden_sizes: [32, 64, 128, 256], depths: [1, 1, 1, 1]}'."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input resolution; defaults to the checkpoint's image processor size."}
    )
    drop_path_rate: float = field(
        default=0.0,
        metadata={
            "help": "Stochastic depth: each block's residual branches are dropped per sample with a rate rising "
            "linearly to this value over the blocks (LiVT / MAE fine-tuning: 0.1). For an MAE checkpoint, and for "
            "models whose config has drop_path_rate (DINOv2, BEiT, Swin, ConvNeXt ...); 0 disables."
        },
    )
    global_pool: bool = field(
        default=False,
        metadata={
            "help": "MAE fine-tuning only: classify the mean of the patch tokens through a new layer norm (LiVT / "
            "MAE 'global_pool') instead of the [CLS] token."
        },
    )
    freeze_blocks: int = field(
        default=0,
        metadata={
            "help": "Train only from block N on: the embeddings / stem and blocks 0..N-1 (numbered as layer_decay "
            "numbers them) get no gradient, which also skips their backward pass (fine-tuning on a CPU). 0: train all."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from a checkpoint's repository to run. Off unless you trust it."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded checkpoints are stored."})
    model_revision: str = field(default="main", metadata={"help": "Checkpoint revision (branch, tag or commit)."})


@dataclass
class DataArguments:
    """The long-tailed target set, its evaluation split and the optional auxiliary (neighbor) set."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A `datasets` source: Hub id, a builder such as 'parquet' or 'imagefolder', or a local folder. "
            "Use with train_files / eval_files for local files."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_files: list[str] | None = field(default=None, metadata={"help": "Training data files (glob patterns)."})
    eval_files: list[str] | None = field(default=None, metadata={"help": "Evaluation data files (glob patterns)."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str = field(default="validation", metadata={"help": "Evaluation split name."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class labels."})
    lt_train_list: str | None = field(
        default=None,
        metadata={"help": "Long-tail split file ('relative/path.jpg label' per line, e.g. ImageNet_LT_train.txt)."},
    )
    lt_eval_list: str | None = field(default=None, metadata={"help": "Long-tail evaluation split file."})
    lt_image_root: str | None = field(default=None, metadata={"help": "Folder the split-file paths are relative to."})
    lt_class_names: str | None = field(
        default=None,
        metadata={
            "help": "Class names of the split-file labels, in label order: one name per line, 'name label' lines "
            "(Places365 categories_places365.txt), 'wnid name, ...' lines (ImageNet LOC_synset_mapping.txt) or a JSON "
            "list / categories.json (iNaturalist 2018). Without it the labels are named '0'..'C-1'."
        },
    )
    dataset_id: str | None = field(
        default=None,
        metadata={
            "help": "The target set's name on the model card and in its model-index: a Hub dataset id "
            "('me/my-lt-set', also listed under `datasets:`) or a plain name ('ImageNet-LT'). Default: dataset_name "
            "when it is a Hub id, else the data folder's name (never a local path)."
        },
    )
    many_threshold: int = field(
        default=100, metadata={"help": "Many-shot classes have more than this many training images (paper: 100)."}
    )
    few_threshold: int = field(
        default=20, metadata={"help": "Few-shot classes have fewer than this many training images (paper: 20)."}
    )
    num_classes: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many target classes."}
    )
    imbalance_factor: float | None = field(
        default=None,
        metadata={
            "help": "Make a balanced training set long-tailed with an exponential profile (CIFAR-LT protocol): "
            "n_max per class down to n_max / imbalance_factor; at least 1 (0 or empty: the set as it is)."
        },
    )
    lt_max_per_class: int | None = field(
        default=None, metadata={"help": "n_max of the long-tail profile; defaults to the largest class."}
    )
    lt_seed: int = field(default=0, metadata={"help": "Seed of the class subset and of the long-tail subsampling."})
    aux_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Auxiliary (neighbor) dataset: folder, Parquet file(s) or Hub id with image/label/neighbor_of."
        },
    )
    aux_split: str = field(default="train", metadata={"help": "Split of the auxiliary dataset."})
    neighbor_manifest: str | None = field(
        default=None,
        metadata={"help": "Neighbor manifest (JSON/Parquet) whose auxiliary neighbor_of lists define neighbor pairs."},
    )
    max_aux_per_class: int = field(
        default=50, metadata={"help": "Images drawn per auxiliary class each epoch (a fresh random subset)."}
    )
    crop_min_scale: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of the training random-resized crop."}
    )
    crop_pct: float | None = field(
        default=None,
        metadata={
            "help": "Evaluation resizes the shorter side to size / crop_pct, then center crops (timm's protocol). "
            "Empty: the checkpoint image processor's own ratio (DINOv2 224/256, CLIP 1.0), 0.875 for a model whose "
            "processor squashes the image (ViT, MAE) or a scratch model. The saved processor keeps it."
        },
    )
    heldout_eval_per_class: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate on a development split instead of the evaluation split: this many images per class "
            "from the training images the long-tail subsample (imbalance_factor) left out, seeded by lt_seed. "
            "Choose settings on it and keep the evaluation split for the final table."
        },
    )
    input_pipeline: str = field(
        default="pil",
        metadata={
            "help": "pil: decode and augment every image with PIL in DataLoader workers (any resolution). tensor: "
            "decode and resize every training image once into a uint8 cache on disk (reused by later runs), then "
            "crop / flip / RandAugment whole batches as tensors on the training device (fast on CPU and GPU)."
        },
    )
    pixel_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the tensor pipeline's uint8 cache; $NEIGHBOR_LT_CACHE/pixels or ~/.cache/..."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the target training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})

    def __post_init__(self):
        check_data_values(self)


@dataclass
class NeighborLTTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` plus the long-tail loss and augmentation settings."""

    loss: str = field(default="neighbor_silencing", metadata={"help": f"Loss, one of {', '.join(LOSSES)}."})
    lambda_s: float = field(
        default=0.1, metadata={"help": "Silencing factor between a target and its neighbors, in (0, 1] (1: none)."}
    )
    layer_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise learning-rate decay (0.75 in the paper); empty to disable."}
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (the paper uses 0.95)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    rand_augment: str | None = field(
        default=None, metadata={"help": "RandAugment spec 'rand-m9-mstd0.5' (magnitude 9, std 0.5); empty for none."}
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup alpha (0.8 in the paper); 0 disables."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (1.0 in the paper); 0 disables."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of applying Mixup or CutMix to a batch."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of CutMix when both are enabled."})
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Label smoothing (0.1 in LiVT): 1 - e + e / C on the label, e / C on each of the C = targets + "
            "auxiliary classes, before Mixup / CutMix mixes two targets; works with every loss (README: Label "
            "smoothing). 0 disables."
        },
    )
    random_erasing: float = field(
        default=0.0,
        metadata={
            "help": "Probability of replacing one random rectangle of a training image with per-pixel normal noise, "
            "after normalisation (timm's RandomErasing, mode pixel; 0.25 in LiVT). Both input pipelines. 0 disables."
        },
    )
    report_train_accuracy: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate the masked model on the target training images (no augmentation) and record "
            "train_overall ... in eval_results.json: train far above validation means data, not steps, is the limit."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace a finished run in output_dir (its model, card and results are removed when training "
            "starts). Without it, a finished run's folder is refused unless resume_from_checkpoint continues it."
        },
    )
    save_unmasked: bool = field(
        default=False, metadata={"help": "Also save the unmasked checkpoint (all rows) to output_dir/unmasked."}
    )
    push_unmasked_revision: str | None = field(
        default=None, metadata={"help": "Also push the unmasked checkpoint to this revision of hub_model_id."}
    )
    model_license: str = field(
        default="other",
        metadata={"help": "License of the model card; the training data's terms usually decide it (e.g. 'other')."},
    )
    model_license_name: str | None = field(
        default=None, metadata={"help": "With model_license 'other': a short id of the terms, e.g. 'imagenet-terms'."}
    )
    model_license_link: str | None = field(
        default=None, metadata={"help": "With model_license 'other': a URL of the terms the model is under."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_training_values(self)


def _check_range(owner, name: str, low: float, high: float | None = None, low_open: bool = False) -> None:
    value = getattr(owner, name)
    if value is None:
        return
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        if high is None and low_open:
            bound = f"> {low:g}"
        raise ConfigError(f"{name} must be {'in ' if high is not None else ''}{bound}, got {value!r}")


def check_data_values(args: DataArguments) -> None:
    """The value rules of the data arguments, for the train recipe and curation's ``target`` section alike: checked
    when the arguments are built, before any data loads.

    Raises:
        ConfigError: one line naming the key, the rule and the value.
    """
    if args.imbalance_factor not in (None, 0) and args.imbalance_factor < 1:
        raise ConfigError(
            f"imbalance_factor must be at least 1 (the ratio of the largest to the smallest class; 0 or empty keeps "
            f"the set as it is), got {args.imbalance_factor!r}"
        )
    for name in ("many_threshold", "few_threshold", "max_aux_per_class"):
        _check_range(args, name, 0)
    if args.few_threshold > args.many_threshold + 1:
        raise ConfigError(
            f"few_threshold ({args.few_threshold}) must not exceed many_threshold ({args.many_threshold}) + 1: Few "
            "is fewer than few_threshold images, Many more than many_threshold"
        )
    for name in ("num_classes", "heldout_eval_per_class", "max_train_samples", "max_eval_samples", "lt_max_per_class"):
        _check_range(args, name, 1)
    _check_range(args, "crop_min_scale", 0, 1, low_open=True)
    _check_range(args, "crop_pct", 0, 1, low_open=True)


def check_training_values(args) -> None:
    """The value rules of the long-tail training arguments (loss, ``lambda_s``, augmentation probabilities),
    checked when the arguments are built, before any data or model loads."""
    if args.loss not in LOSSES:
        raise ConfigError(f"unknown loss {args.loss!r}; choose from {', '.join(LOSSES)}")
    _check_range(args, "lambda_s", 0, 1, low_open=True)
    for name in ("mixup_prob", "mixup_switch_prob", "label_smoothing", "random_erasing"):
        _check_range(args, name, 0, 1)
    for name in ("mixup_alpha", "cutmix_alpha"):
        _check_range(args, name, 0)


def _known_fields(dataclass_types) -> set[str]:
    return {f.name for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}


#: The ways to name the target set; naming one on the command line replaces another one set in the YAML file.
DATA_SOURCES = {
    "dataset_name": ("dataset_name", "dataset_config_name"),
    "train_files": ("train_files", "eval_files"),
    "lt_train_list": ("lt_train_list", "lt_eval_list", "lt_image_root", "lt_class_names"),
}


def _command_line_keys(args: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}


def _drop_replaced_source(values: dict, cli_keys: set[str], config_path: str) -> dict:
    """YAML values without the keys of a data source that the command line replaces with another one.

    ``--dataset_name my/folder`` over a YAML file with ``train_files`` would otherwise load the YAML's files
    relative to ``my/folder``; ``--lt_train_list`` would be ignored beside a YAML ``dataset_name``.
    """
    chosen = [selector for selector in DATA_SOURCES if selector in cli_keys]
    if not chosen:
        return values
    dropped = [
        key
        for selector, keys in DATA_SOURCES.items()
        if selector not in chosen
        for key in keys
        if key in values and values[key] not in (None, "", []) and key not in cli_keys
    ]
    if dropped:
        logger.info(
            "--%s on the command line replaces the data source of %s: ignoring its %s",
            " / --".join(chosen), config_path, ", ".join(dropped),
        )  # fmt: skip
    return {k: v for k, v in values.items() if k not in dropped}


#: Set (to anything but 0 / empty) to show the traceback behind a configuration error, like ``--debug``.
DEBUG_ENV = "NEIGHBOR_LT_DEBUG"


def pop_debug(args: list[str]) -> bool:
    """Remove ``--debug`` from ``args`` (in place); True when it was there or ``NEIGHBOR_LT_DEBUG`` is set."""
    flag = "--debug" in args
    while "--debug" in args:
        args.remove("--debug")
    return debug_requested(flag)


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given (``flag``) or ``NEIGHBOR_LT_DEBUG`` set."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _several_processes_without_gpu() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    import torch

    return not torch.cuda.is_available()


def flat_schema(dataclass_types) -> ConfigSchema:
    """The train recipe's file for the front-end: every field of ``dataclass_types`` is a top-level key (no sections;
    ``HfArgumentParser`` types the values)."""
    keys = {f.name: f.type for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}
    return ConfigSchema("training", keys, usage="--KEY VALUE")


def _one_line_error(message: str):
    raise ConfigError(message)


def parse_args(dataclass_types, args: list[str] | None = None, defaults: dict | None = None):
    """Parse dataclasses from an optional ``--config`` YAML file, overridden by command-line flags.

    Example:
        >>> model_args, data_args, training_args = parse_args(
        ...     (ModelArguments, DataArguments, NeighborLTTrainingArguments), ["--config", "recipes/demo/train.yaml"])

    Args:
        dataclass_types: the argument dataclasses, in the order they are returned.
        args: command-line arguments; ``sys.argv[1:]`` when None.
        defaults: values under the YAML file's (e.g. the data keys of a run's own ``args.yaml``), checked as its.

    Raises:
        ConfigError: on an unknown key in the YAML file or on the command line, or a ``report_to`` tracker that is
            not installed.
    """
    args = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)  # a prefix of a key is an unknown key
    parser.error = _one_line_error  # a bad value is one line, not the whole usage
    config_path = pop_config_path(args)
    if config_path is not None or defaults:
        values = {**(defaults or {}), **(read_yaml_mapping(config_path) if config_path is not None else {})}
        config_path = config_path or "the given defaults"
        values.pop(RUN_KEY, None)  # facts recorded by save_args (process count ...), not arguments
        # every key checked; a saved args.yaml's redacted secret is left unset (the command line or environment)
        values = flat_schema(dataclass_types).load(config_path, values=values)
        # YAML 1.1 reads `1e-4` as a string: convert with the same type argparse would use on the command line
        for action in parser._actions:
            if action.dest in values and isinstance(values[action.dest], str) and action.type in (int, float):
                values[action.dest] = action.type(values[action.dest])
        values = _drop_replaced_source(values, _command_line_keys(args), config_path)
        parser.set_defaults(**values)
    namespaces, remaining = parser.parse_known_args(args)
    if remaining:
        hints = "".join(close_matches(a[2:].split("=")[0], _known_fields(dataclass_types)) for a in remaining[:1])
        raise ConfigError(f"unknown command-line argument(s): {' '.join(remaining)}{hints}")
    if getattr(namespaces, "use_cpu", True) is False and _several_processes_without_gpu():
        # torchrun on CPU: without use_cpu, transformers runs N independent copies of the whole training (each
        # process thinks it is alone); with it, the gloo process group shares every epoch between them.
        namespaces.use_cpu = True
        logger.info("%s processes and no GPU: use_cpu set, so they share the training", os.environ["WORLD_SIZE"])
    outputs = []
    for dc in dataclass_types:
        keys = {f.name for f in dataclasses.fields(dc) if f.init}
        outputs.append(dc(**{k: v for k, v in vars(namespaces).items() if k in keys}))
        if missing := missing_tracker_message(getattr(outputs[-1], "report_to", None)):
            raise ConfigError(missing)  # now, not when the Trainer starts after the data has loaded
    return tuple(outputs)


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """``resume_from_checkpoint`` as a path: ``"last"`` / ``"true"`` mean the newest ``checkpoint-*`` in output_dir
    (the Trainer's own convention), for the training and the MAE pre-training recipes alike.

    A missing checkpoint with ``"last"`` starts from scratch (so one command line serves a first run and every
    restart of a preempted job); a missing explicit path is an error.

    Example:
        >>> resolve_resume("last", "outputs/empty-or-missing") is None
        True
    """
    if value in (None, False, "", "false", "False"):
        return None
    if value is True or str(value).lower() in ("last", "true"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        logger.info("resuming from %s", last or "nothing (no checkpoint yet)")
        return last
    if not os.path.isdir(value):
        raise ConfigError(
            f"resume_from_checkpoint: no checkpoint folder at {value} (pass a checkpoint-N folder, or 'last' for the "
            "newest one in output_dir)"
        )
    return str(value)


def setup_logging(training_args) -> None:
    """The recipes' logging: INFO on the main process (``training_args.should_log``), warnings from HF libraries."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    for lib in (datasets, transformers):
        lib.utils.logging.set_verbosity_warning()


def no_pin_memory_on_cpu(training_args) -> None:
    """Turn ``dataloader_pin_memory`` off on a CPU run: pinning needs an accelerator, and without one torch only
    warns (once per data loader). The recipes call this after parsing their arguments."""
    if training_args.dataloader_pin_memory and training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False


def save_args(path: str, *arg_objects, extra: dict | None = None) -> None:
    """Write the resolved arguments as one YAML mapping (what timm's ``args.yaml`` does).

    Secrets (keys named like ``hub_token``, by :func:`neighbor_lt.secrets.is_secret_name`) are written as
    ``<redacted>``; everything else is written as resolved, so ``--config args.yaml`` reruns the same configuration.
    ``resume_from_checkpoint`` is written as null (:data:`NOT_CARRIED`): a rerun is a new run.
    ``extra`` holds facts of the run that are not arguments (number of processes, global batch size); they are
    written under ``run:`` and ignored when the file is read back as a config.
    """
    resolved: dict[str, Any] = {}
    for obj in arg_objects:
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = plain(getattr(obj, f.name))
            if f.name in NOT_CARRIED:
                value = None  # a rerun from args.yaml is a fresh run, not a resume of this run's checkpoint
            if value not in (None, "") and is_secret_name(f.name):
                value = REDACTED  # never write a credential next to the outputs; parse_args reads it back as unset
            resolved[f.name] = value
    if extra:
        resolved[RUN_KEY] = dict(extra)
    write_yaml(path, resolved, sort_keys=True)


def from_dict(dataclass_type, values: dict | None, where: str = "config"):
    """Build ``dataclass_type`` from a mapping, failing on unknown keys with a message naming ``where`` (the
    front-end's :func:`neighbor_lt.config_schema.build`).

    Example:
        >>> from_dict(DataArguments, {"max_aux_per_class": 20}, where="train.yaml").max_aux_per_class
        20
    """
    return build(dataclass_type, values, where)
