"""Image transforms without torchvision: random-resized crop, flip, RandAugment (PIL and batched tensors), random
erasing, Mixup / CutMix and label smoothing (torch).

RandAugment follows timm's ``rand-m9-mstd0.5`` spec (the paper's RandAugment(9, 0.5)): two ops per image, each
applied with probability 0.5, magnitude drawn from N(9, 0.5) on a 0..10 scale. :class:`RandAugment` works on one PIL
image; :class:`BatchRandAugment` applies the same ops, magnitudes and signs to a whole float batch on its device.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

_FILL = 128  # grey outside the image after a geometric op
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # PIL's ImageFilter.SMOOTH

# PIL ops: function(img, level) -> img


def _affine_pil(img, matrix):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=(_FILL,) * 3)


def _solarize_add_pil(img, add: int, threshold: int = 128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


# tensor ops: function(x, level) on float x [n, 3, H, W] in 0..255 and a level per image [n]


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(degenerate, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, clipped to 0..255."""
    return (degenerate + _per_image(factor) * (x - degenerate)).clamp_(0, 255)


def _gray(x: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter: 3x3 kernel on the interior, border pixels unchanged."""
    kernel = _SMOOTH.to(x.device, x.dtype).expand(x.shape[1], 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, stretch min..max to 0..255 (constant channels unchanged)."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) * (255 / (hi - lo).clamp(min=1e-6)), x).clamp_(0, 255)  # float rounding


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per image and channel, on the values rounded to integers."""
    n, c, h, w = x.shape
    values = x.round().clamp(0, 255).long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, values, torch.ones_like(values))
    step = (h * w - hist.gather(1, values.amax(1, keepdim=True))) // 255  # PIL leaves out the highest value's count
    lut = (step // 2 + hist.cumsum(1) - hist) // step.clamp(min=1)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device)).clamp(max=255)
    return lut.gather(1, values).reshape(n, c, h, w).to(x.dtype)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    div = _per_image(torch.pow(2.0, 8 - bits))
    return torch.floor(x / div) * div


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x < _per_image(threshold), x, 255 - x)


def _solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128) -> torch.Tensor:
    return torch.where(x < threshold, (x + _per_image(add)).clamp(max=255), x)


