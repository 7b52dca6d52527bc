"""Backbone loading (DINOv2 / CLIP vision / ViT from scratch / any HF image classifier), layer-wise lr decay and
auxiliary-row masking."""

from __future__ import annotations

import copy
import logging
import re

import torch
import yaml
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PoolFormerImageProcessorPil,
    PreTrainedModel,
)

from .augment import DEFAULT_CROP_PCT
from .configs import ConfigError, ModelArguments

logger = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _apply_overrides(config, overrides: str | dict | None):
    """``key=value,key=value`` (ints, floats, bools, strings) or a mapping / ``{...}`` YAML string (any values,
    e.g. ``{hidden_sizes: [32, 64, 128, 256], depths: [1, 1, 1, 1]}``)."""
    if not overrides:
        return config
    if isinstance(overrides, str) and overrides.lstrip().startswith("{"):
        try:
            overrides = yaml.safe_load(overrides)
        except yaml.YAMLError as err:
            raise ConfigError(f"config_overrides {overrides!r} is not a valid YAML mapping: {err}") from err
    if isinstance(overrides, dict):
        unknown = sorted(k for k in overrides if not hasattr(config, k))
        if unknown:
            raise ConfigError(f"config_overrides: {type(config).__name__} has no attribute(s) {unknown}")
        config.update(overrides)
        return config
    try:
        config.update_from_string(overrides)
    except ValueError as err:
        raise ConfigError(f"config_overrides {overrides!r}: {err}") from err
    return config


def load_model(
    args: ModelArguments, id2label: dict[int, str], label2id: dict[str, int] | None = None
) -> PreTrainedModel:
    """An image classifier with ``len(id2label)`` outputs, from a checkpoint or built from a config.

    Checkpoints load through ``AutoModelForImageClassification.from_pretrained`` with safetensors only and
    ``trust_remote_code`` off unless ``args.trust_remote_code``; the classifier head is replaced to fit the labels.

    Example:
        >>> model = load_model(ModelArguments("facebook/dinov2-base"), {0: "cat", 1: "dog"})

    Args:
        args: model arguments.
        id2label: the merged label space (targets then auxiliary classes).
        label2id: inverse of ``id2label``; derived when None.
    """
    label2id = label2id or {v: k for k, v in id2label.items()}
    common = {"num_labels": len(id2label), "id2label": dict(id2label), "label2id": dict(label2id)}
    if args.model_name_or_path:
        hub = {
            "cache_dir": args.cache_dir,
            "revision": args.model_revision,
            "trust_remote_code": args.trust_remote_code,
        }
        config = AutoConfig.from_pretrained(args.model_name_or_path, **common, **hub)
        _apply_overrides(config, args.config_overrides)
        if config.model_type == "vit_mae":
            from .mae import classifier_from_mae  # noqa: PLC0415  (the from-scratch path)

            return classifier_from_mae(args, config, common)
        _apply_regularisation(args, config)
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, config=config, ignore_mismatched_sizes=True, use_safetensors=True, **hub
        )
    else:
        config = AutoConfig.for_model(args.model_type, **common)
        if args.image_size and hasattr(config, "image_size"):
            config.image_size = args.image_size
        _apply_overrides(config, args.config_overrides)
        _apply_regularisation(args, config)
        model = AutoModelForImageClassification.from_config(config)
    if args.freeze_blocks:
        freeze_leading_blocks(model, args.freeze_blocks)
    return model


def freeze_leading_blocks(model: nn.Module, num_blocks: int) -> list[str]:
    """Turn off the gradient of the embeddings and of blocks ``0..num_blocks-1`` (layer ids ``<= num_blocks`` in
    :func:`layer_id_of`'s numbering); the later blocks, final norm and head keep training.

    Example:
        >>> frozen = freeze_leading_blocks(model, 12)  # an EfficientNet trains blocks 12..15 and its head

    Returns:
        the names of the frozen parameters.

    Raises:
        ConfigError: ``num_blocks`` outside ``1..number of blocks`` (a model whose parameter names show no blocks).
    """
    total = num_layers_of(model)
    if not 0 < num_blocks <= total:
        raise ConfigError(
            f"freeze_blocks must be in 1..{total} (the blocks of {type(model).__name__}), got {num_blocks}"
            if total
            else f"freeze_blocks: no numbered blocks in {type(model).__name__}'s parameter names; set it to 0"
        )
    frozen = []
    for name, param in model.named_parameters():
        if layer_id_of(name, total) <= num_blocks:
            param.requires_grad_(False)
            frozen.append(name)
    logger.info("freeze_blocks %d: %d parameter tensors frozen (embeddings and blocks 0..%d)", num_blocks,
                len(frozen), num_blocks - 1)  # fmt: skip
    return frozen


