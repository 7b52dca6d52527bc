"""Auxiliary image acquisition: search backends, the guarded downloader, filters and the dataset builder.

Example:
    >>> from neighbor_lt.retrieval import get_search_backend
    >>> pool = get_search_backend("pool", data_files="train-*.parquet", caption_column="words")  # doctest: +SKIP
"""

import os

# img2dataset (the web-scale hand-off) imports albumentations, which otherwise asks a package index for its latest
# version at import time: a network request nobody asked for, and a hang on an offline machine
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


from .builder import aux_features, select_per_class, write_aux_dataset
from .card import render_dataset_card
from .download import AddressGuard, DownloadConfig, Downloader, iter_img2dataset
from .filters import ImageEmbedder, caption_matches, compute_prototypes, decide
from .search import SEARCH_BACKENDS, Candidate, get_search_backend

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
