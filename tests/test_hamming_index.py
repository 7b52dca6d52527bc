"""Multi-index near-duplicate search gives the brute-force scan's answers: dedup, leak check, chunked similarity."""

import math

import numpy as np
import pytest

from neighbor_lt.retrieval.download import DedupIndex, hamming
from neighbor_lt.retrieval.filters import leak_phash_distances, max_similarity
from neighbor_lt.retrieval.hamming import HammingIndex, HammingTable, band_count, bands, min_hamming


def _hashes(rng, n):
    return rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, size=n
    ).astype(np.uint64)


def _flip(rng, value: int, bits: int) -> int:
    for b in rng.choice(64, size=bits, replace=False):
        value ^= 1 << int(b)
    return value


def _planted(rng, n, radius):
    """Random hashes, a third of them copies of an earlier one with 0..radius+1 bits flipped."""
    values = []
    for _ in range(n):
        if values and rng.random() < 0.35:
            values.append(_flip(rng, values[int(rng.integers(len(values)))], int(rng.integers(0, radius + 2))))
        else:
            values.append(int(_hashes(rng, 1)[0]))
    return values


def test_bands_cover_the_64_bits_once():
    for radius in (0, 1, 4, 9, 63):
        covered = 0
        for shift, mask, _ in bands(radius):
            assert covered & (mask << shift) == 0
            covered |= mask << shift
        assert covered == 2**64 - 1 and len(bands(radius)) == radius + 1
        for count in range(2, radius + 2) if radius < 10 else ():
            within = radius // count
            assert len(bands(radius, count)) == count
            assert all(len(flips) == sum(math.comb(mask.bit_count(), k) for k in range(within + 1))
                       for _, mask, flips in bands(radius, count))  # fmt: skip
    assert band_count(3, 100) == 4 and band_count(3, 10**6) == 2  # both kinds of search are exercised below
    with pytest.raises(ValueError, match="radius"):
        bands(64)
    with pytest.raises(ValueError, match="bands"):
        bands(4, 6)
    with pytest.raises(ValueError, match="more bands"):
        bands(63, 1)


# a small capacity: radius + 1 equal bands; a large one: a few wide bands, each searched within a few bits
@pytest.mark.parametrize(
    "radius, capacity", [(1, 100), (3, 100), (6, 100), (12, 100), (3, 10**6), (4, 10**6), (6, 10**6)]
)
def test_first_within_is_the_scans_first_match(radius, capacity):
    rng = np.random.default_rng(radius)
    index, stored, found_near = HammingIndex(radius, capacity), [], 0
    for value in _planted(rng, 1500, radius):
        expected = next((i for i, h in enumerate(stored) if (h ^ value).bit_count() <= radius), None)
        assert index.first_within(value) == expected
        found_near += expected is not None
        if expected is None:
            stored.append(value)
            index.add(value)
    assert found_near > 100  # the planted near-duplicates were there to find
    assert len(index._bands) == band_count(radius, capacity)


@pytest.mark.parametrize("radius", [0, 2, 4, 10, 20])
def test_table_min_distance_is_the_scans_within_the_radius(radius):
    rng = np.random.default_rng(100 + radius)
    refs = np.array(_planted(rng, 800, radius), dtype=np.uint64)
    near = [_flip(rng, int(refs[i]), int(rng.integers(0, radius + 3))) for i in rng.integers(0, len(refs), 400)]
    queries = np.concatenate([np.array(near, np.uint64), _hashes(rng, 400)])
    scan = min_hamming(queries, refs)
    got = HammingTable(refs, radius).min_distance(queries, chunk=97)
    assert np.array_equal(got, np.where(scan <= radius, scan, -1))
    assert (got >= 0).sum() > 100  # the planted near-duplicates were there to find
    assert HammingTable(np.zeros(0, np.uint64), radius).min_distance(queries).tolist() == [-1] * len(queries)


def test_leak_distances_of_items_keep_only_those_within_the_threshold():
    refs = np.array([0xFF00FF00FF00FF00, 0x0123456789ABCDEF], np.uint64)
    items = [{"phash": "ff00ff00ff00ff03"}, {"phash": "0123456789abcdef"}, {"phash": "f0f0f0f0f0f0f0f0"}]
    assert leak_phash_distances(items, refs, 4) == [2, 0, None]
    assert leak_phash_distances(items, refs, 1) == [None, 0, None]
    assert leak_phash_distances(items, refs, -1) == [None, None, None]
    assert leak_phash_distances(items, refs, 64)[2] == hamming("f0f0f0f0f0f0f0f0", "ff00ff00ff00ff00")


def _scan_dedup(claims, distance):
    """The download loop's former scan of every kept hash, the reference for the index."""
    sha, phash, out = {}, {}, []
    for key, s, p in claims:
        first = sha.get(s)
        if first is None:
            if p in phash:
                first = phash[p]
            else:
                first = next((k for h, k in phash.items() if hamming(h, p) <= distance), None)
        if first is None:
            sha[s] = phash[p] = key
        out.append(first)
    return out


@pytest.mark.parametrize("distance", [1, 4, 8])
def test_dedup_index_claims_as_the_scan_did(distance):
    rng = np.random.default_rng(distance)
    values = _planted(rng, 2000, distance)
    claims = [(f"k{i}", f"sha{int(rng.integers(1900))}", f"{v:016x}") for i, v in enumerate(values)]
    index = DedupIndex(phash_distance=distance)
    got = [index.claim(*claim) for claim in claims]
    assert got == _scan_dedup(claims, distance)
    assert sum(g is not None for g in got) > 300


def test_max_similarity_in_blocks_equals_one_product():
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((1000, 16)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    refs[500] = refs[20]  # a tie: the first reference wins either way
    queries = np.concatenate([refs[[20, 7]], rng.standard_normal((50, 16)).astype(np.float32)])
    sims = queries @ refs.T
    best, where = max_similarity(queries, refs, chunk=37)
    assert np.array_equal(where, sims.argmax(axis=1)) and np.allclose(best, sims.max(axis=1))
    assert where[0] == 20
