"""Neighbor category search (step 1 of the method): backends chosen by name, leak guard, cache and manifest.

Example:
    >>> from neighbor_lt.neighbors import get_backend
    >>> backend = get_backend("static", mapping={"goldfish": ["koi"]})
    >>> backend.name
    'static'
"""

from __future__ import annotations

import importlib

# Backend name -> "module:class". Add a backend here, or at run time with `register_backend` (tests use fakes).
BACKENDS = {
    "openai": "neighbor_lt.neighbors.llm:OpenAIBackend",
    "wordnet": "neighbor_lt.neighbors.wordnet:WordNetBackend",
    "static": "neighbor_lt.neighbors.base:StaticBackend",
}


def register_backend(name: str, target) -> None:
    """Register a backend class (or a ``"module:Class"`` string) under ``name``."""
    BACKENDS[name] = target


def resolve_backend(name: str):
    """The backend class registered under ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown neighbor backend {name!r}; choose from {sorted(BACKENDS)}")
    target = BACKENDS[name]
    if isinstance(target, str):
        module, attr = target.split(":")
        target = getattr(importlib.import_module(module), attr)
    return target


def get_backend(name: str, **kwargs):
    """Build the neighbor backend registered under ``name``.

    Example:
        >>> get_backend("wordnet", depth=2).settings()["depth"]
        2

    Args:
        name: ``openai``, ``wordnet``, ``static`` or a registered name.
        **kwargs: the backend's own settings (see each backend class).
    """
    return resolve_backend(name)(**kwargs)


__all__ = ["BACKENDS", "get_backend", "register_backend", "resolve_backend"]
