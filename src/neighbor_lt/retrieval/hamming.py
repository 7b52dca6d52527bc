"""Near neighbours of 64-bit perceptual hashes by multi-index hashing, instead of a scan of every stored hash.

The 64 bits are cut into ``m`` bands. Two hashes within Hamming distance ``radius`` differ in at most ``radius``
bits, so by the pigeonhole principle at least one band differs in at most ``radius // m`` bits (with ``radius + 1``
bands: one band is equal). Looking each band up in a hash table (or a sorted array), with every key within
``radius // m`` bits of the query's band, gives every hash that can be within the radius, and the full distance is
then checked on those candidates only. The answers are the brute-force scan's, exactly; the work per query is the
lookups plus the candidates instead of every stored hash. ``m`` is chosen for the expected number of hashes: many
short bands (equal bands only) for small sets, fewer wider bands (a few keys each) for millions, where short bands
would return too many candidates.

Example:
    >>> index = HammingIndex(radius=2)
    >>> index.add(0xFF00FF00FF00FF00), index.add(0x0F0F0F0F0F0F0F0F)
    (0, 1)
    >>> index.first_within(0xFF00FF00FF00FF03)
    0
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["HammingIndex", "HammingTable", "bands", "band_count", "min_hamming"]


def bands(radius: int, count: int | None = None) -> list[tuple[int, int, list[int]]]:
    """``(shift, mask, flips)`` of ``count`` bands (as equal as possible) that cover the 64 bits; ``flips`` are the
    XOR masks of every key within ``radius // count`` bits of a band value (0 first).

    Args:
        radius: the largest Hamming distance searched, 0 to 63.
        count: bands, 1 to ``radius + 1``; None: ``radius + 1`` (equal bands only).
    """
    if not 0 <= radius < 64:
        raise ValueError(f"radius must be between 0 and 63 (got {radius}); a radius of 64 matches every hash")
    count = radius + 1 if count is None else count
    if not 1 <= count <= radius + 1:
        raise ValueError(f"bands must be between 1 and radius + 1 = {radius + 1} (got {count})")
    within = radius // count
    if sum(math.comb(64 // count + 1, k) for k in range(within + 1)) > 1_000_000:
        raise ValueError(f"{count} bands for radius {radius} need millions of lookups per query: use more bands")
    out, shift = [], 0
    for i in range(count):
        width = 64 // count + (1 if i < 64 % count else 0)
        flips = [
            sum(1 << b for b in bits) for k in range(within + 1) for bits in itertools.combinations(range(width), k)
        ]
        out.append((shift, (1 << width) - 1, flips))
        shift += width
    return out


def band_count(radius: int, size: int) -> int:
    """The number of bands with the least expected work (lookups + candidates) for ``size`` uniform hashes."""

    def cost(m: int) -> float:
        width, within = 64 // m, radius // m
        lookups = m * sum(math.comb(width, k) for k in range(within + 1))
        return lookups * (1 + 4 * size / 2**width)  # a candidate's check costs about four lookups

    return min(range(1, min(radius, 63) + 2), key=cost)


class HammingIndex:
    """A growing set of 64-bit hashes (Python ints) answering "the first added hash within ``radius``".

    Thread safety is the caller's (the download loop holds its own lock around ``add`` / ``first_within``).

    Example:
        >>> index = HammingIndex(radius=1)
        >>> index.add(0b1010)
        0
        >>> index.first_within(0b1011), index.first_within(0b0101)
        (0, None)

    Args:
        radius: the largest Hamming distance counted as near, 0 to 63.
        capacity: the number of hashes expected; it picks the bands (:func:`band_count`), never limits the size.
    """

    def __init__(self, radius: int, capacity: int = 1_000_000):
        self.radius = radius
        self._bands = bands(radius, band_count(radius, capacity))
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._bands]
        self._values: list[int] = []

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: int) -> int:
        """Store ``value``; returns its id (ids count up from 0 in the order of adding)."""
        i = len(self._values)
        self._values.append(value)
        for (shift, mask, _), table in zip(self._bands, self._tables):
            table.setdefault((value >> shift) & mask, []).append(i)
        return i

    def first_within(self, value: int) -> int | None:
        """The smallest id whose hash is within ``radius`` of ``value``, or None."""
        best, values, radius = None, self._values, self.radius
        for (shift, mask, flips), table in zip(self._bands, self._tables):
            key = (value >> shift) & mask
            for flip in flips:
                for i in table.get(key ^ flip, ()):
                    if best is not None and i >= best:
                        break  # ids in a bucket are ascending: nothing smaller follows
                    if (values[i] ^ value).bit_count() <= radius:
                        best = i
                        break
        return best


def min_hamming(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each 64-bit query hash, the smallest Hamming distance to any reference hash (64 when none), by a scan."""
    out = np.full(len(queries), 64, dtype=np.int64)
    if len(references) == 0:
        return out
    for start in range(0, len(queries), chunk):
        xor = queries[start : start + chunk, None] ^ references[None, :]
        out[start : start + chunk] = np.bitwise_count(xor).min(axis=1)
    return out


class HammingTable:
    """A fixed set of reference hashes (``uint64``) answering, for many queries at once, the smallest distance
    when it is at most ``radius``.

    Each band is a sorted array searched with ``np.searchsorted``, and queries go in chunks, so memory is the
    references plus one chunk's candidate pairs.

    Example:
        >>> table = HammingTable(np.array([0, 0xFF], np.uint64), radius=3)
        >>> table.min_distance(np.array([1, 0xF0F0F0F0F0F0F0F0], np.uint64)).tolist()
        [1, -1]

    Args:
        references: the reference hashes.
        radius: the largest distance reported, 0 to 63.
    """

    def __init__(self, references: np.ndarray, radius: int):
        self.references = np.asarray(references, dtype=np.uint64)
        self.radius = radius
        self._bands = []
        for shift, mask, flips in bands(radius, band_count(radius, len(self.references))):
            keys = (self.references >> np.uint64(shift)) & np.uint64(mask)
            order = np.argsort(keys, kind="stable")
            self._bands.append((np.uint64(shift), np.uint64(mask), np.array(flips, np.uint64), keys[order], order))

    def min_distance(self, queries: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Per query, the smallest distance to a reference when it is at most ``radius``, else -1."""
        queries = np.asarray(queries, dtype=np.uint64)
        out = np.full(len(queries), -1, dtype=np.int64)
        for start in range(0, len(queries), chunk):
            out[start : start + chunk] = self._chunk(queries[start : start + chunk])
        return out

    def _chunk(self, queries: np.ndarray) -> np.ndarray:
        far = self.radius + 1
        best = np.full(len(queries), far, dtype=np.int64)
        for shift, mask, flips, keys, order in self._bands:
            for flip in flips:
                self._band(queries, ((queries >> shift) & mask) ^ flip, keys, order, best)
        return np.where(best <= self.radius, best, -1)

    def _band(self, queries, wanted, keys, order, best) -> None:
        """Lower ``best`` (per query) by the references whose band equals ``wanted``."""
        lo, hi = np.searchsorted(keys, wanted, "left"), np.searchsorted(keys, wanted, "right")
        counts = hi - lo
        total = int(counts.sum())
        if not total:
            return
        query_ids = np.repeat(np.arange(len(queries)), counts)
        # positions lo..hi-1 of every query, laid end to end
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        ref_ids = order[np.repeat(lo, counts) + offsets]
        distance = np.bitwise_count(queries[query_ids] ^ self.references[ref_ids]).astype(np.int64)
        np.minimum.at(best, query_ids, np.minimum(distance, self.radius + 1))
