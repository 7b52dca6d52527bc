"""Filters of step 2 of the method: caption match, prototype similarity window, and the leak check.

Scores are kept apart from decisions: embeddings and similarities are computed once (``scores.jsonl``), and the
keep/drop decision with its reason is recomputed from them on every run, so changing a threshold costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

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


def embedding_key(model_name_or_path: str, pooling: str) -> str:
    """The cache key of an embedding space (a model and its pooling), known before the model is loaded."""
    name = model_name_or_path
    return f"{os.path.abspath(name) if os.path.isdir(name) else name}|{pooling}"


class ImageEmbedder:
    """L2-normalized image embeddings from any HF ``AutoModel`` (DINOv2, ViT, CLIP, ...), batched with a progress bar.

    Example:
        >>> embedder = ImageEmbedder("facebook/dinov2-small", pooling="cls")  # or a local folder
        >>> embedder.embed([Image.new("RGB", (64, 64))]).shape  # doctest: +SKIP
        (1, 384)

    Args:
        model_name_or_path: Hub id or local folder holding the model and its image processor.
        pooling: "cls" (first token), "mean" (mean of patch tokens) or "pooler" (the model's pooler output).
        batch_size: images per forward pass.
        device: torch device; CUDA when available by default.
        trust_remote_code: allow code from the model's repository.
    """

    def __init__(
        self,
        model_name_or_path: str,
        pooling: str = "cls",
        batch_size: int = 64,
        device: str | None = None,
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be cls, mean or pooler, not {pooling!r}")
        self.name, self.pooling, self.batch_size = model_name_or_path, pooling, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        self.model.eval().to(self.device)

    @property
    def key(self) -> str:
        """Identifies the embedding space (cache key)."""
        return embedding_key(self.name, self.pooling)

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

    def embed(self, images: Iterable[Image.Image], total: int | None = None, desc: str = "embed") -> np.ndarray:
        """Embed PIL images; returns a float32 array of unit rows."""
        import torch

        chunks, batch = [], []

        def flush():
            inputs = self.processor(images=batch, return_tensors="pt")
            with torch.no_grad():
                features = self._forward(inputs["pixel_values"].to(self.device)).float()
            chunks.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
            batch.clear()

        for image in tqdm(images, total=total, desc=desc, unit="img"):
            batch.append(image.convert("RGB"))
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


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


def min_hamming(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each 64-bit query hash, the smallest Hamming distance to any reference hash (64 when none)."""
    out = np.full(len(queries), 64, dtype=np.int64)
    if len(references) == 0:
        return out
    for start in range(0, len(queries), chunk):
        xor = queries[start : start + chunk, None] ^ references[None, :]
        out[start : start + chunk] = np.bitwise_count(xor).min(axis=1)
    return out


def max_similarity(queries: np.ndarray, references: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the largest cosine similarity to a reference row and that row's index."""
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
