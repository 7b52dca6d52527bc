"""The fast input path: decode every training image once into a uint8 cache, augment whole batches as tensors.

``input_pipeline: tensor`` in a training YAML switches ``recipes/train.py`` to it:

1. :func:`pixel_cache` decodes and resizes every training image once (short side to ``size``, centre square crop) into
   a ``[N, 3, size, size]`` uint8 array on disk (a ``.npy`` file, memory-mapped), keyed by the dataset's fingerprint
   and the size, so every later run and every variant of an ablation reuses it.
2. :class:`CachedImageDataset` serves rows of that cache (target rows, then auxiliary rows, as
   :class:`~neighbor_lt.data.MergedImageDataset`); its ``__getitems__`` returns a whole batch with one indexing
   operation, so the DataLoader needs no worker processes.
3. :class:`BatchAugment` turns the uint8 batch into normalised float pixels on the training device: random-resized
   crop and horizontal flip (one ``grid_sample`` for the batch), RandAugment when configured (batched, when available),
   normalisation. ``NeighborSilencingTrainer.compute_loss`` applies it; Mixup / CutMix follow as before.

Evaluation keeps the model's own image processor (what ``pipeline(...)`` gives the published model).

On a 2-core CPU the PIL path spends most of its time decoding and augmenting; on a GPU this path moves the
augmentation to the device. The cache costs ``3 * size * size`` bytes per image (12 KiB at 64 px, 147 KiB at 224 px).
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from .cores import usable_cores
from .data import MergedImageDataset

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
INPUT_PIPELINES = ("pil", "tensor")


def default_cache_dir() -> str:
    """``$NEIGHBOR_LT_CACHE`` or ``~/.cache/neighbor_lt``, plus ``pixels``."""
    root = os.environ.get("NEIGHBOR_LT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "neighbor_lt")
    return os.path.join(root, "pixels")


def _decode_square(item: dict, size: int) -> np.ndarray:
    image = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") else Image.open(item["path"])
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (nw, nh) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _decode_rows(raw: Dataset, array: np.ndarray, start: int, stop: int, size: int, where: str) -> None:
    """Decode rows ``start..stop-1`` into their rows of ``array`` (chunks write disjoint rows: no lock needed)."""
    for offset, item in enumerate(raw[start:stop]["image"]):
        try:
            array[start + offset] = _decode_square(item, size)
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(
                f"{where} image at row {start + offset} cannot be decoded ({err}); remove or fix that row"
            ) from err


def _decode_workers(num_workers: int | None) -> int:
    if num_workers is not None:
        return max(1, int(num_workers))
    return min(8, usable_cores())


def pixel_cache(
    dataset: Dataset,
    size: int,
    cache_dir: str | None = None,
    where: str = "dataset",
    num_workers: int | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """A ``[len(dataset), 3, size, size]`` uint8 array of the dataset's ``image`` column, decoded once and reused.

    The array lives in ``cache_dir`` (:func:`default_cache_dir` when None) as ``<fingerprint>-<size>.npy`` and is
    returned memory-mapped; it is written to a temporary file and renamed when complete, so an interrupted run never
    leaves a half-written cache behind. Chunks of ``chunk`` rows are decoded by a pool of ``num_workers`` threads
    (PIL's decoding and resizing release the GIL), each writing its own rows, so the bytes are the serial ones.
    Under ``torchrun`` build it in the main process first (:func:`make_train_dataset` does), and the others read it.

    Args:
        dataset: rows with an ``image`` column.
        size: the side of the stored square.
        cache_dir: the folder of the cache files.
        where: names the dataset in messages.
        num_workers: decoding threads; None: the usable CPUs, at most 8; 1: serial.
        chunk: rows per task.

    Example:
        >>> pixels = pixel_cache(target["train"], 64)  # first call decodes, later calls open the file

    Raises:
        ValueError: an image that cannot be decoded, naming its row (fix or drop that row).
    """
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    fingerprint = getattr(dataset, "_fingerprint", None)
    path = os.path.join(cache_dir, f"v{CACHE_VERSION}-{fingerprint}-{size}.npy")
    if fingerprint and os.path.exists(path):
        array = np.load(path, mmap_mode="r")
        if array.shape == (len(dataset), 3, size, size):
            return array
        logger.warning("pixel cache %s has shape %s, expected %s: rebuilding", path, array.shape, len(dataset))
    raw = dataset.select_columns(["image"]).cast_column("image", ImageFeature(decode=False))
    tmp = f"{path}.{os.getpid()}.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(dataset), 3, size, size))
    try:
        starts = range(0, len(raw), chunk)
        workers = min(_decode_workers(num_workers), max(1, len(starts)))
        if workers == 1:
            for start in starts:
                _decode_rows(raw, array, start, start + chunk, size, where)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="pixel-cache") as pool:
                # results in chunk order: the first bad chunk's error is raised, as in the serial loop
                for _ in pool.map(lambda s, out=array: _decode_rows(raw, out, s, s + chunk, size, where), starts):
                    pass
        array.flush()
        del array
        if fingerprint:
            os.replace(tmp, path)
        else:  # an in-memory dataset without a fingerprint: keep the decoded pixels, never reuse them
            path = tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("decoded %d %s images at %d px into %s", len(dataset), where, size, path)
    return np.load(path, mmap_mode="r")


class CachedImageDataset(MergedImageDataset):
    """Target rows ``0..N_t-1`` then auxiliary rows (labels shifted by ``L``) as uint8 ``[3, S, S]`` tensors.

    The same rows and labels as :class:`~neighbor_lt.data.MergedImageDataset`, so the
    :class:`~neighbor_lt.data.AuxiliaryCappedSampler` indexes it the same way; pixels come from :func:`pixel_cache`.

    Example:
        >>> train = CachedImageDataset(target["train"], aux, num_targets=100, size=64)
    """

    def __init__(
        self, target: Dataset, aux: Dataset | None, num_targets: int, size: int, cache_dir: str | None = None
    ):
        super().__init__(target, aux, num_targets)  # rows, labels and their order
        self.size = int(size)
        self.target_pixels = pixel_cache(target, self.size, cache_dir, where="target")
        self.aux_pixels = pixel_cache(aux, self.size, cache_dir, where="auxiliary") if aux is not None else None

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {"pixel_values": batch["pixel_values"][0], "labels": int(batch["labels"][0])}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A whole batch: ``{"pixel_values": uint8 [B, 3, S, S], "labels": int64 [B]}`` (one read per source)."""
        indices = np.asarray(indices, dtype=np.int64)
        n_t = len(self.target_labels)
        pixels = np.empty((len(indices), 3, self.size, self.size), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        is_target = indices < n_t
        if is_target.any():
            rows = indices[is_target]
            pixels[is_target] = self.target_pixels[rows]
            labels[is_target] = self.target_labels[rows]
        if (~is_target).any():
            rows = indices[~is_target] - n_t
            pixels[~is_target] = self.aux_pixels[rows]
            labels[~is_target] = self.aux_labels[rows] + self.num_targets
        return {"pixel_values": torch.from_numpy(pixels), "labels": torch.from_numpy(labels)}


def collate_batch(features) -> dict:
    """Collator for :class:`CachedImageDataset`: passes a ``__getitems__`` batch through, stacks single rows."""
    if isinstance(features, dict):
        return features
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.int64),
    }


