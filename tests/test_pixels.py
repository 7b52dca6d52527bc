"""The tensor input pipeline: uint8 cache, batched rows, batch augmentation, and the development split."""

import io
import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, load_dataset
from PIL import Image as PILImage

from neighbor_lt.configs import ConfigError, DataArguments
from neighbor_lt.data import load_target_dataset
from neighbor_lt.pixels import BatchAugment, CachedImageDataset, collate_batch, pixel_cache


@pytest.fixture(scope="module")
def real_rows(tiny_imagenet_dir):
    ds = load_dataset("parquet", data_files=str(tiny_imagenet_dir / "valid-00000-of-00001.parquet"), split="train")
    return ds.select(range(24)).select_columns(["image", "label"])


def test_pixel_cache_decodes_once_and_matches_pil(real_rows, tmp_path):
    pixels = pixel_cache(real_rows, 64, str(tmp_path))
    assert pixels.shape == (24, 3, 64, 64) and pixels.dtype == np.uint8
    for i in (0, 7, 23):
        expected = np.asarray(real_rows[i]["image"].convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(pixels[i], expected)  # 64 px images: stored as they are
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    mtime = files[0].stat().st_mtime_ns
    again = pixel_cache(real_rows, 64, str(tmp_path))
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    np.testing.assert_array_equal(np.asarray(again), np.asarray(pixels))
    small = pixel_cache(real_rows, 32, str(tmp_path))
    assert small.shape == (24, 3, 32, 32) and len(list(tmp_path.iterdir())) == 2


def test_pixel_cache_resizes_short_side_and_centre_crops(tmp_path):
    image = PILImage.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (20, 0, 60, 40))  # a white centre square
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    ds = Dataset.from_dict(
        {"image": [{"bytes": buf.getvalue(), "path": None}], "label": [0]},
        features=Features({"image": Image(), "label": ClassLabel(names=["x"])}),
    )
    pixels = pixel_cache(ds, 20, str(tmp_path))
    assert pixels.shape == (1, 3, 20, 20)
    assert pixels[0].min() > 200  # the centre square only


def test_corrupt_image_names_its_row_and_leaves_no_cache(tmp_path):
    good = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(good, format="PNG")
    ds = Dataset.from_dict(
        {
            "image": [{"bytes": good.getvalue(), "path": None}, {"bytes": b"not an image", "path": None}],
            "label": [0, 0],
        },
        features=Features({"image": Image(), "label": ClassLabel(names=["x"])}),
    )
    with pytest.raises(ValueError, match="row 1 cannot be decoded"):
        pixel_cache(ds, 8, str(tmp_path), where="auxiliary")
    assert list(tmp_path.iterdir()) == []


def test_cached_dataset_rows_labels_and_batches(real_rows, tmp_path):
    target, aux = real_rows.select(range(10)), real_rows.select(range(10, 24))
    aux = aux.cast_column("label", ClassLabel(names=[f"aux{i}" for i in range(200)]))
    ds = CachedImageDataset(target, aux, num_targets=200, size=64, cache_dir=str(tmp_path))
    assert len(ds) == 24
    np.testing.assert_array_equal(ds.labels[:10], np.asarray(target["label"]))
    np.testing.assert_array_equal(ds.labels[10:], np.asarray(aux["label"]) + 200)
    indices = [13, 2, 23, 0, 10]
    batch = collate_batch(ds.__getitems__(indices))
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (5, 3, 64, 64)
    singles = collate_batch([ds[i] for i in indices])
    torch.testing.assert_close(batch["pixel_values"], singles["pixel_values"])
    assert batch["labels"].tolist() == singles["labels"].tolist() == [int(ds.labels[i]) for i in indices]


