import random

import numpy as np
import pytest
import torch
from datasets import load_dataset
from PIL import Image

from neighbor_lt.augment import _OPS, ImageTransform, MixupCutmix, RandAugment


@pytest.fixture(scope="module")
def real_image(tiny_imagenet_dir):
    ds = load_dataset("parquet", data_files=str(tiny_imagenet_dir / "valid-00000-of-00001.parquet"))["train"]
    return ds[0]["image"].convert("RGB")


def test_rand_augment_spec_and_every_op(real_image):
    aug = RandAugment.from_spec("rand-m9-mstd0.5")
    assert (aug.num_ops, aug.magnitude, aug.magnitude_std, aug.prob) == (2, 9.0, 0.5, 0.5)
    assert RandAugment.from_spec("rand-m7-n3-p1.0").num_ops == 3
    with pytest.raises(ValueError, match="unknown RandAugment spec part"):
        RandAugment.from_spec("rand-x9")
    for name, op in _OPS.items():
        out = op.pil(real_image, float(op.level(0.9)))
        assert out.size == real_image.size and out.mode == "RGB", name
    changed = 0
    random.seed(0)
    always = RandAugment(num_ops=2, magnitude=9, prob=1.0)
    for _ in range(10):
        changed += not np.array_equal(np.asarray(always(real_image)), np.asarray(real_image))
    assert changed >= 8


def test_image_transform_train_and_eval(real_image):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = ImageTransform(32, mean, std, train=True, rand_augment="rand-m9-mstd0.5")
    evaluation = ImageTransform(32, mean, std, train=False)
    x = train(real_image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    e1, e2 = evaluation(real_image), evaluation(real_image)
    assert torch.equal(e1, e2)  # evaluation is deterministic
    gray = Image.new("L", (50, 80), 128)
    assert evaluation(gray).shape == (3, 32, 32)  # grayscale and non-square inputs
    # normalization: a mid-gray image maps to (128/255 - 0.5) / 0.25
    assert evaluation(gray).mean().item() == pytest.approx((128 / 255 - 0.5) / 0.25, abs=1e-3)
    with pytest.raises(TypeError, match="PIL image"):
        evaluation(np.zeros((4, 4, 3)))


def test_mixup_cutmix_soft_targets():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    images = torch.randn(8, 3, 16, 16)
    labels = torch.arange(8) % 5
    for kwargs in ({"mixup_alpha": 0.8, "cutmix_alpha": 0.0}, {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}):
        mix = MixupCutmix(num_classes=5, **kwargs)
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, 5)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        lam = targets[0, labels[0]].item()  # labels[0] = 0 and labels[-1] = 2 differ
        assert 0.0 <= lam <= 1.0 and targets[0, labels[-1]].item() == pytest.approx(1 - lam, abs=1e-6)
        if kwargs["mixup_alpha"]:
            assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[-1], atol=1e-5)
    smooth = MixupCutmix(num_classes=5, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.1)
    _, targets = smooth(images, labels)
    assert targets[0].tolist() == pytest.approx([0.92, 0.02, 0.02, 0.02, 0.02])
    assert not MixupCutmix(5, 0, 0, label_smoothing=0).active


def test_cutmix_pastes_the_flipped_batch_with_area_weight():
    random.seed(1)
    np.random.seed(1)
    images = torch.stack([torch.zeros(3, 20, 20), torch.ones(3, 20, 20)])
    mixed, targets = MixupCutmix(num_classes=2, mixup_alpha=0.0, cutmix_alpha=1.0)(images, torch.tensor([0, 1]))
    pasted = mixed[0].mean().item()  # fraction of image 0 covered by image 1
    assert targets[0, 1].item() == pytest.approx(pasted, abs=1e-6)
