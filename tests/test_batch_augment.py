"""BatchRandAugment: each tensor op against the PIL op of augment.py on real images, and the batched draws."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from neighbor_lt.augment import _OPS, BatchRandAugment, RandAugment

GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread (two spinning threads on a busy 2-core machine make this file 3x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_images(tiny_imagenet_dir):
    """Eight 64x64 Tiny-ImageNet validation images (PIL) and the same as a float [8, 3, 64, 64] batch."""
    rows = pq.ParquetFile(tiny_imagenet_dir / "valid-00000-of-00001.parquet").iter_batches(8, columns=["image"])
    images = [Image.open(io.BytesIO(row["bytes"])).convert("RGB") for row in next(rows).column("image").to_pylist()]
    return images, _to_batch(images)


def _to_batch(images):
    return torch.stack([torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1) for img in images]).float()


@pytest.mark.parametrize("m", [0.3, 0.9])
@pytest.mark.parametrize(
    "name, sign", [(name, s) for name, op in _OPS.items() for s in ((1, -1) if op.signed else (1,))]
)
def test_tensor_op_matches_pil_op(real_images, name, sign, m):
    op = _OPS[name]
    images, batch = real_images
    level = sign * float(op.level(m))
    expected = _to_batch([op.pil(img, level) for img in images])
    out = op.tensor(batch, torch.full((len(images),), level))
    diff = (out - expected).abs()
    # PIL stores every result as uint8 (truncating or rounding), the tensor ops keep floats: under one grey level
    assert diff.mean() < 0.6, (name, diff.mean())
    if name in GEOMETRIC:
        # the same sharp fill boundary as PIL (a point is the fill iff it maps outside the image); float32 rounding
        # of a sample point lying on the image edge may put a pixel on the other side of it
        assert (diff > 1.001).float().mean() < 0.002, name
    else:
        assert diff.max() < 1.5, (name, diff.max())  # PIL also rounds the grey image or mean it blends with


def test_spec_is_parsed_as_the_pil_rand_augment():
    for spec in ("rand-m9-mstd0.5", "rand-m7-n3-p1.0"):
        batch, pil = BatchRandAugment.from_spec(spec), RandAugment.from_spec(spec)
        assert isinstance(batch, BatchRandAugment)
        assert (batch.num_ops, batch.magnitude, batch.magnitude_std, batch.prob, batch.ops) == (
            pil.num_ops,
            pil.magnitude,
            pil.magnitude_std,
            pil.prob,
            pil.ops,
        )
    with pytest.raises(ValueError, match="unknown RandAugment spec part"):
        BatchRandAugment.from_spec("rand-x9")


def test_prob_zero_is_the_identity_and_input_is_untouched(real_images):
    _, batch = real_images
    before = batch.clone()
    assert torch.equal(BatchRandAugment(prob=0.0)(batch), batch)
    assert torch.equal(BatchRandAugment(num_ops=0)(batch), batch)
    BatchRandAugment(prob=1.0)(batch)
    assert torch.equal(batch, before)


def test_fixed_seed_is_reproducible(real_images):
    _, batch = real_images
    aug = BatchRandAugment.from_spec("rand-m9-mstd0.5")
    torch.manual_seed(0)
    first = aug(batch)
    torch.manual_seed(0)
    assert torch.equal(aug(batch), first)
    runs = [aug(batch, generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_each_image_draws_its_own_ops(real_images):
    images, _ = real_images
    batch = _to_batch(images[:1] * 32)  # one image repeated: different outputs come from different draws
    aug = BatchRandAugment(num_ops=2, magnitude=9, magnitude_std=0.5, prob=1.0)
    generator = torch.Generator().manual_seed(0)
    op, applied, level = aug.sample(len(batch), generator)
    assert op.shape == applied.shape == level.shape == (2, 32) and applied.all()
    assert len(op[0].unique()) >= 8 and len(op[1].unique()) >= 8
    signed = torch.tensor([_OPS[aug.ops[k]].signed for k in op.flatten().tolist()]).view(2, 32)
    assert (level[signed] < 0).any() and (level[signed] > 0).any()  # random signs
    out = aug.apply(batch, op, applied, level)
    distinct = {tuple(row.flatten()[::97].tolist()) for row in out}
    assert len(distinct) >= 20
    # the grouped batch call equals applying each image's own draws to it alone
    for i in range(0, 32, 5):
        alone = batch[i : i + 1]
        for slot in range(2):
            alone = _OPS[aug.ops[op[slot, i]]].tensor(alone, level[slot, i : i + 1].float())
        assert torch.allclose(out[i : i + 1], alone, atol=1e-3), i


def test_output_range_dtype_and_errors(real_images):
    _, batch = real_images
    torch.manual_seed(0)
    noise = torch.rand(16, 3, 24, 40) * 255  # non-integer values, non-square images
    for x in (batch, noise):
        out = BatchRandAugment(num_ops=3, magnitude=10, magnitude_std=3, prob=1.0)(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 255 and torch.isfinite(out).all()
    with pytest.raises(TypeError, match="float"):
        BatchRandAugment()(batch.to(torch.uint8))
    with pytest.raises(TypeError, match="float"):
        BatchRandAugment()(batch[0])
