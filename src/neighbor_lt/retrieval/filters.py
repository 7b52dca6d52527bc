"""Filters of step 2 of the method: caption match, prototype similarity window, and the leak check.

Scores are kept apart from decisions: embeddings and similarities are computed once (``scores.jsonl``), and the
keep/drop decision with its reason is recomputed from them on every run, so changing a threshold costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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


# ---- the filter stage's scoring ---------------------------------------------------------------------------------
@dataclass
class References:
    """What the retrieved images are scored against: the target prototypes and the evaluation images."""

    scorer_id: str
    embedder: ImageEmbedder | None = None
    prototypes: np.ndarray | None = None
    index: dict[str, int] = field(default_factory=dict)  # target class name -> prototype row
    eval_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    eval_embeddings: np.ndarray | None = None
    eval_refs: list[str] = field(default_factory=list)  # "<split>#<row>" of each evaluation image


def build_references(args, target, out: str) -> References:
    """The embedder, target prototypes and evaluation hashes / embeddings, computed once and cached under ``out``.

    Args:
        args: the filter settings (:class:`~neighbor_lt.retrieval.stages.FilterArguments`).
        target: the target set (its train split for prototypes, the others for the leak check); None when neither
            runs.
        out: the filter stage's folder (the caches).
    """
    embedder = None
    if args.model_name_or_path:
        embedder = ImageEmbedder(
            args.model_name_or_path, args.pooling, args.batch_size, args.device, args.trust_remote_code
        )
    leak_splits = []
    if args.leak_check:
        leak_splits = args.leak_splits or [s for s in target if s != args.train_split]
    scorer = json.dumps([embedder.key if embedder else None, leak_splits, args.train_split])
    refs = References(hashlib.sha256(scorer.encode()).hexdigest()[:12], embedder)
    if embedder is not None:
        train = target[args.train_split]
        names = train.features[args.label_column].names
        refs.index = {name: i for i, name in enumerate(names)}
        refs.prototypes = cached_array(
            os.path.join(out, f"prototypes-{refs.scorer_id}.npz"),
            dataset_key(train, embedder.key),
            lambda: compute_prototypes(embedder, train, len(names), args.image_column, args.label_column),
        )
    for split in leak_splits:
        ds = target[split]
        hashes = cached_array(
            os.path.join(out, f"eval-phash-{split}.npz"), dataset_key(ds, "phash"), lambda ds=ds: _phashes(ds, args)
        )
        refs.eval_hashes = np.concatenate([refs.eval_hashes, hashes])
        refs.eval_refs += [f"{split}#{i}" for i in range(len(ds))]
        if embedder is not None:
            emb = cached_array(
                os.path.join(out, f"eval-emb-{refs.scorer_id}-{split}.npz"),
                dataset_key(ds, embedder.key),
                lambda ds=ds, split=split: embedder.embed(
                    iter_images(ds, args.image_column), len(ds), f"embed {split}"
                ),
            )
            refs.eval_embeddings = emb if refs.eval_embeddings is None else np.concatenate([refs.eval_embeddings, emb])
    return refs


def score_batch(batch: list[dict], refs: References, retrieve_dir: str, desc: str) -> list[dict]:
    """One chunk's scores: caption match, perceptual-hash and embedding leak distances, prototype similarity."""
    # the class name, or the term the search matched in the caption (a synonym, for the captions backend)
    results = [
        {
            "key": r["key"],
            "caption_ok": any(caption_matches(n, r["caption"]) for n in (r["aux_name"], r.get("query")) if n),
        }
        for r in batch
    ]
    if refs.embedder is not None:
        images = (Image.open(os.path.join(retrieve_dir, r["path"])) for r in batch)
        emb = refs.embedder.embed(images, len(batch), desc=desc)
        for result, record, vector in zip(results, batch, emb):
            parents = [refs.index[n] for n in record.get("neighbor_of") or [] if n in refs.index]
            if parents:
                sims = refs.prototypes[parents] @ vector
                result["similarity"] = float(sims.max())
                result["parent"] = record["neighbor_of"][int(sims.argmax())]
            result["targets"] = list(record.get("neighbor_of") or [])
        if refs.eval_embeddings is not None:
            best, where = max_similarity(emb, refs.eval_embeddings)
            for result, value, i in zip(results, best, where):
                result["leak_similarity"], result["leak_match"] = float(value), refs.eval_refs[i]
    return results


DECISION_COLUMNS = (
    "key aux_name query sha256 phash path caption rank source_url page_url neighbor_of caption_ok similarity parent "
    "leak_similarity leak_match leak_phash_distance keep reason"
).split()


def leak_phash_distances(items: list[dict], eval_hashes: np.ndarray, radius: int) -> list[int | None]:
    """Per item, the smallest perceptual-hash distance to an evaluation image when it is at most ``radius``.

    Through a multi-index over the evaluation hashes (:class:`~neighbor_lt.retrieval.hamming.HammingTable`), so it
    is cheap enough to redo with the current threshold on every run instead of being cached with the scores.
    """
    if radius < 0 or not len(eval_hashes) or not items:
        return [None] * len(items)
    queries = phash_to_int(r["phash"] for r in items)
    if radius >= 64:
        distances = min_hamming(queries, eval_hashes)
    else:
        distances = HammingTable(eval_hashes, radius).min_distance(queries)
    return [int(d) if 0 <= d <= radius else None for d in distances]


def write_decisions(items: list[dict], scores: dict[str, dict], args, out: str, eval_hashes=None) -> Counter:
    """Decide keep or drop from the scores with the current thresholds; write ``decisions.parquet``; count reasons.

    The perceptual-hash leak distance is recomputed here from ``eval_hashes`` (None: the scores' own, as cached by
    earlier versions) and recorded only when it is within ``args.leak_phash_distance``.
    """
    import pandas as pd

    rows, reasons = [], Counter()
    near = None if eval_hashes is None else leak_phash_distances(items, eval_hashes, args.leak_phash_distance)
    for n, record in enumerate(items):
        score = scores[record["key"]]
        if near is not None:
            score = {**score, "leak_phash_distance": near[n]}
        keep, reason = decide(
            score, args.gamma_low, args.gamma_high, args.leak_similarity,
            args.leak_phash_distance, args.caption_filter,
        )  # fmt: skip
        reasons[reason] += 1
        rows.append(
            {
                **{k: record.get(k) for k in ("key", "aux_name", "query", "sha256", "phash", "path", "caption")},
                "rank": record.get("rank"),
                **{k: record.get(k) for k in ("source_url", "page_url")},
                "neighbor_of": json.dumps(record.get("neighbor_of") or []),
                **{k: score.get(k) for k in ("caption_ok", "similarity", "parent")},
                **{k: score.get(k) for k in ("leak_similarity", "leak_match", "leak_phash_distance")},
                "keep": keep,
                "reason": reason,
            }
        )
    pd.DataFrame(rows, columns=DECISION_COLUMNS).to_parquet(os.path.join(out, "decisions.parquet"), index=False)
    return reasons


def _phashes(ds, args) -> np.ndarray:
    images = iter_images(ds, args.image_column)
    return phash_to_int(perceptual_hash(im.convert("RGB")) for im in tqdm(images, total=len(ds), desc="phash"))