class BatchAugment:
    """uint8 ``[B, 3, H, W]`` -> normalised float ``[B, 3, size, size]`` on the batch's device.

    Training: a random-resized crop (area ``crop_scale``, aspect ratio 3/4..4/3, the same sampling as
    :class:`~neighbor_lt.augment.ImageTransform`) and a horizontal flip per image, all drawn at once and applied with
    one bilinear ``grid_sample``; then RandAugment (batched) when ``rand_augment`` is a spec; then normalisation; then
    :class:`~neighbor_lt.augment.RandomErasing` with probability ``random_erasing``.
    Evaluation (``train=False``): resize to ``size`` and normalise.

    Example:
        >>> augment = BatchAugment(64, IMAGENET_MEAN, IMAGENET_STD, crop_scale=(0.35, 1.0))
        >>> pixel_values = augment(batch["pixel_values"], train=True)
    """

    def __init__(
        self,
        size,
        mean,
        std,
        crop_scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        rand_augment=None,
        random_erasing=0.0,
    ):
        from .augment import RandomErasing

        self.size, self.crop_scale, self.ratio, self.hflip = int(size), tuple(crop_scale), tuple(ratio), hflip
        self.random_erasing = RandomErasing(random_erasing) if random_erasing else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.rand_augment = None
        if rand_augment:
            from . import augment as _augment

            batch_cls = getattr(_augment, "BatchRandAugment", None)
            if batch_cls is None:
                raise ValueError("rand_augment with input_pipeline 'tensor' needs a batched RandAugment")
            self.rand_augment = batch_cls.from_spec(rand_augment)

    def crop_boxes(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, 4]`` (width, height, centre x, centre y) as fractions of the image side.

        10 tries per image as torchvision / timm, then the full image (a centre crop of the square image)."""
        tries = 10
        area = torch.empty(batch, tries).uniform_(*self.crop_scale, generator=generator)
        log_ratio = torch.empty(batch, tries).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator
        )
        aspect = torch.exp(log_ratio)
        w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        ok = (w <= 1) & (h <= 1)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((batch,), -1))
        rows = torch.arange(batch)
        w = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.ones(batch))
        h = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.ones(batch))
        cx = w / 2 + torch.rand(batch, generator=generator) * (1 - w)
        cy = h / 2 + torch.rand(batch, generator=generator) * (1 - h)
        return torch.stack([w, h, cx, cy], 1)

    def __call__(self, pixels: torch.Tensor, train: bool = True, generator: torch.Generator | None = None):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise TypeError(f"expected a uint8 [B, 3, H, W] batch, got {pixels.dtype} {tuple(pixels.shape)}")
        device = pixels.device
        x = pixels.float()
        b = x.shape[0]
        if train:
            w, h, cx, cy = self.crop_boxes(b, generator).to(device).unbind(1)
            flip = torch.rand(b, generator=generator).to(device) < self.hflip
            theta = torch.zeros(b, 2, 3, device=device)
            theta[:, 0, 0] = torch.where(flip, -w, w)
            theta[:, 0, 2] = 2 * cx - 1
            theta[:, 1, 1] = h
            theta[:, 1, 2] = 2 * cy - 1
            grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            if self.rand_augment is not None:
                x = self.rand_augment(x.clamp_(0, 255))
        elif x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean.to(device)) / self.std.to(device)
        if train and self.random_erasing is not None:  # on normalised pixels, as timm
            x = self.random_erasing(x, generator)
        return x


def make_train_dataset(data_args, training_args, target, aux, num_targets: int, size: int, mean, std):
    """The training dataset of ``data_args.input_pipeline``, as ``recipes/train.py`` builds it.

    Returns:
        (dataset, batch_augment, collator): for ``pil`` a :class:`~neighbor_lt.data.MergedImageDataset` with an
        :class:`~neighbor_lt.augment.ImageTransform` (batch_augment and collator None: the Trainer's defaults); for
        ``tensor`` a :class:`CachedImageDataset`, a :class:`BatchAugment` for the Trainer and :func:`collate_batch`.
    """
    crop_scale, erasing = (data_args.crop_min_scale, 1), training_args.random_erasing
    if data_args.input_pipeline == "tensor":
        # under torchrun the local main process decodes the cache while the others wait, then they open its file
        with training_args.main_process_first(desc="pixel cache"):
            dataset = CachedImageDataset(target, aux, num_targets, size, data_args.pixel_cache_dir)
        augment = BatchAugment(
            size, mean, std, crop_scale=crop_scale, rand_augment=training_args.rand_augment, random_erasing=erasing
        )
        return dataset, augment, collate_batch
    if data_args.input_pipeline != "pil":
        raise ValueError(f"input_pipeline must be one of {INPUT_PIPELINES}, got {data_args.input_pipeline!r}")
    from .augment import ImageTransform

    transform = ImageTransform(
        size,
        mean,
        std,
        train=True,
        rand_augment=training_args.rand_augment,
        crop_scale=crop_scale,
        random_erasing=erasing,
    )
    return MergedImageDataset(target, aux, num_targets, transform), None, None
