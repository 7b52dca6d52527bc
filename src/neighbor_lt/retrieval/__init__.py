"""Auxiliary image acquisition: search backends, the guarded downloader, filters and the dataset builder.

Example:
    >>> from neighbor_lt.retrieval import get_search_backend
    >>> pool = get_search_backend("pool", data_files="train-*.parquet", caption_column="words")  # doctest: +SKIP
"""

import os

# img2dataset (the web-scale hand-off) imports albumentations, which otherwise asks a package index for its latest
# version at import time: a network request nobody asked for, and a hang on an offline machine
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# the search registry first (light imports): search.py registers captions.py, which subclasses search.py's base
from . import search as _search  # noqa: E402, F401

# Attributes load on first use (PEP 562): a download process imports only the downloader, not the builder's and
# card's Hub and datasets imports (~0.3 s of CPU in every process).
_ATTRIBUTES = {
    "aux_features": "builder",
    "select_per_class": "builder",
    "write_aux_dataset": "builder",
    "render_dataset_card": "card",
    "AddressGuard": "download",
    "DownloadConfig": "download",
    "Downloader": "download",
    "iter_img2dataset": "download",
    "ImageEmbedder": "filters",
    "caption_matches": "filters",
    "compute_prototypes": "filters",
    "decide": "filters",
    "SEARCH_BACKENDS": "search",
    "Candidate": "search",
    "get_search_backend": "search",
}


def __getattr__(name: str):
    if name in _ATTRIBUTES:
        import importlib

        value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ATTRIBUTES))


__all__ = [
    "SEARCH_BACKENDS",
    "AddressGuard",
    "Candidate",
    "DownloadConfig",
    "Downloader",
    "ImageEmbedder",
    "aux_features",
    "caption_matches",
    "compute_prototypes",
    "decide",
    "get_search_backend",
    "iter_img2dataset",
    "render_dataset_card",
    "select_per_class",
    "write_aux_dataset",
]