def _affine(x: torch.Tensor, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor=128)`` for each image.

    Output pixel centre ``(x, y)`` samples the input at ``(a x + b y + c, d x + e y + f)`` (pixel units, per-image
    coefficients or scalars); as PIL, a point outside the image is the fill and a point inside interpolates with
    edge-clamped neighbours, so the fill boundary is sharp (``padding_mode="border"`` plus a mask from the grid)."""
    n, _, h, w = x.shape
    a, b, c, d, e, f = (torch.as_tensor(v, dtype=x.dtype, device=x.device).expand(n) for v in (a, b, c, d, e, f))
    # the same map in affine_grid's normalised coordinates (u = 2 x / W - 1, align_corners=False)
    row_x = torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], 1)
    row_y = torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], 1)
    grid = F.affine_grid(torch.stack([row_x, row_y], 1), [n, 3, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1, keepdim=True).permute(0, 3, 1, 2)
    return out.clamp_(0, 255).masked_fill_(~inside, _FILL)  # float rounding may step just outside 0..255


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise about the image centre, as PIL's ``Image.rotate``."""
    h, w = x.shape[-2:]
    cos, sin = torch.cos(torch.deg2rad(degrees)), torch.sin(torch.deg2rad(degrees))
    cx, cy = w / 2, h / 2
    return _affine(x, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


# the op table: magnitude mapping, sign, PIL op and tensor op of each of the 15 ops


def _no_level(m):
    return 0 * m


def _enhance_level(m):
    return 0.9 * m  # the enhance factor is 1 + level


class _Op(NamedTuple):
    level: Callable  # magnitude in [0, 1] (float or numpy array) -> the op's argument
    signed: bool  # whether the level takes a random sign
    pil: Callable  # (PIL image, level) -> PIL image
    tensor: Callable  # (float [n, 3, H, W] in 0..255, level [n]) -> the same


def _enhance_op(enhancer, degenerate) -> _Op:
    """One of PIL's ``ImageEnhance`` ops, factor 1 + level: a blend of the image with its degenerate version (gray,
    mean gray, black, smoothed), which is what PIL computes, on tensors too."""
    return _Op(
        _enhance_level,
        True,
        lambda img, v: enhancer(img).enhance(1 + v),
        lambda x, v: _blend(degenerate(x), x, 1 + v),
    )


_OPS = {
    "AutoContrast": _Op(_no_level, False, lambda img, v: ImageOps.autocontrast(img), lambda x, v: _autocontrast(x)),
    "Equalize": _Op(_no_level, False, lambda img, v: ImageOps.equalize(img), lambda x, v: _equalize(x)),
    "Invert": _Op(_no_level, False, lambda img, v: ImageOps.invert(img), lambda x, v: 255 - x),
    "Rotate": _Op(
        lambda m: 30.0 * m,
        True,
        lambda img, v: img.rotate(v, resample=Image.BILINEAR, fillcolor=(_FILL,) * 3),
        _rotate,
    ),
    "Posterize": _Op(
        lambda m: np.maximum(1, 8 - np.round(4 * m)), False, lambda img, v: ImageOps.posterize(img, int(v)), _posterize
    ),
    "Solarize": _Op(
        lambda m: np.trunc(256 - 256 * m), False, lambda img, v: ImageOps.solarize(img, int(v)), _solarize
    ),
    "SolarizeAdd": _Op(
        lambda m: np.trunc(110 * m), False, lambda img, v: _solarize_add_pil(img, int(v)), _solarize_add
    ),
    "Color": _enhance_op(ImageEnhance.Color, _gray),
    "Contrast": _enhance_op(ImageEnhance.Contrast, lambda x: _gray(x).mean((2, 3), keepdim=True)),
    "Brightness": _enhance_op(ImageEnhance.Brightness, lambda x: 0),
    "Sharpness": _enhance_op(ImageEnhance.Sharpness, _smooth),
    "ShearX": _Op(
        lambda m: 0.3 * m, True, lambda img, v: _affine_pil(img, (1, v, 0, 0, 1, 0)), lambda x, v: _affine(x, b=v)
    ),
    "ShearY": _Op(
        lambda m: 0.3 * m, True, lambda img, v: _affine_pil(img, (1, 0, 0, v, 1, 0)), lambda x, v: _affine(x, d=v)
    ),
    "TranslateXRel": _Op(
        lambda m: 0.45 * m,
        True,
        lambda img, v: _affine_pil(img, (1, 0, v * img.size[0], 0, 1, 0)),
        lambda x, v: _affine(x, c=v * x.shape[-1]),
    ),
    "TranslateYRel": _Op(
        lambda m: 0.45 * m,
        True,
        lambda img, v: _affine_pil(img, (1, 0, 0, 0, 1, v * img.size[1])),
        lambda x, v: _affine(x, f=v * x.shape[-2]),
    ),
}


class _RandAugmentParams:
    """The arguments and spec parsing shared by :class:`RandAugment` and :class:`BatchRandAugment`."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9, magnitude_std: float = 0.5, prob: float = 0.5):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.ops = list(_OPS)

    @classmethod
    def from_spec(cls, spec: str):
        """Parse timm's ``rand-m9-n2-mstd0.5-p0.5`` style spec."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
        kwargs = {}
        for part in parts[1:]:
            match = re.fullmatch(r"(mstd|m|n|p)([\d.]+)", part)
            if not match:
                raise ValueError(f"unknown RandAugment spec part {part!r} in {spec!r}")
            key = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "p": "prob"}[match.group(1)]
            kwargs[key] = int(match.group(2)) if key == "num_ops" else float(match.group(2))
        return cls(**kwargs)


