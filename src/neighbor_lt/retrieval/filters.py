"""Filters of step 2 of the method: caption match, prototype similarity window, and the leak check.

The pieces: the caption test, the image embedder (threaded decoding, autocast), prototypes, the exact chunked
similarity search, the perceptual-hash leak index and the keep/drop rule. The filter stage's pass over the retrieved
images (sharded, resumable, in several processes) and its stored scores are in :mod:`.scoring`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .download.dedup import perceptual_hash
from .hamming import HammingTable, min_hamming
from .search import name_in_text

logger = logging.getLogger(__name__)


def caption_matches(name: str, caption: str) -> bool:
    """Caption filter: the normalized neighbor name occurs in the normalized caption as whole words.

    Example:
        >>> caption_matches("Great White Shark", "A great-white shark off Cape Town")
        True
        >>> caption_matches("shark", "sharkskin suit")
        False
    """
    return name_in_text(name, caption)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: str):
    """The autocast dtype of a ``precision`` setting on ``device`` (None: plain fp32).

    ``auto`` is bf16 on a CUDA device that supports it (fp16 on older ones) and fp32 elsewhere: a CPU without bf16
    units runs bf16 slower than fp32.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "auto":
        if not str(device).startswith("cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def embedding_key(model_name_or_path: str, pooling: str, precision: str = "fp32") -> str:
    """The cache key of an embedding space (a model, its pooling and, when not fp32, the autocast precision), known
    before the model is loaded."""
    name = model_name_or_path
    key = f"{os.path.abspath(name) if os.path.isdir(name) else name}|{pooling}"
    return key if precision == "fp32" else f"{key}|{precision}"


def _open_rgb(image) -> Image.Image:
    """A PIL image, or the file at a path, decoded as RGB."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


class ImageEmbedder:
    """L2-normalized image embeddings from any HF ``AutoModel`` (DINOv2, ViT, CLIP, ...), batched with a progress bar.

    Decoding and preprocessing run ``decode_threads`` batches ahead in a thread pool while the model embeds the
    current batch (PIL and numpy release the GIL for most of that work).

    Example:
        >>> embedder = ImageEmbedder("facebook/dinov2-small", pooling="cls")  # or a local folder
        >>> embedder.embed([Image.new("RGB", (64, 64))]).shape  # doctest: +SKIP
        (1, 384)
        >>> embedder.embed(["retrieve/images/ab/abcd.jpg"]).shape  # files are decoded in the threads  # doctest: +SKIP
        (1, 384)

    Args:
        model_name_or_path: Hub id or local folder holding the model and its image processor.
        pooling: "cls" (first token), "mean" (mean of patch tokens) or "pooler" (the model's pooler output).
        batch_size: images per forward pass.
        device: torch device; CUDA when available by default.
        trust_remote_code: allow code from the model's repository.
        precision: autocast of the forward pass: fp32, bf16, fp16 or auto (bf16 / fp16 on CUDA, fp32 on CPU).
        decode_threads: threads decoding and preprocessing batches ahead; 0: in the calling thread.
    """

    def __init__(
        self,
        model_name_or_path: str,
        pooling: str = "cls",
        batch_size: int = 64,
        device: str | None = None,
        trust_remote_code: bool = False,
        precision: str = "fp32",
        decode_threads: int = 0,
    ):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be cls, mean or pooler, not {pooling!r}")
        self.name, self.pooling, self.batch_size = model_name_or_path, pooling, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = autocast_dtype(precision, self.device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        self.decode_threads = decode_threads
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        self.scaling = BatchScaling.of(self.processor)
        self.model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        self.model.eval().to(self.device)

    @property
    def key(self) -> str:
        """Identifies the embedding space (cache key)."""
        return embedding_key(self.name, self.pooling, self.precision)

    def _forward(self, pixel_values):
        model = self.model
        if hasattr(model, "get_image_features"):  # CLIP / SigLIP style dual encoders
            features = model.get_image_features(pixel_values=pixel_values)
            return features if hasattr(features, "ndim") else features.pooler_output
        outputs = model(pixel_values=pixel_values)
        hidden = outputs.last_hidden_state
        if self.pooling == "pooler" or hidden.ndim != 3:  # convnets have no tokens: use their pooled output
            return outputs.pooler_output.flatten(1)
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)

    def _prepare(self, batch: list):
        """Decode (paths) and preprocess one batch: the model's pixel values."""
        images = [_open_rgb(image) for image in batch]
        if self.scaling is not None:
            return self.scaling(images)
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def _embed_pixels(self, pixel_values) -> np.ndarray:
        import torch

        device_type = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(device_type, self.dtype, enabled=self.dtype is not None):
            features = self._forward(pixel_values.to(self.device)).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()

    def embed(
        self, images: Iterable, total: int | None = None, desc: str = "embed", progress: bool = True
    ) -> np.ndarray:
        """Embed PIL images or image files (paths); returns a float32 array of unit rows.

        Args:
            images: PIL images or paths, in order.
            total: their number (for the progress bar).
            desc: the progress bar's label.
            progress: show a progress bar.
        """
        batches = batched(images, self.batch_size)
        chunks = []
        # no bar at all when none is shown: a forked scoring worker must not take tqdm's lock (held by another thread
        # of its parent at the fork, it would never be released)
        bar = tqdm(total=total, desc=desc, unit="img") if progress else None
        try:
            for pixel_values in _prefetched(self._prepare, batches, self.decode_threads):
                chunks.append(self._embed_pixels(pixel_values))
                if bar is not None:
                    bar.update(len(chunks[-1]))
        finally:
            if bar is not None:
                bar.close()
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


class BatchScaling:
    """An image processor's rescale and normalize done on the whole batch's array in place, after the processor has
    resized and cropped: the same float operations in the same order (float64 rescale, then float32
    ``(x - mean) / std``), so the same pixel values bit for bit, without the processor's per-image float64 arrays,
    strided per-channel arithmetic and copies (about 40% of a PIL image processor's time per image at a 224 px crop,
    measured on a 2-core EPYC). In numpy, so on one thread: the decode threads run it while the model holds torch's.

    Example:
        >>> scaling = BatchScaling.of(processor)  # None: use the processor's own path  # doctest: +SKIP
        >>> scaling(images).shape  # processor(images=images, return_tensors="pt")["pixel_values"]  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])

    Args:
        processor: an image processor with ``do_rescale`` / ``rescale_factor`` and ``do_normalize`` / ``image_mean``
            / ``image_std``.
    """

    def __init__(self, processor):
        self.processor = processor
        self.factor = processor.rescale_factor if getattr(processor, "do_rescale", False) else None
        self.mean = self.std = None
        if getattr(processor, "do_normalize", False):
            self.mean = np.asarray(processor.image_mean, np.float32).reshape(-1, 1, 1)
            self.std = np.asarray(processor.image_std, np.float32).reshape(-1, 1, 1)

    @classmethod
    def of(cls, processor) -> BatchScaling | None:
        """The scaling of ``processor`` when it rescales or normalizes and gives its own pixel values on probe images
        (one enlarged, one reduced); else None (another order of operations, a fused fast processor, remote code)."""
        import torch

        if not (getattr(processor, "do_rescale", False) or getattr(processor, "do_normalize", False)):
            return None
        rng = np.random.default_rng(0)
        probes = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((37, 50), (300, 211))]
        try:
            scaling = cls(processor)
            same = torch.equal(scaling(probes), processor(images=probes, return_tensors="pt")["pixel_values"])
        except Exception as e:  # a processor without these settings or keywords: its own path
            logger.debug("image processor %s: no batch scaling (%s)", type(processor).__name__, e)
            return None
        return scaling if same else None

    def __call__(self, images: list):
        import torch

        kept = self.processor(images=images, return_tensors="np", do_rescale=False, do_normalize=False)
        pixels = kept["pixel_values"]
        out = np.empty(pixels.shape, np.float32)
        if self.factor is None:
            out[...] = pixels
        else:
            scaled = np.empty(pixels.shape[1:], np.float64)
            for i, image in enumerate(pixels):  # one image at a time: its float64 copy stays in the cache
                out[i] = np.multiply(image, self.factor, out=scaled)
        if self.mean is not None:
            out -= self.mean
            out /= self.std
        return torch.from_numpy(out)


def batched(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in consecutive lists of ``size`` (the last one shorter), read as they come."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetched(prepare: Callable, batches: Iterable, threads: int):
    """``prepare(batch)`` of each batch in order, up to ``threads`` batches ahead in a thread pool (0: inline)."""
    if threads <= 0:
        yield from map(prepare, batches)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        ahead = deque()
        for batch in batches:
            ahead.append(pool.submit(prepare, batch))
            if len(ahead) > threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def iter_images(dataset, image_column: str = "image", batch_size: int = 256):
    """Decoded PIL images of a `datasets` dataset, read in batches."""
    for start in range(0, len(dataset), batch_size):
        yield from dataset[start : start + batch_size][image_column]


def cached_array(path: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``path`` (``.npz``) when it was saved under the same ``key``; otherwise compute and save it."""
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                logger.info("using cached %s", path)
                return saved["array"]
    array = compute()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.array(key), array=array)
    os.replace(tmp, path)
    return array


def dataset_key(dataset, *parts) -> str:
    """A cache key for a dataset (its fingerprint and length) plus extra parts."""
    fingerprint = getattr(dataset, "_fingerprint", None) or str(len(dataset))
    return hashlib.sha256(json.dumps([fingerprint, len(dataset), *map(str, parts)]).encode()).hexdigest()


def compute_prototypes(
    embedder: ImageEmbedder, train, num_classes: int, image_column: str = "image", label_column: str = "label"
) -> np.ndarray:
    """Unit-normalized mean embedding of each target class's training images ((num_classes, dim); zeros if empty).

    Example:
        >>> prototypes = compute_prototypes(embedder, target["train"], num_classes=200)  # doctest: +SKIP

    Args:
        embedder: an :class:`ImageEmbedder`.
        train: the target training `datasets.Dataset`.
        num_classes: number of target classes.
        image_column, label_column: its columns.
    """
    embeddings = embedder.embed(iter_images(train, image_column), total=len(train), desc="prototypes")
    labels = np.asarray(train[label_column])
    prototypes = np.zeros((num_classes, embeddings.shape[1]), np.float32)
    np.add.at(prototypes, labels, embeddings)
    norms = np.linalg.norm(prototypes, axis=1, keepdims=True)
    return np.where(norms > 0, prototypes / np.maximum(norms, 1e-12), 0).astype(np.float32)


def phash_to_int(hashes: Iterable[str]) -> np.ndarray:
    """Hex perceptual hashes (64-bit) as a uint64 array."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def max_similarity(queries: np.ndarray, references: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the largest cosine similarity to a reference row and that row's index.

    An exact search in blocks of ``chunk`` references (memory: queries x chunk, never queries x references); ties
    go to the first reference, as with one product and ``argmax``.
    """
    best = np.full(len(queries), -1.0, np.float32)
    index = np.full(len(queries), -1, np.int64)
    if len(references) == 0 or len(queries) == 0:
        return best, index
    for start in range(0, len(references), chunk):
        sims = queries @ references[start : start + chunk].T
        arg = sims.argmax(axis=1)
        value = sims[np.arange(len(queries)), arg]
        better = value > best
        best[better], index[better] = value[better], arg[better] + start
    return best, index


def decide(score: dict, gamma_low: float | None, gamma_high: float | None, leak_similarity: float | None,
           leak_phash_distance: int | None, caption_filter: bool = True) -> tuple[bool, str]:  # fmt: skip
    """Keep/drop an image from its scores; the reason is ``kept`` or the first failed check.

    Checks in order: caption (``caption``), leak by perceptual hash (``leak_phash``) or embedding
    (``leak_embedding``), prototype window (``similarity_low`` / ``similarity_high``).
    """
    if caption_filter and not score.get("caption_ok", True):
        return False, "caption"
    distance = score.get("leak_phash_distance")
    if leak_phash_distance is not None and leak_phash_distance >= 0 and distance is not None:
        if distance <= leak_phash_distance:
            return False, "leak_phash"
    leak = score.get("leak_similarity")
    if leak_similarity is not None and leak is not None and leak >= leak_similarity:
        return False, "leak_embedding"
    similarity = score.get("similarity")
    if similarity is not None:
        if gamma_low is not None and similarity < gamma_low:
            return False, "similarity_low"
        if gamma_high is not None and similarity > gamma_high:
            return False, "similarity_high"
    return True, "kept"


class PhashLeakIndex:
    """Perceptual-hash distances of candidates to the evaluation images, within ``radius``, through one multi-index
    (:class:`~neighbor_lt.retrieval.hamming.HammingTable`) built once and queried chunk by chunk.

    Example:
        >>> index = PhashLeakIndex(phash_to_int(["ff00ff00ff00ff00"]), radius=4)
        >>> index.distances([{"phash": "ff00ff00ff00ff03"}, {"phash": "0000000000000000"}])
        [2, None]

    Args:
        eval_hashes: the evaluation images' hashes (uint64).
        radius: the largest distance counted as a leak; negative: none.
    """

    def __init__(self, eval_hashes: np.ndarray, radius: int):
        self.eval_hashes, self.radius = eval_hashes, radius
        self.table = HammingTable(eval_hashes, radius) if 0 <= radius < 64 and len(eval_hashes) else None

    def distances(self, items: list[dict]) -> list[int | None]:
        """Per item (its ``phash``), the smallest distance to an evaluation image when it is at most the radius."""
        if self.radius < 0 or not len(self.eval_hashes) or not items:
            return [None] * len(items)
        queries = phash_to_int(r["phash"] for r in items)
        if self.table is None:  # radius 64 or more: every hash is within it
            distances = min_hamming(queries, self.eval_hashes)
        else:
            distances = self.table.min_distance(queries)
        return [int(d) if 0 <= d <= self.radius else None for d in distances]


def leak_phash_distances(items: list[dict], eval_hashes: np.ndarray, radius: int) -> list[int | None]:
    """Per item, the smallest perceptual-hash distance to an evaluation image when it is at most ``radius``.

    Through a multi-index over the evaluation hashes (:class:`PhashLeakIndex`), so it is cheap enough to redo with
    the current threshold on every run instead of being cached with the scores.
    """
    return PhashLeakIndex(eval_hashes, radius).distances(items)


def phashes(ds, image_column: str = "image") -> np.ndarray:
    """The perceptual hashes of a `datasets` dataset's images (uint64)."""
    images = iter_images(ds, image_column)
    return phash_to_int(perceptual_hash(im.convert("RGB")) for im in tqdm(images, total=len(ds), desc="phash"))
