"""Duplicates: the same bytes (SHA-256), a near-identical picture (perceptual hash), or the same URL."""

from __future__ import annotations

import os
import threading

import numpy as np
from PIL import Image

from ..hamming import HammingIndex


def image_path(sha256: str) -> str:
    """Where a stored image lives, relative to the downloader's folder: ``images/<sha256[:2]>/<sha256>.jpg``."""
    return os.path.join("images", sha256[:2], f"{sha256}.jpg")


def hamming(a: str, b: str) -> int:
    """Hamming distance between two hex-encoded perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


_DCT_LOW: np.ndarray | None = None


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit perceptual hash of ``image`` as 16 hex digits, bit for bit ``str(imagehash.phash(image))``.

    The same algorithm (greyscale, Lanczos resize to 32x32, 2-D DCT-II, the 8x8 lowest frequencies against their
    median) with the DCT as two small matrix products instead of two FFT calls: less than half the CPU, which matters
    at a few hundred images per second.
    """
    global _DCT_LOW
    if _DCT_LOW is None:  # scipy.fftpack.dct's unnormalised DCT-II: 2 cos(pi k (2n + 1) / 2N), first 8 rows
        k, n = np.arange(8)[:, None], np.arange(32)[None, :]
        _DCT_LOW = 2.0 * np.cos(np.pi * k * (2 * n + 1) / 64)
    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = np.round(_DCT_LOW @ pixels @ _DCT_LOW.T, 6)  # float noise must not decide ties (flat images)
    return np.packbits((low > np.median(low)).ravel()).tobytes().hex()


class DedupIndex:
    """What a run has seen, shared by its threads: image SHA-256 and perceptual hash -> the first record's key (a URL
    found by several queries is found in the record store instead: :meth:`~.downloader.Downloader.url_result`).

    Near perceptual hashes are looked up through a multi-index (:class:`~neighbor_lt.retrieval.hamming.HammingIndex`),
    not a scan of every kept hash; the answer is the scan's: an equal hash first, else the earliest kept hash within
    the distance.

    Args:
        phash_distance: perceptual-hash Hamming distance counted as the same picture; 0: equal hashes only; -1: off.
    """

    def __init__(self, phash_distance: int = 0):
        self.phash_distance = phash_distance
        self.lock = threading.Lock()
        self._sha: dict[str, str] = {}  # sha256 -> key of the first record
        self._phash: dict[str, str] = {}
        self._near = HammingIndex(min(phash_distance, 63)) if phash_distance > 0 else None
        self._near_keys: list[str] = []  # HammingIndex id -> the key of that hash's first record

    def add_stored(self, record: dict) -> None:
        """Index an ``ok`` record of an earlier run (its image is the first of its hashes unless one came before)."""
        self._sha.setdefault(record["sha256"], record["key"])
        self._keep_phash(record["phash"], record["key"])

    def stored(self, sha256: str) -> bool:
        """Whether an image with this SHA-256 was stored (by an earlier run or a claim of this one)."""
        return sha256 in self._sha

    def claim(self, key: str, sha256: str, phash: str) -> str | None:
        """The key of an earlier image with these hashes, or None after recording ``key`` as their first image."""
        with self.lock:
            first = self._sha.get(sha256) or self._find_phash(phash)
            if first is None:
                self._sha[sha256] = key
                self._keep_phash(phash, key)
            return first

    def _keep_phash(self, phash: str, key: str) -> None:
        if phash in self._phash:
            return
        self._phash[phash] = key
        if self._near is not None:
            self._near.add(int(phash, 16))
            self._near_keys.append(key)

    def _find_phash(self, phash: str) -> str | None:
        if self.phash_distance < 0:
            return None
        if phash in self._phash or self._near is None:
            return self._phash.get(phash)
        if self.phash_distance >= 64:  # every hash is within 64 bits
            return self._near_keys[0] if self._near_keys else None
        first = self._near.first_within(int(phash, 16))
        return None if first is None else self._near_keys[first]
