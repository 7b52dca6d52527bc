"""Loading a ``datasets`` source named by a config key, with one-line errors for the usual mistakes.

A wrong path, an empty folder or an unreachable Hub id becomes a :class:`~neighbor_lt.configs.ConfigError` naming the
key (``dataset_name``, ``aux_dataset`` ...) and what to check, instead of the library's traceback; the original
error stays chained for ``--debug``.
"""

from __future__ import annotations

import os

from datasets import load_dataset

from .configs import ConfigError


def _looks_local(source: str) -> bool:
    """A path rather than a Hub id: ``./x``, ``/x``, ``~/x``, more than ``owner/name``, or a first part that exists
    here (``recipes/demo/data/axu`` is a typo of a folder, not a Hub repository)."""
    parts = source.replace(os.sep, "/").split("/")
    return source.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0]))


def load_source(key: str, source: str, *args, **kwargs):
    """``datasets.load_dataset(source, ...)`` for the config key ``key``; a wrong path, an empty folder or an
    unreachable Hub id is a :class:`ConfigError` naming the key and what to check (the traceback stays chained).

    Example:
        >>> load_source("aux_dataset", "outputs/curate/aux")  # doctest: +SKIP
    """
    try:
        return load_dataset(source, *args, **kwargs)
    except (OSError, ValueError) as err:  # FileNotFoundError, DatasetNotFoundError, ConnectionError, HFValidationError
        if isinstance(err, ConfigError):
            raise
        reason = " ".join(str(err).split())[:300]
        where = os.path.abspath(os.path.expanduser(source))
        if os.path.exists(where):
            problem = (
                f"{key} {source!r}: the folder or file is there but datasets reads no data from it ({reason}); "
                "is it the right folder (an image folder, Parquet files, or the curation's aux_dataset)?"
            )
        elif _looks_local(source) or kwargs.get("data_files"):
            problem = f"{key} {source!r}: no such folder or file (looked for {where}); check the path"
        else:
            problem = (
                f"{key} {source!r}: not a folder or file here ({os.getcwd()}) and not loadable from the Hub "
                f"({type(err).__name__}: {reason}); check the path or the Hub id (and HF_HUB_OFFLINE / your login)"
            )
        raise ConfigError(problem) from err


#: Data arguments naming a folder or file (or a Hub id): checked before any data loads.
PATH_KEYS = ("dataset_name", "aux_dataset", "neighbor_manifest", "lt_train_list", "lt_eval_list", "lt_image_root",
             "lt_class_names")  # fmt: skip


def check_data_paths(data_args) -> None:
    """Every path-like source of the data arguments exists, before any data loads (the train recipe and curation's
    ``target`` section); Hub ids and glob patterns are left to the loaders.

    Raises:
        ConfigError: ``KEY 'path': no such folder or file (looked for /abs/path); check the path``.
    """
    for key in PATH_KEYS:
        source = getattr(data_args, key, None)
        if not source or any(ch in source for ch in "*?[") or "://" in source:
            continue
        where = os.path.abspath(os.path.expanduser(source))
        if _looks_local(source) and not os.path.exists(where):
            raise ConfigError(f"{key} {source!r}: no such folder or file (looked for {where}); check the path")