def _apply_regularisation(args: ModelArguments, config) -> None:
    """``drop_path_rate`` into a config that has one; a clear error where the model has no such option."""
    if args.global_pool:
        raise ConfigError(
            f"global_pool applies to the fine-tuning of an MAE checkpoint (model_type vit_mae), not to "
            f"{config.model_type!r}; leave it false"
        )
    if args.drop_path_rate:
        if not hasattr(config, "drop_path_rate"):
            raise ConfigError(
                f"drop_path_rate: transformers' {config.model_type!r} models have no stochastic depth; set it to 0, "
                "or use an MAE checkpoint or a model type that has it (dinov2, beit, swin, convnext ...)"
            )
        config.drop_path_rate = float(args.drop_path_rate)


def _size_value(size, key: str):
    """``size[key]`` of a processor's ``size`` / ``crop_size`` (a dict, a ``SizeDict`` or an int); None when unset."""
    if isinstance(size, int):
        return size
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _processor_size(processor) -> int:
    for attr in ("crop_size", "size"):
        size = getattr(processor, attr, None)
        for key in ("height", "shortest_edge", "width"):
            value = _size_value(size, key) if size is not None else None
            if value:
                return value
    raise ConfigError(f"cannot tell the input size of {type(processor).__name__}; set image_size")


def processor_crop_pct(processor) -> float | None:
    """The crop / resize ratio of a resize-shorter-side-then-center-crop processor (DINOv2: 224 / 256, CLIP: 1.0);
    None for a processor that resizes the whole image to a square (ViT, MAE: the image is squashed)."""
    if getattr(processor, "crop_pct", None):  # a processor that stores it (PoolFormer, ConvNeXt)
        return float(processor.crop_pct)
    if not getattr(processor, "do_center_crop", False) or getattr(processor, "crop_size", None) is None:
        return None
    size = getattr(processor, "size", None)
    short, crop = (
        _size_value(size, "shortest_edge") if size is not None else None,
        _size_value(processor.crop_size, "height"),
    )
    return crop / short if short and crop else None


def crop_processor(size: int, crop_pct: float = DEFAULT_CROP_PCT, mean=IMAGENET_MEAN, std=IMAGENET_STD, resample=3):
    """An image processor that resizes the shorter side to ``floor(size / crop_pct)``, then center crops ``size``:
    timm's evaluation transform (``transforms_factory.transforms_imagenet_eval``), stored with its ``crop_pct``.

    ``PoolFormerImageProcessor`` is the ``transformers`` processor that implements exactly this rule; it has no
    model-specific step, so a ViT saved with it loads in ``pipeline("image-classification")`` as usual.

    Example:
        >>> crop_processor(224).crop_pct, crop_processor(224)(images=image)["pixel_values"][0].shape  # doctest: +SKIP
        (0.875, (3, 224, 224))

    Args:
        size: output side.
        crop_pct: fraction of the resized shorter side that is kept.
        mean, std: normalisation.
        resample: PIL resampling filter (3 = bicubic).
    """
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return PoolFormerImageProcessorPil(
        do_resize=True,
        size={"height": int(size), "width": int(size)},
        crop_pct=float(crop_pct),
        do_center_crop=True,
        crop_size={"height": int(size), "width": int(size)},
        resample=resample,
        image_mean=list(mean),
        image_std=list(std),
    )


def load_image_processor(args: ModelArguments, model: PreTrainedModel, crop_pct: float | None = None):
    """The evaluation image processor: resize the shorter side to ``size / crop_pct``, then center crop ``size``.

    ``size`` is ``args.image_size``, else the checkpoint processor's, else the model config's ``image_size``.
    ``crop_pct`` is the argument when given, else the checkpoint processor's own ratio (DINOv2's 224 / 256, CLIP's
    224 / 224), else :data:`DEFAULT_CROP_PCT` (0.875, timm's): a checkpoint or scratch model whose processor squashes
    the whole image to a square (ViT, MAE) gets a :func:`crop_processor` with the same mean, std and filter. A
    checkpoint processor that already crops keeps its class and only changes sizes. Training keeps its
    random-resized crop; this processor is what evaluation and ``pipeline(...)`` on the saved model use.

    Example:
        >>> processor = load_image_processor(ModelArguments("facebook/dinov2-base", image_size=224), model)

    Args:
        args: model arguments.
        model: the model (its config's ``image_size`` for a scratch model).
        crop_pct: override of the checkpoint's crop ratio (``crop_pct`` in the data arguments).
    """
    processor = None
    if args.model_name_or_path:
        try:
            processor = AutoImageProcessor.from_pretrained(
                args.model_name_or_path, cache_dir=args.cache_dir, revision=args.model_revision
            )
        except (OSError, ValueError):
            processor = None
    if processor is None:
        size = args.image_size or getattr(model.config, "image_size", None)
        if size is None:
            raise ConfigError("set image_size: the model config has none")
        return crop_processor(int(size), crop_pct or DEFAULT_CROP_PCT)
    size = int(args.image_size or _processor_size(processor))
    own = processor_crop_pct(processor)
    pct = crop_pct or own or DEFAULT_CROP_PCT
    if own is None or getattr(processor, "crop_pct", None):
        _, mean, std = processor_settings(processor)
        return crop_processor(size, pct, mean, std, getattr(processor, "resample", 3))
    if args.image_size or crop_pct:
        processor.size = {"shortest_edge": int(size / pct)}  # floor, as timm and PoolFormer
        processor.crop_size = {"height": size, "width": size}
    return processor


