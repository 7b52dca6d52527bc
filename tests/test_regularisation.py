"""LiVT's regularisation in the training inputs and targets: random erasing (both input pipelines) and label smoothing
(with Mixup / CutMix and every loss, neighbor silencing included)."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from neighbor_lt.augment import ImageTransform, MixupCutmix, RandomErasing
from neighbor_lt.configs import DataArguments, NeighborLTTrainingArguments
from neighbor_lt.losses import LOSSES, create_loss
from neighbor_lt.pixels import BatchAugment, CachedImageDataset, make_train_dataset

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _rectangles(erased: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """(top, left, h, w) of the non-zero region of each image of a batch erased from zeros (up to float rounding);
    None when untouched."""
    out = []
    for image in erased:
        nonzero = image.abs().gt(1e-5).any(0)
        if not nonzero.any():
            out.append(None)
            continue
        ys, xs = torch.nonzero(nonzero, as_tuple=True)
        top, left, bottom, right = ys.min().item(), xs.min().item(), ys.max().item() + 1, xs.max().item() + 1
        assert nonzero[top:bottom, left:right].all() and nonzero.sum() == (bottom - top) * (right - left)
        out.append((top, left, bottom - top, right - left))
    return out


def _timm_erase_box(height, width, prob=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """timm's RandomErasing._erase (count 1), written from its source, with Python's random: the reference."""
    if random.random() > prob:
        return None
    area = height * width
    log_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target_area = random.uniform(min_area, max_area) * area
        aspect_ratio = math.exp(random.uniform(*log_ratio))
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < width and h < height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    return None


def test_random_erasing_matches_timms_distribution():
    n, height, width = 6000, 24, 40
    generator = torch.Generator().manual_seed(0)
    boxes = _rectangles(RandomErasing(0.25)(torch.zeros(n, 3, height, width), generator))
    random.seed(0)
    reference = [_timm_erase_box(height, width) for _ in range(n)]
    ours = [b for b in boxes if b is not None]
    theirs = [b for b in reference if b is not None]
    assert abs(len(ours) / n - 0.25) < 0.025 and abs(len(theirs) / n - 0.25) < 0.025
    for stat in (
        lambda b: b[2] * b[3] / (height * width),
        lambda b: math.log(b[2] / b[3]),
        lambda b: b[0],
        lambda b: b[1],
    ):
        a, r = np.array([stat(b) for b in ours]), np.array([stat(b) for b in theirs])
        assert abs(a.mean() - r.mean()) < 4 * math.sqrt(a.var() / len(a) + r.var() / len(r))
    for top, left, h, w in ours:  # inside the image, within the area and aspect ranges (after rounding)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert 0.02 * 0.6 < h * w / (height * width) < 1 / 3 * 1.4 and 0.3 / 1.5 < h / w < 1.5 / 0.3


def test_random_erasing_fills_with_normal_noise_and_leaves_the_input_alone():
    x = torch.zeros(64, 3, 32, 32)
    out = RandomErasing(1.0)(x, torch.Generator().manual_seed(1))
    assert torch.equal(x, torch.zeros_like(x))  # a new tensor
    noise = out[out != 0]
    assert noise.numel() > 10_000 and abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    assert all(b is not None for b in _rectangles(out))  # probability 1: every image (the box always fits here)
    single = RandomErasing(1.0)(torch.zeros(3, 32, 32))
    assert single.shape == (3, 32, 32) and _rectangles(single[None])[0] is not None
    assert torch.equal(RandomErasing(0.0)(x), x)
    with pytest.raises(ValueError, match="random_erasing must be a probability"):
        RandomErasing(1.5)


def test_random_erasing_in_both_input_pipelines():
    torch.manual_seed(0)
    flat = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)  # grey: 0 after normalisation with mean 128 / 255
    augment = BatchAugment(32, (128 / 255,) * 3, STD, random_erasing=1.0)
    train = augment(flat, train=True)
    assert all(b is not None for b in _rectangles(train))
    assert augment(flat, train=False).abs().max() < 1e-5  # evaluation: never erased
    grey = Image.new("RGB", (40, 32), (128, 128, 128))
    pil = ImageTransform(32, (128 / 255,) * 3, STD, train=True, random_erasing=1.0)
    assert _rectangles(pil(grey)[None])[0] is not None
    assert ImageTransform(32, (128 / 255,) * 3, STD, random_erasing=1.0)(grey).abs().max() < 1e-5  # evaluation


@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_make_train_dataset_passes_random_erasing(pipeline, tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    images = [Image.new("RGB", (20, 16), (i * 40, 0, 0)) for i in range(3)]
    target = Dataset.from_dict(
        {"image": images, "label": [0, 1, 1]},
        features=Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])}),
    )
    data = DataArguments(input_pipeline=pipeline, pixel_cache_dir=str(tmp_path))
    args = NeighborLTTrainingArguments(output_dir=str(tmp_path), random_erasing=0.25, report_to="none")
    dataset, augment, _ = make_train_dataset(data, args, target, None, 2, 16, MEAN, STD)
    erasing = augment.random_erasing if pipeline == "tensor" else dataset.transform.random_erasing
    assert isinstance(erasing, RandomErasing) and erasing.prob == 0.25
    assert isinstance(dataset, CachedImageDataset) == (pipeline == "tensor")


# --------------------------------------------------------------------------------------------------------------------
# Label smoothing
# --------------------------------------------------------------------------------------------------------------------


def test_smoothed_targets_are_mixed_after_smoothing():
    labels = torch.tensor([0, 3, 5, 5])
    plain = MixupCutmix(8, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)
    targets = plain(torch.zeros(4, 3, 8, 8), labels)[1]
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert targets[0, 0] == pytest.approx(1 - 0.1 + 0.1 / 8) and targets[0, 1] == pytest.approx(0.1 / 8)
    torch.manual_seed(0)
    mixed = MixupCutmix(8, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)(torch.randn(4, 3, 8, 8), labels)[1]
    assert torch.allclose(mixed.sum(1), torch.ones(4)) and mixed.min() == pytest.approx(0.1 / 8)  # every class


def _eq4(logits, label, counts, pairs, lambda_s):
    """Eq. 4 term by term for one label per row (float64, plain autograd): the reference."""
    a = logits + counts.log()
    neighbors = {(int(t), int(j)) for t, j in pairs} | {(int(j), int(t)) for t, j in pairs}
    rows = []
    for i, y in enumerate(label.tolist()):
        weights = torch.tensor([lambda_s if (y, j) in neighbors else 1.0 for j in range(a.shape[1])], dtype=a.dtype)
        others = torch.cat([torch.arange(y), torch.arange(y + 1, a.shape[1])])
        rows.append(torch.log1p((weights[others] * torch.exp(a[i, others] - a[i, y])).sum()))
    return torch.stack(rows)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_label_smoothing_is_the_smoothed_mix_of_per_class_losses(loss):
    """(1 - e) loss(y) + (e / C) sum_c loss(c): what a soft target means for every loss, neighbor silencing too."""
    torch.manual_seed(0)
    num_classes, eps = 6, 0.1  # 3 targets, 3 auxiliary classes
    counts = torch.tensor([50.0, 10.0, 2.0, 20.0, 20.0, 5.0])
    pairs = torch.tensor([[0, 3], [2, 4], [2, 5]])
    criterion = create_loss(loss, counts, neighbor_pairs=pairs, lambda_s=0.1)
    logits = torch.randn(4, num_classes, dtype=torch.float64)
    labels = torch.tensor([0, 2, 4, 1])
    smoothed = MixupCutmix(num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=eps).one_hot(labels)
    got = criterion(logits, smoothed.double(), reduction="none")
    per_class = torch.stack(
        [criterion(logits, torch.full((4,), c), reduction="none") for c in range(num_classes)], 1
    )  # [B, C]: the loss if every row had label c
    expected = (1 - eps) * per_class.gather(1, labels[:, None]).squeeze(1) + eps / num_classes * per_class.sum(1)
    # (Bal-BCE is affine in the target and the weights sum to 1, so the identity holds for it too.)
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=1e-6)


def test_smoothed_neighbor_silencing_gradient_matches_eq4():
    torch.manual_seed(1)
    counts = torch.tensor([50.0, 10.0, 2.0, 20.0, 20.0, 5.0], dtype=torch.float64)
    pairs = torch.tensor([[0, 3], [2, 4], [2, 5]])
    criterion = create_loss("neighbor_silencing", counts, neighbor_pairs=pairs, lambda_s=0.1)
    labels = torch.tensor([0, 2, 4, 1, 5])
    smoothed = MixupCutmix(6, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.2).one_hot(labels).double()
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    criterion(logits, smoothed).backward()
    ours = logits.grad.clone()
    ref_logits = logits.detach().clone().requires_grad_(True)
    per_class = torch.stack([_eq4(ref_logits, torch.full((5,), c), counts, pairs, 0.1) for c in range(6)], 1)
    (smoothed * per_class).sum(1).mean().backward()
    torch.testing.assert_close(ours, ref_logits.grad, rtol=1e-5, atol=1e-7)