class RandAugment(_RandAugmentParams):
    """RandAugment on PIL images (Python's ``random``).

    Example:
        >>> aug = RandAugment.from_spec("rand-m9-mstd0.5")
        >>> out = aug(Image.new("RGB", (32, 32)))

    Args:
        num_ops: ops applied per image.
        magnitude: magnitude on the 0..10 scale.
        magnitude_std: std of the per-op magnitude noise.
        prob: probability of applying each chosen op.
    """

    def __call__(self, img):
        for name in random.choices(self.ops, k=self.num_ops):
            if random.random() > self.prob:
                continue
            m = self.magnitude + (random.gauss(0, self.magnitude_std) if self.magnitude_std > 0 else 0.0)
            op = _OPS[name]
            level = float(op.level(min(max(m, 0.0), 10.0) / 10.0))
            if op.signed and random.random() < 0.5:
                level = -level
            img = op.pil(img, level)
        return img


class BatchRandAugment(_RandAugmentParams):
    """RandAugment on a float ``[B, 3, H, W]`` batch in 0..255, on its device (``torch`` RNG).

    Every image draws its own ops, magnitudes and signs, as :class:`RandAugment` does per PIL image; each op is then
    applied at once to the images that drew it. The ops follow PIL's definitions (see ``_OPS``) on continuous
    values: no rounding to integers between ops, except where the op is defined on integers (Equalize, Posterize).

    Example:
        >>> aug = BatchRandAugment.from_spec("rand-m9-mstd0.5")
        >>> out = aug(torch.rand(8, 3, 64, 64) * 255)

    Args:
        num_ops: ops applied per image.
        magnitude: magnitude on the 0..10 scale.
        magnitude_std: std of the per-op magnitude noise.
        prob: probability of applying each chosen op.
    """

    def sample(self, batch: int, generator: torch.Generator | None = None):
        """Random choices for a batch, on the CPU: op index, applied (bool), signed level, each ``[num_ops, B]``."""
        device = generator.device if generator is not None else "cpu"
        shape = (self.num_ops, batch)
        op = torch.randint(len(self.ops), shape, generator=generator, device=device).cpu()
        applied = (torch.rand(shape, generator=generator, device=device) < self.prob).cpu()
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float64).cpu()
        negative = (torch.rand(shape, generator=generator, device=device) < 0.5).cpu()
        magnitude = (self.magnitude + max(self.magnitude_std, 0.0) * noise).clamp(0, 10) / 10
        level = torch.zeros(shape, dtype=torch.float64)
        for k, name in enumerate(self.ops):
            rows = op == k
            level[rows] = torch.as_tensor(_OPS[name].level(magnitude[rows].numpy()), dtype=torch.float64)
            if _OPS[name].signed:
                level[rows & negative] *= -1
        return op, applied, level

    def apply(self, x: torch.Tensor, op: torch.Tensor, applied: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Apply the choices of :meth:`sample` to ``x`` (a new tensor; ``x`` is left alone)."""
        x = x.clone()
        for slot in range(op.shape[0]):
            for k in op[slot][applied[slot]].unique().tolist():
                rows = torch.nonzero(applied[slot] & (op[slot] == k)).squeeze(1)
                index = rows.to(x.device)
                x[index] = _OPS[self.ops[k]].tensor(x[index], level[slot, rows].to(x.device, x.dtype))
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A new batch of the same shape and dtype, in 0..255; ``generator`` (optional) seeds the draws."""
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise TypeError(f"expected a float [B, 3, H, W] batch in 0..255, got {x.dtype} {tuple(x.shape)}")
        return self.apply(x, *self.sample(x.shape[0], generator))


def _random_resized_crop_box(width, height, scale, ratio=(3 / 4, 4 / 3)):
    area = width * height
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x, y = random.randint(0, width - w), random.randint(0, height - h)
            return x, y, x + w, y + h
    side = min(width, height)
    x, y = (width - side) // 2, (height - side) // 2
    return x, y, x + side, y + side


class RandomErasing:
    """timm's ``RandomErasing(probability, mode="pixel")`` on normalised tensors: with probability ``prob`` an image
    gets one rectangle (area ``min_area``..``max_area`` of the image, aspect ratio log-uniform in
    ``min_aspect``..``1 / min_aspect``, the first of 10 draws that fits, position uniform) replaced by per-pixel
    N(0, 1) noise, i.e. noise of the normalised pixel distribution.

    One image ``[3, H, W]`` (the PIL pipeline, after :class:`ImageTransform`'s normalisation) or a batch
    ``[B, 3, H, W]`` on its device (the tensor pipeline, after :class:`~neighbor_lt.pixels.BatchAugment`): the
    draws are made for the whole batch at once and the rectangles applied with one masked select.

    Example:
        >>> erase = RandomErasing(0.25)  # LiVT / MAE fine-tuning: reprob 0.25, remode pixel, recount 1
        >>> out = erase(torch.randn(8, 3, 224, 224))

    Args:
        prob: probability of erasing a rectangle in an image.
        min_area, max_area: area range of the rectangle, as fractions of the image.
        min_aspect: smallest aspect ratio (height / width); the largest is its inverse.
    """

    def __init__(self, prob: float = 0.25, min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3):
        if not 0 <= prob <= 1:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {prob}")
        self.prob, self.min_area, self.max_area = prob, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def boxes(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, 4]`` int64 (top, left, h, w) on the CPU; ``h = w = 0`` where nothing is erased."""
        tries = 10
        area = torch.empty(batch, tries, dtype=torch.float64).uniform_(
            self.min_area, self.max_area, generator=generator
        )
        aspect = torch.empty(batch, tries, dtype=torch.float64).uniform_(*self.log_aspect, generator=generator).exp()
        h = torch.round(torch.sqrt(area * height * width * aspect)).long()  # Python's round: half to even, as torch
        w = torch.round(torch.sqrt(area * height * width / aspect)).long()
        fits = (h < height) & (w < width)
        first = fits.float().argmax(1)
        rows = torch.arange(batch)
        erase = (torch.rand(batch, generator=generator) < self.prob) & fits.any(1)
        h, w = torch.where(erase, h[rows, first], 0), torch.where(erase, w[rows, first], 0)
        top = (torch.rand(batch, generator=generator, dtype=torch.float64) * (height - h + 1)).long()
        left = (torch.rand(batch, generator=generator, dtype=torch.float64) * (width - w + 1)).long()
        return torch.stack([top, left, h, w], 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A new tensor of ``x``'s shape with the rectangles erased (``x`` is left alone)."""
        single = x.ndim == 3
        batch = x[None] if single else x
        if self.prob <= 0:
            return x
        b, _, height, width = batch.shape
        top, left, h, w = self.boxes(b, height, width, generator).to(batch.device).unbind(1)
        ys = torch.arange(height, device=batch.device)[None]
        xs = torch.arange(width, device=batch.device)[None]
        in_rows = (ys >= top[:, None]) & (ys < (top + h)[:, None])
        in_cols = (xs >= left[:, None]) & (xs < (left + w)[:, None])
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, H, W]
        noise_device = generator.device if generator is not None else batch.device
        noise = torch.randn(batch.shape, generator=generator, device=noise_device, dtype=batch.dtype)
        out = torch.where(mask, noise.to(batch.device), batch)
        return out[0] if single else out