def processor_settings(processor) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) of an image processor."""
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    return _processor_size(processor), mean, std


# --------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# --------------------------------------------------------------------------------------------------------------------

_LAYER_RE = re.compile(r"\.(?:layer|layers|blocks)\.(\d+)\.")
_EMBED_RE = re.compile(r"(embeddings|pre_layrnorm|cls_token|mask_token|pos_embed|patch_embed|register_tokens)")


def num_layers_of(model: nn.Module) -> int:
    """Number of transformer blocks (largest block index + 1) found in parameter names."""
    ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER_RE.search(n))]
    return max(ids) + 1 if ids else 0


def layer_id_of(name: str, num_layers: int) -> int:
    """0 for embeddings, ``i + 1`` for block ``i``, ``num_layers + 1`` for the final norm and the head."""
    match = _LAYER_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if _EMBED_RE.search(name):
        return 0
    return num_layers + 1


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or bool(_EMBED_RE.search(name.rsplit(".", 1)[-1]))


def layerwise_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with ``lr * layer_decay ** (num_layers + 1 - layer_id)`` (BEiT / MAE fine-tuning).

    Parameter names of ViT, DINOv2 (``encoder.layer.i``) and CLIP vision (``encoder.layers.i``) are recognised.
    Biases, norms, position embeddings and tokens get no weight decay.

    Example:
        >>> groups = layerwise_param_groups(model, lr=3.5e-5, weight_decay=0.05, layer_decay=0.75)
    """
    num_layers = num_layers_of(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id_of(name, num_layers)
        no_decay = _no_weight_decay(name, param)
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer)
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------------------------------------------------
# Masking the auxiliary classes
# --------------------------------------------------------------------------------------------------------------------


_HEAD_NAMES = ("classifier", "head", "fc", "score")


def find_classifier(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, Linear) of the classification head.

    The head is the model's ``classifier`` / ``head`` / ``fc`` / ``score`` Linear (or the last Linear inside it,
    e.g. ResNet's ``classifier = Sequential(Flatten, Linear)``) with ``num_labels`` outputs; otherwise the one
    Linear with ``num_labels`` outputs. A backbone layer that happens to have ``num_labels`` outputs is never taken.
    """
    num_labels = model.config.num_labels
    for attr in _HEAD_NAMES:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            return model, attr, module
        if isinstance(module, nn.Sequential):
            for i in reversed(range(len(module))):
                if isinstance(module[i], nn.Linear) and module[i].out_features == num_labels:
                    return module, str(i), module[i]
    found = [
        (parent, attr, child)
        for _, parent in model.named_modules()
        for attr, child in parent.named_children()
        if isinstance(child, nn.Linear) and child.out_features == num_labels
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the classification head of {type(model).__name__}: {len(found)} Linear layers have "
            f"{num_labels} outputs and none is named {' / '.join(_HEAD_NAMES)}"
        )
    return found[0]


def mask_auxiliary_classes(model: PreTrainedModel, num_target_classes: int) -> PreTrainedModel:
    """A copy of ``model`` whose classifier keeps only the target rows ``0..L-1`` and whose labels are the targets.

    The result is a plain ``transformers`` model: saved with ``save_pretrained`` it loads with
    ``pipeline("image-classification", model=folder)`` and predicts target classes only.

    Example:
        >>> masked = mask_auxiliary_classes(model, num_target_classes=20)
        >>> masked.save_pretrained("outputs/demo")

    Args:
        model: a classifier over targets then auxiliary classes.
        num_target_classes: ``L``.
    """
    total = model.config.num_labels
    if not 0 < num_target_classes <= total:
        raise ValueError(f"num_target_classes must be in 1..{total}, got {num_target_classes}")
    masked = copy.deepcopy(model)
    parent, attr, head = find_classifier(masked)
    new_head = nn.Linear(head.in_features, num_target_classes, bias=head.bias is not None)
    new_head = new_head.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        new_head.weight.copy_(head.weight[:num_target_classes])
        if head.bias is not None:
            new_head.bias.copy_(head.bias[:num_target_classes])
    setattr(parent, attr, new_head)
    id2label = {i: model.config.id2label[i] for i in range(num_target_classes)}
    masked.config.id2label = id2label
    masked.config.label2id = {v: k for k, v in id2label.items()}
    masked.config.num_labels = num_target_classes
    if hasattr(masked, "num_labels"):
        masked.num_labels = num_target_classes
    return masked