def test_batch_augment_identity_flip_and_eval(real_rows, tmp_path):
    pixels = torch.from_numpy(np.asarray(pixel_cache(real_rows, 64, str(tmp_path))[:8]).copy())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalized = (pixels.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    full = BatchAugment(64, mean, std, crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    torch.testing.assert_close(full(pixels, train=True), normalized, atol=1e-4, rtol=0)  # whole image, no flip
    flip = BatchAugment(64, mean, std, crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    torch.testing.assert_close(flip(pixels, train=True), normalized.flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(full(pixels, train=False), normalized, atol=1e-4, rtol=0)
    crop = BatchAugment(32, mean, std, crop_scale=(0.1, 0.5))
    torch.manual_seed(0)
    out = crop(pixels, train=True)
    assert out.shape == (8, 3, 32, 32) and torch.isfinite(out).all()
    boxes = crop.crop_boxes(1000, torch.Generator().manual_seed(0))
    area = boxes[:, 0] * boxes[:, 1]
    assert (boxes[:, :2] <= 1).all() and area.min() >= 0.1 - 1e-6 and area.max() <= 0.5 + 1e-6
    with pytest.raises(TypeError, match="uint8"):
        crop(pixels.float(), train=True)


def test_batch_augment_with_rand_augment(real_rows, tmp_path):
    pixels = torch.from_numpy(np.asarray(pixel_cache(real_rows, 64, str(tmp_path))[:8]).copy())
    aug = BatchAugment(64, (0.5,) * 3, (0.5,) * 3, rand_augment="rand-m9-mstd0.5")
    out = aug(pixels, train=True)
    assert out.shape == (8, 3, 64, 64) and out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5


def test_development_split_is_disjoint_from_the_long_tail(tiny_imagenet_dir):
    args = DataArguments(
        dataset_name="parquet", train_files=[str(tiny_imagenet_dir / "train-*.parquet")], num_classes=5,
        imbalance_factor=10, lt_seed=3, heldout_eval_per_class=20,
    )  # fmt: skip
    splits = load_target_dataset(args)
    train, dev = splits["train"], splits["validation"]
    keys = lambda ds: {hash(item["bytes"]) for item in ds.cast_column("image", Image(decode=False))["image"]}  # noqa: E731
    assert not keys(train) & keys(dev)
    assert np.bincount(dev["label"], minlength=5).tolist() == [0, 20, 20, 20, 20]  # the head class kept all 500
    assert np.bincount(train["label"], minlength=5).tolist() == [500, 281, 158, 88, 50]
    with pytest.raises(ConfigError, match="needs imbalance_factor"):
        load_target_dataset(DataArguments(**{**vars(args), "imbalance_factor": None}))


def test_parallel_decoding_writes_the_serial_bytes(real_rows, tmp_path):
    serial = pixel_cache(real_rows, 48, str(tmp_path / "serial"), num_workers=1, chunk=5)
    parallel = pixel_cache(real_rows, 48, str(tmp_path / "parallel"), num_workers=3, chunk=5)
    assert (tmp_path / "serial").iterdir() and np.asarray(serial).any()
    np.testing.assert_array_equal(np.asarray(parallel), np.asarray(serial))
    broken = Dataset.from_dict({"image": [{"bytes": b"not an image", "path": None}] * 12}).cast_column(
        "image", Image()
    )
    with pytest.raises(ValueError, match="row 0 cannot be decoded"):
        pixel_cache(broken, 16, str(tmp_path / "broken"), num_workers=3, chunk=4)
    assert not list((tmp_path / "broken").iterdir())  # no half-written cache left


def test_two_torchrun_processes_build_the_cache_once(tiny_imagenet_dir, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    script = Path(__file__).with_name("pixel_cache_rank.py")
    parquet = tiny_imagenet_dir / "valid-00000-of-00001.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29541", str(script), str(parquet),
         str(tmp_path / "cache"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert sorted(r["decoded"] for r in ranks) == [0, 40]  # one process decoded, the other read its file
    assert ranks[0]["sum"] == ranks[1]["sum"] > 0
    assert len(list((tmp_path / "cache" / "pixels").glob("*.npy"))) == 1