DEFAULT_CROP_PCT = 0.875  # timm's: 224 px crops of the shorter side resized to 256


def center_crop_resized(img, size: int, crop_pct: float, resample=Image.BICUBIC):
    """Resize the shorter side to ``floor(size / crop_pct)`` (the longer side keeps the aspect ratio, floored), then
    center crop ``size x size``: the evaluation transform of timm and of the checkpoints' image processors
    (``transformers``' shortest-edge resize and ``center_crop``), pixel for pixel."""
    short = int(size / crop_pct)
    w, h = img.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


class ImageTransform:
    """PIL image -> normalized float tensor ``[3, H, W]``; random crop/flip/RandAugment when ``train``.

    Example:
        >>> t = ImageTransform(224, mean=(0.5,) * 3, std=(0.5,) * 3, train=True, rand_augment="rand-m9-mstd0.5")

    Args:
        size: output side.
        mean, std: normalization.
        train: random-resized crop (``crop_scale``), horizontal flip and RandAugment; else resize + center crop.
        rand_augment: a RandAugment spec or None.
        crop_scale: area range of the random-resized crop.
        crop_pct: evaluation resizes the shorter side to ``size / crop_pct`` before the center crop (0.875 when
            None, timm's default).
        resample: PIL filter of the evaluation resize (3 = bicubic), as the model's image processor.
        random_erasing: probability of :class:`RandomErasing` on the normalised training tensor; 0 disables.
    """

    def __init__(
        self,
        size,
        mean,
        std,
        train=False,
        rand_augment=None,
        crop_scale=(0.08, 1.0),
        crop_pct=None,
        resample=3,
        random_erasing=0.0,
    ):
        self.size, self.train, self.crop_scale = int(size), train, tuple(crop_scale)
        self.crop_pct, self.resample = crop_pct or DEFAULT_CROP_PCT, resample
        self.random_erasing = RandomErasing(random_erasing) if (train and random_erasing) else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.rand_augment = RandAugment.from_spec(rand_augment) if (train and rand_augment) else None

    def __call__(self, img) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        img = img.convert("RGB")
        if self.train:
            box = _random_resized_crop_box(*img.size, self.crop_scale)
            img = img.resize((self.size, self.size), Image.BICUBIC, box=box)
            if random.random() < 0.5:
                img = ImageOps.mirror(img)
            if self.rand_augment is not None:
                img = self.rand_augment(img)
        else:
            img = center_crop_resized(img, self.size, self.crop_pct, self.resample)
        array = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        array = (array - self.mean) / self.std
        return self.random_erasing(array) if self.random_erasing is not None else array


