"""The downloader's files: its record store (``downloads.sqlite``), the JSONL log of earlier versions, atomic
writes, candidates as JSON."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict

from ..records_store import RecordStore
from ..search import Candidate

logger = logging.getLogger(__name__)

#: The downloader's record store in its folder: one record per candidate (its outcome, hashes and stored file).
DOWNLOADS = "downloads.sqlite"
#: What earlier versions wrote instead: migrated into :data:`DOWNLOADS` when the folder is next opened.
LEGACY_DOWNLOADS = "downloads.jsonl"


def open_downloads(folder: str, **kwargs) -> RecordStore:
    """The record store of a downloader folder (``retrieve/``, ``rank/probes/``), its JSONL log migrated once.

    Records are keyed by ``key`` (``<aux_name>\\t<source URL>``), with ``outcome`` and ``source_url`` in indexed
    columns. The image path is not indexed: its values are as random as the SHA-256 they are named by, so each insert
    dirtied a page of an index that outgrows the page cache (the commit's CPU per record doubled from 100k to 1M
    records); a store of an earlier version keeps its path index, unused.

    Example:
        >>> with open_downloads("out/retrieve") as store:  # doctest: +SKIP
        ...     store.count_by("outcome")
        {'ok': 812, 'http_error': 40, 'duplicate': 25}

    Args:
        folder: the downloader's output folder.
        kwargs: :class:`~neighbor_lt.retrieval.records_store.RecordStore` options (``batch_size``, ...).
    """
    return RecordStore(
        os.path.join(folder, DOWNLOADS),
        columns=("outcome", "source_url"),
        legacy_jsonl=os.path.join(folder, LEGACY_DOWNLOADS),
        **kwargs,
    )


def has_downloads(folder: str) -> bool:
    """Whether ``folder`` holds a downloader's records (its store, or a JSONL log still to migrate)."""
    return any(os.path.exists(os.path.join(folder, name)) for name in (DOWNLOADS, LEGACY_DOWNLOADS))


def iter_downloads(folder: str, outcome: str | list[str] | None = "ok", chunk_size: int = 10_000) -> Iterator[list]:
    """The records of a downloader folder with this ``outcome`` (None: all), ``chunk_size`` at a time; memory stays
    that of one chunk however many there are. Nothing is yielded when the folder has no records.

    Example:
        >>> for chunk in iter_downloads("out/retrieve", chunk_size=5000):  # doctest: +SKIP
        ...     embed([r["path"] for r in chunk])

    Args:
        folder: the downloader's output folder (``<output_dir>/retrieve``).
        outcome: an outcome, a list of them, or None for every record.
        chunk_size: records per chunk.
    """
    if not has_downloads(folder):
        return
    where = {} if outcome is None else {"outcome": outcome}
    # one scan: a small page cache (a writer's 64 MiB would fill with pages read once, ~60 MiB more at 50k records)
    with open_downloads(folder, cache_mib=4) as store:
        yield from store.chunks(chunk_size, **where)


def read_downloads(folder: str) -> list[dict]:
    """Every record of a downloader folder as a list (insertion order): for small folders and tests."""
    return [record for chunk in iter_downloads(folder, outcome=None) for record in chunk]


def atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def candidate_to_dict(candidate: Candidate) -> dict:
    """A candidate as a JSON-able dict (without image bytes)."""
    d = asdict(candidate)
    d.pop("image_bytes")
    return d
