"""The from-scratch paradigm (LiVT): MAE pre-training on the target images, then fine-tuning from the MAE encoder.

Pre-training uses ``transformers``' ``ViTMAEForPreTraining`` (random masking, normalized-pixel loss) with a plain
``Trainer``: the model returns its own reconstruction loss. Fine-tuning goes through ``recipes/train.py`` with
``model_name_or_path`` set to the pre-training output folder: :func:`modeling.load_model` sees ``model_type: vit_mae``
and calls :func:`classifier_from_mae`, which builds a ``ViTForImageClassification`` on the pre-trained encoder and
checks that every encoder tensor was loaded.

The classifier is a ``ViTForImageClassification`` (reads the ``[CLS]`` token after the final layer norm) unless
``drop_path_rate`` or ``global_pool`` is set, LiVT's fine-tuning (drop path 0.1, global pool). ``transformers``' ViT
has neither (its ``ViTLayer`` adds each residual branch as is, its head reads token 0), so the encoder is then
hosted in a ``BeitForImageClassification``: the same pre-norm blocks, patch embedding, ``[CLS]`` token and absolute
position embeddings, with stochastic depth per block (``BeitDropPath``, rate rising linearly from 0 to
``drop_path_rate``, as timm) and ``use_mean_pooling`` = MAE's ``global_pool`` (the final norm is replaced by a new
``fc_norm`` on the mean of the patch tokens). BEiT's key projection has no bias; the MAE's key bias is left out
because it adds ``q . b_k`` to every score of a query, which the softmax removes (tested: same logits). The saved
model is a stock ``transformers`` BEiT, so ``pipeline("image-classification")`` loads it with no remote code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTMAEModel,
)
from transformers.utils import logging as hf_logging

from .augment import ImageTransform
from .configs import ConfigError, ModelArguments

logger = logging.getLogger(__name__)

# Config fields that fix the encoder's weights' shapes or meaning: the fine-tuning config must agree on all of them.
ENCODER_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "hidden_act",
    "layer_norm_eps",
)
# Copied from the MAE config to the ViT classifier's config.
VIT_FIELDS = (
    *ENCODER_FIELDS,
    "image_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
)


# --------------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MAEModelArguments:
    """The MAE to pre-train: a ViT encoder plus a light decoder (defaults: MAE ViT-B/16, decoder 512 x 8)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Start from this MAE checkpoint (folder or Hub id, e.g. facebook/vit-mae-base); empty: random."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated ViTMAEConfig overrides, e.g. 'hidden_size=192,num_hidden_layers=6,"
            "num_attention_heads=3,intermediate_size=768,decoder_hidden_size=128,decoder_num_hidden_layers=2'."
        },
    )
    image_size: int = field(default=224, metadata={"help": "Input resolution (fine-tuning must use the same)."})
    patch_size: int = field(default=16, metadata={"help": "Patch side in pixels."})
    mask_ratio: float = field(default=0.75, metadata={"help": "Fraction of patches masked (0.75 in MAE and LiVT)."})
    norm_pix_loss: bool = field(
        default=True, metadata={"help": "Regress per-patch normalized pixels (MAE's better-representation setting)."}
    )
    num_reconstruction_images: int = field(
        default=8, metadata={"help": "Images in the reconstruction grid written at every save and at the end."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded checkpoints are stored."})
    model_revision: str = field(default="main", metadata={"help": "Checkpoint revision (branch, tag or commit)."})


@dataclass
class MAETrainingArguments(TrainingArguments):
    """``TrainingArguments`` with MAE's defaults: AdamW betas (0.9, 0.95), weight decay 0.05, cosine schedule."""

    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "MAE's 'blr': when set, learning_rate = base_learning_rate * effective batch / 256 "
            "(1.5e-4 in MAE and LiVT)."
        },
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (0.95 in MAE)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (0.05 in MAE)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (cosine in MAE)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep pixel_values (always False here)."})


def effective_batch_size(args: TrainingArguments) -> int:
    """Images per optimizer step over all processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def apply_base_learning_rate(args: MAETrainingArguments) -> float:
    """Set ``learning_rate`` from ``base_learning_rate`` (MAE's linear scaling rule) and return it."""
    if args.base_learning_rate is not None:
        args.learning_rate = args.base_learning_rate * effective_batch_size(args) / 256
        logger.info(
            "learning rate %.3g = base %.3g x effective batch %d / 256",
            args.learning_rate, args.base_learning_rate, effective_batch_size(args),
        )  # fmt: skip
    return args.learning_rate


# --------------------------------------------------------------------------------------------------------------------
# Pre-training: model and data
# --------------------------------------------------------------------------------------------------------------------


def build_mae_model(args: MAEModelArguments) -> ViTMAEForPreTraining:
    """A ``ViTMAEForPreTraining`` from ``args`` (random, or from ``model_name_or_path``).

    Example:
        >>> model = build_mae_model(MAEModelArguments(image_size=64, patch_size=8, config_overrides="hidden_size=192"))

    Args:
        args: the MAE arguments; ``mask_ratio``, ``norm_pix_loss``, ``image_size`` and ``patch_size`` always win
            over the checkpoint's config.
    """
    settings = {
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "mask_ratio": args.mask_ratio,
        "norm_pix_loss": args.norm_pix_loss,
    }
    if args.model_name_or_path:
        hub = {"cache_dir": args.cache_dir, "revision": args.model_revision}
        config = ViTMAEConfig.from_pretrained(args.model_name_or_path, **hub)
        _update(config, args.config_overrides)
        for key in ("image_size", "patch_size"):
            if getattr(config, key) != settings[key]:
                raise ConfigError(
                    f"{key}={settings[key]} but the checkpoint {args.model_name_or_path} has {key}={getattr(config, key)}"
                )
        config.update(settings)
        return ViTMAEForPreTraining.from_pretrained(
            args.model_name_or_path, config=config, use_safetensors=True, **hub
        )
    config = ViTMAEConfig(**settings)
    _update(config, args.config_overrides)
    if config.image_size % config.patch_size:
        raise ConfigError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
    return ViTMAEForPreTraining(config)


def _update(config, overrides: str | None) -> None:
    if overrides:
        try:
            config.update_from_string(overrides)
        except ValueError as err:
            raise ConfigError(f"config_overrides {overrides!r}: {err}") from err


def pretrain_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_min_scale: float = 0.2):
    """MAE's pre-training augmentation: random-resized crop (scale ``crop_min_scale``..1, bicubic) and flip only."""
    return ImageTransform(size, mean, std, train=True, rand_augment=None, crop_scale=(crop_min_scale, 1.0))


class UnlabeledImages(torch.utils.data.Dataset):
    """The images of one or more ``datasets`` splits (labels dropped), as ``{"pixel_values": transform(image)}``.

    Example:
        >>> images = UnlabeledImages([target["train"], aux], pretrain_transform(224, mean, std))

    Args:
        parts: datasets with an ``image`` column, concatenated in order.
        transform: PIL image -> tensor.
    """

    def __init__(self, parts, transform):
        self.parts = [p.select_columns(["image"]) for p in parts if p is not None]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.transform = transform

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        image = self.parts[part][int(index - self.offsets[part])]["image"]
        return {"pixel_values": self.transform(image)}


class MAEPretrainer(Trainer):
    """``Trainer`` for ``ViTMAEForPreTraining``: the model computes its own loss, with no labels, in training and
    in evaluation (``eval_loss`` is the masked-patch reconstruction error).

    Example:
        >>> trainer = MAEPretrainer(model=build_mae_model(model_args), args=training_args, train_dataset=images)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The Trainer only reports a label-free eval loss when the forward has a `return_loss` argument.
        self.can_return_loss = True
        self.args.prediction_loss_only = True


# --------------------------------------------------------------------------------------------------------------------
# Reconstruction samples
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_grid(
    model: ViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    pad: int = 2,
) -> Image.Image:
    """One row per image: original | masked input | reconstruction | reconstruction with the visible patches pasted.

    The mask is drawn from ``seed``, so grids saved during training show the same masks and can be compared.
    With ``norm_pix_loss`` the predicted patches are un-normalized with each original patch's mean and variance
    (as MAE's visualisation does).

    Example:
        >>> grid = reconstruction_grid(model, batch["pixel_values"][:8], mean=IMAGENET_MEAN, std=IMAGENET_STD)
        >>> grid.save("reconstructions.png")

    Args:
        model: the MAE.
        pixel_values: ``[N, 3, H, W]`` normalized images.
        mean, std: the normalization, to turn tensors back into pixels.
        seed: seed of the random masks.
        pad: pixels between tiles.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pixel_values = pixel_values.to(device)
    num_patches = model.vit.embeddings.patch_embeddings.num_patches
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(pixel_values.shape[0], num_patches, generator=generator).to(device)
    out = model(pixel_values=pixel_values, noise=noise)
    pred = out.logits
    if model.config.norm_pix_loss:
        target = model.patchify(pixel_values)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    size = pixel_values.shape[-2:]
    recon = model.unpatchify(pred, size)
    patch_area = model.config.patch_size**2 * model.config.num_channels
    mask = model.unpatchify(out.mask.unsqueeze(-1).repeat(1, 1, patch_area), size)  # 1 where masked
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def to_pixels(x):
        return (x * std_t + mean_t).clamp(0, 1)

    original = to_pixels(pixel_values)
    gray = torch.full_like(original, 0.5)
    columns = [
        original,
        original * (1 - mask) + gray * mask,
        to_pixels(recon),
        original * (1 - mask) + to_pixels(recon) * mask,
    ]
    model.train(was_training)
    n, (h, w) = pixel_values.shape[0], size
    canvas = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for c, column in enumerate(columns):
        tiles = (column.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        for r in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = tiles[r]
    return Image.fromarray(canvas)


def save_reconstruction_grid(model, pixel_values, path: str, mean, std, seed: int = 0) -> str:
    """Write :func:`reconstruction_grid` to ``path`` (PNG) and return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    reconstruction_grid(model, pixel_values, mean, std, seed=seed).save(path)
    return path


class ReconstructionCallback(TrainerCallback):
    """Writes ``<output_dir>/reconstructions/step-<N>.png`` at every checkpoint save, for a person to look at."""

    def __init__(self, pixel_values: torch.Tensor, mean, std, seed: int = 0):
        self.pixel_values, self.mean, self.std, self.seed = pixel_values, mean, std, seed

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and state.is_world_process_zero:
            model = getattr(model, "module", model)
            path = os.path.join(args.output_dir, "reconstructions", f"step-{state.global_step}.png")
            save_reconstruction_grid(model, self.pixel_values, path, self.mean, self.std, self.seed)


# --------------------------------------------------------------------------------------------------------------------
# Fine-tuning: a ViT classifier on the pre-trained encoder
# --------------------------------------------------------------------------------------------------------------------


def _checkpoint_config(args: ModelArguments) -> ViTMAEConfig:
    """The checkpoint's own config, before any fine-tuning override."""
    return ViTMAEConfig.from_pretrained(
        args.model_name_or_path, cache_dir=args.cache_dir, revision=args.model_revision
    )


def check_mae_compatibility(args: ModelArguments, config) -> None:
    """Raise ``ConfigError`` naming every setting where the fine-tuning config disagrees with the MAE checkpoint.

    Checked: the checkpoint is a ``vit_mae`` one; ``image_size`` (``args.image_size`` or ``config_overrides``) and the
    encoder's shape-defining fields (:data:`ENCODER_FIELDS`: patch size, width, depth, heads...) are unchanged.
    """
    where = args.model_name_or_path
    if getattr(config, "model_type", None) != "vit_mae":
        raise ConfigError(
            f"{where} is a {getattr(config, 'model_type', type(config).__name__)!r} checkpoint, not vit_mae"
        )
    original = _checkpoint_config(args)
    problems = []
    for key in ENCODER_FIELDS + ("image_size",):
        if getattr(config, key) != getattr(original, key):
            problems.append(f"{key}={getattr(config, key)} (checkpoint: {getattr(original, key)})")
    if args.image_size and args.image_size != original.image_size:
        problems.append(f"image_size={args.image_size} (checkpoint: {original.image_size})")
    if problems:
        raise ConfigError(
            f"the fine-tuning config does not match the MAE checkpoint {where}: {'; '.join(problems)}. "
            "Fine-tune with the pre-training image_size and patch_size, or pre-train again."
        )


def load_mae_encoder(args: ModelArguments, config: ViTMAEConfig) -> ViTMAEModel:
    """The pre-trained encoder of an MAE checkpoint, failing if any encoder tensor is missing or has another shape."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the decoder tensors are expected to be left out: no report table for them
    try:
        encoder, info = ViTMAEModel.from_pretrained(
            args.model_name_or_path,
            config=config,
            cache_dir=args.cache_dir,
            revision=args.model_revision,
            use_safetensors=True,
            output_loading_info=True,
        )
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"cannot load a ViT-MAE encoder from {args.model_name_or_path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys", []))
    mismatched = [str(m[0] if isinstance(m, tuple) else m) for m in info.get("mismatched_keys", [])]
    if missing or mismatched:
        detail = "; ".join(
            part
            for part in (
                f"missing {sorted(missing)[:6]}" if missing else "",
                f"wrong shape {sorted(mismatched)[:6]}" if mismatched else "",
            )
            if part
        )
        raise ConfigError(
            f"{args.model_name_or_path} does not hold a ViT-MAE encoder matching its config ({detail}); "
            "is it a checkpoint of another architecture?"
        )
    return encoder


def classifier_from_mae(
    args: ModelArguments, config: ViTMAEConfig, common: dict
) -> ViTForImageClassification | BeitForImageClassification:
    """A classifier whose encoder is the pre-trained MAE encoder and whose head is new.

    Called by :func:`neighbor_lt.modeling.load_model` for a ``vit_mae`` checkpoint (an output folder of
    ``recipes/pretrain_mae.py``). The mask ratio and the decoder are dropped; every encoder tensor is copied and
    then compared with the checkpoint's, so a silently re-initialised encoder cannot slip through. The head is
    initialised as MAE's fine-tuning does (truncated normal, std 2e-5; zero bias). With ``args.drop_path_rate`` or
    ``args.global_pool`` the classifier is a ``BeitForImageClassification`` (see the module docstring), else a
    ``ViTForImageClassification``.

    Example:
        >>> model = load_model(ModelArguments("outputs/tiny_imagenet_lt/scratch/mae"), {0: "cat", 1: "dog"})

    Args:
        args: model arguments (``image_size`` and ``config_overrides`` must agree with the checkpoint).
        config: the checkpoint's ``ViTMAEConfig`` with the fine-tuning overrides and labels applied.
        common: ``num_labels``, ``id2label`` and ``label2id``.

    Raises:
        ConfigError: another architecture, or an image size / patch size / encoder shape that differs from the
            checkpoint's; raised before any weight is loaded into the classifier.
    """
    check_mae_compatibility(args, config)
    encoder = load_mae_encoder(args, config)
    encoder_state = encoder.state_dict()
    if args.drop_path_rate or args.global_pool:
        model, body, state = _beit_classifier(args, config, common, encoder_state)
    else:
        model = ViTForImageClassification(ViTConfig(**{k: getattr(config, k) for k in VIT_FIELDS}, **common))
        body, state = model.vit, encoder_state
    result = body.load_state_dict(state, strict=False)
    fresh = [k for k in result.missing_keys if k.startswith("pooler.")]  # global pool: a new fc_norm
    if set(result.missing_keys) - set(fresh) or result.unexpected_keys:
        raise ConfigError(
            f"MAE encoder and {type(model).__name__} disagree on parameter names: missing {result.missing_keys[:6]}, "
            f"unexpected {result.unexpected_keys[:6]}"
        )
    with torch.no_grad():
        nn.init.trunc_normal_(model.classifier.weight, std=2e-5)
        nn.init.zeros_(model.classifier.bias)
    loaded = body.state_dict()
    differs = [k for k, v in state.items() if not torch.equal(loaded[k], v)]
    if differs:
        raise RuntimeError(f"encoder tensors differ from the checkpoint after loading: {differs[:6]}")
    for param in model.parameters():
        param.requires_grad_(True)  # MAE freezes its sin-cos position embeddings; fine-tuning trains them
    logger.info(
        "%s on the MAE encoder of %s: %d encoder tensors loaded, %d-way head initialised (drop path %s, %s pooling)",
        type(model).__name__, args.model_name_or_path, len(state), common["num_labels"], args.drop_path_rate or 0,
        "global average" if args.global_pool else "[CLS]",
    )  # fmt: skip
    return model


def _beit_classifier(args: ModelArguments, config: ViTMAEConfig, common: dict, encoder_state: dict):
    """(BEiT classifier with drop path / global pool, its encoder module, the MAE tensors it takes)."""
    if not getattr(config, "qkv_bias", True):
        raise ConfigError(
            "drop_path_rate / global_pool need an MAE with qkv_bias (BEiT's query and value have biases)"
        )
    beit_config = BeitConfig(
        **{k: getattr(config, k) for k in VIT_FIELDS if k != "qkv_bias"},
        use_absolute_position_embeddings=True,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=False,
        use_mask_token=False,
        layer_scale_init_value=0.0,  # no LayerScale: ViT / MAE blocks add the branches unscaled
        use_mean_pooling=bool(args.global_pool),
        drop_path_rate=float(args.drop_path_rate or 0.0),
        use_auxiliary_head=False,
        **common,
    )
    model = BeitForImageClassification(beit_config)
    # The key bias shifts every score of a query by the same amount (softmax-invariant): BEiT has none.
    dropped = [k for k in encoder_state if k.endswith("attention.k_proj.bias")]
    if args.global_pool:
        dropped += ["layernorm.weight", "layernorm.bias"]  # MAE's global pool replaces the final norm by fc_norm
    state = {k: v for k, v in encoder_state.items() if k not in dropped}
    return model, model.beit, state


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder tensors (``vit.*`` / ``beit.*``, minus the head) of an MAE, ViT or BEiT model, keyed without the
    prefix, so the tensors of an MAE and of the classifier built on it compare by name."""
    state = model.state_dict()
    prefix = "beit." if any(k.startswith("beit.") for k in state) else "vit."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def grid_size(num_images: int, image_size: int, pad: int = 2, columns: int = 4) -> tuple[int, int]:
    """(width, height) of :func:`reconstruction_grid`'s image."""
    return columns * (image_size + pad) + pad, num_images * (image_size + pad) + pad