class ProcessorTransform:
    """PIL image -> ``pixel_values`` ``[3, H, W]`` through the model's own image processor.

    Evaluation uses this, so the reported accuracy is measured on exactly the inputs that ``pipeline(...)`` and the
    Space give the published model.

    Example:
        >>> t = ProcessorTransform(AutoImageProcessor.from_pretrained("outputs/demo"))
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, img) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        return self.processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class MixupCutmix:
    """Batch Mixup / CutMix with soft, label-smoothed targets (timm's ``Mixup`` semantics, batch mode).

    Label smoothing comes first, mixing second, as in timm: each image's target is ``1 - e + e / C`` on its label and
    ``e / C`` on every other class, and Mixup / CutMix mix two such targets, so a mixed target is smoothed too.

    The smoothing mass goes over all ``C = L + K`` classes of the merged label space (targets and auxiliary classes),
    not over the ``L`` targets only, because the training softmax is over all of them: smoothing bounds the margin of
    the label over every logit it competes with, and an auxiliary image's smoothed target stays a distribution over
    its own label space. Targets-only smoothing would leave auxiliary logits without that bound for target images
    and would put an auxiliary image's smoothing mass on target classes only. The auxiliary rows are removed from
    the published model, so their share of the mass (``e K / C``) never reaches a prediction.

    Every loss takes it: each is the target-weighted sum of per-class losses, so a smoothed target gives
    ``(1 - e) loss(y) + (e / C) sum_c loss(c)``. With neighbor silencing each ``loss(c)`` silences ``c``'s own
    neighbors (eq. 4 with label ``c``). A smoothed target is dense, so the silencing gathers every (sample, class)
    and (sample, neighbor pair) entry, ``B x (C + 2E)`` for ``E`` pairs, instead of those of one or two labels per
    sample: more work, still no ``C x C`` tensor.

    Example:
        >>> mix = MixupCutmix(num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0)
        >>> images, soft_targets = mix(images, labels)

    Args:
        num_classes: classes of the (merged) label space.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables each.
        prob: probability of mixing a batch at all.
        switch_prob: probability of CutMix when both are enabled.
        label_smoothing: ``e``, the mass spread uniformly over all ``num_classes`` (0.1 in LiVT); 0 disables.
    """

    def __init__(self, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.0):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.label_smoothing > 0

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        out = torch.full((labels.shape[0], self.num_classes), off, device=labels.device)
        return out.scatter_(1, labels[:, None], 1.0 - self.label_smoothing + off)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.one_hot(labels)
        use_mix = (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and random.random() < self.prob
        if not use_mix:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or random.random() < self.switch_prob)
        lam = float(np.random.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        flipped = images.flip(0)
        if use_cutmix:
            h, w = images.shape[-2:]
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = random.randint(0, h - 1), random.randint(0, w - 1)
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            images = images.clone()
            images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
        else:
            images = images * lam + flipped * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)
