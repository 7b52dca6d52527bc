"""Image transforms without torchvision: random-resized crop, flip, RandAugment (PIL) and Mixup / CutMix (torch).

RandAugment follows timm's ``rand-m9-mstd0.5`` spec (the paper's RandAugment(9, 0.5)): two ops per image, each
applied with probability 0.5, magnitude drawn from N(9, 0.5) on a 0..10 scale.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

_FILL = (128, 128, 128)


def _signed(v: float) -> float:
    return -v if random.random() < 0.5 else v


def _affine(img, matrix):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=_FILL)


# op name -> function(img, magnitude in [0, 1])
_OPS = {
    "AutoContrast": lambda img, m: ImageOps.autocontrast(img),
    "Equalize": lambda img, m: ImageOps.equalize(img),
    "Invert": lambda img, m: ImageOps.invert(img),
    "Rotate": lambda img, m: img.rotate(_signed(30.0 * m), resample=Image.BILINEAR, fillcolor=_FILL),
    "Posterize": lambda img, m: ImageOps.posterize(img, max(1, 8 - int(round(4 * m)))),
    "Solarize": lambda img, m: ImageOps.solarize(img, int(256 - 256 * m)),
    "SolarizeAdd": lambda img, m: _solarize_add(img, int(110 * m)),
    "Color": lambda img, m: ImageEnhance.Color(img).enhance(1.0 + _signed(0.9 * m)),
    "Contrast": lambda img, m: ImageEnhance.Contrast(img).enhance(1.0 + _signed(0.9 * m)),
    "Brightness": lambda img, m: ImageEnhance.Brightness(img).enhance(1.0 + _signed(0.9 * m)),
    "Sharpness": lambda img, m: ImageEnhance.Sharpness(img).enhance(1.0 + _signed(0.9 * m)),
    "ShearX": lambda img, m: _affine(img, (1, _signed(0.3 * m), 0, 0, 1, 0)),
    "ShearY": lambda img, m: _affine(img, (1, 0, 0, _signed(0.3 * m), 1, 0)),
    "TranslateXRel": lambda img, m: _affine(img, (1, 0, _signed(0.45 * m) * img.size[0], 0, 1, 0)),
    "TranslateYRel": lambda img, m: _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * m) * img.size[1])),
}


def _solarize_add(img, add: int, threshold: int = 128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


class RandAugment:
    """RandAugment on PIL images.

    Example:
        >>> aug = RandAugment.from_spec("rand-m9-mstd0.5")
        >>> out = aug(Image.new("RGB", (32, 32)))

    Args:
        num_ops: ops applied per image.
        magnitude: magnitude on the 0..10 scale.
        magnitude_std: std of the per-op magnitude noise.
        prob: probability of applying each chosen op.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9, magnitude_std: float = 0.5, prob: float = 0.5):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.ops = list(_OPS)

    @classmethod
    def from_spec(cls, spec: str) -> RandAugment:
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

    def __call__(self, img):
        for name in random.choices(self.ops, k=self.num_ops):
            if random.random() > self.prob:
                continue
            m = self.magnitude + (random.gauss(0, self.magnitude_std) if self.magnitude_std > 0 else 0.0)
            img = _OPS[name](img, min(max(m, 0.0), 10.0) / 10.0)
        return img


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
        crop_pct: evaluation resize is ``size / crop_pct`` before the center crop.
    """

    def __init__(self, size, mean, std, train=False, rand_augment=None, crop_scale=(0.08, 1.0), crop_pct=0.875):
        self.size, self.train, self.crop_scale, self.crop_pct = int(size), train, tuple(crop_scale), crop_pct
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
            short = int(round(self.size / self.crop_pct))
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BICUBIC)
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        array = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (array - self.mean) / self.std


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
    """Batch Mixup / CutMix with soft targets (timm's ``Mixup`` semantics, batch mode).

    Example:
        >>> mix = MixupCutmix(num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0)
        >>> images, soft_targets = mix(images, labels)

    Args:
        num_classes: classes of the (merged) label space.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables each.
        prob: probability of mixing a batch at all.
        switch_prob: probability of CutMix when both are enabled.
        label_smoothing: smoothing of the one-hot targets.
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
