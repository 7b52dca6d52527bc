"""Neighbor category search (step 1 of the method): backends chosen by name, leak guard, cache and manifest.

Example:
    >>> from neighbor_lt.neighbors import get_neighbor_backend
    >>> backend = get_neighbor_backend("static", mapping={"goldfish": ["koi"]})
    >>> backend.name
    'static'
"""

from __future__ import annotations

from neighbor_lt.neighbors.base import NeighborBackend, StaticBackend
from neighbor_lt.neighbors.llm import OpenAIBackend
from neighbor_lt.neighbors.wordnet import WordNetBackend

#: Backend name -> class. A new backend subclasses ``NeighborBackend`` (with its own ``Options`` dataclass) and is
#: added here; tests swap in a fake with ``monkeypatch.setitem(NEIGHBOR_BACKENDS, "fake", FakeBackend)``.
NEIGHBOR_BACKENDS: dict[str, type[NeighborBackend]] = {
    "openai": OpenAIBackend,
    "wordnet": WordNetBackend,
    "static": StaticBackend,
}


def get_neighbor_backend(name: str, **options) -> NeighborBackend:
    """Build the neighbor backend registered under ``name``.

    Example:
        >>> get_neighbor_backend("wordnet", depth=2).settings()["depth"]
        2

    Args:
        name: ``openai``, ``wordnet``, ``static`` or another key of :data:`NEIGHBOR_BACKENDS`.
        **options: the backend's own settings (the fields of its ``Options`` dataclass).

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
        neighbor_lt.configs.ConfigError: an unknown option or an invalid value.
    """
    if name not in NEIGHBOR_BACKENDS:
        raise ValueError(f"unknown neighbor backend {name!r}; choose from {', '.join(sorted(NEIGHBOR_BACKENDS))}")
    return NEIGHBOR_BACKENDS[name](**options)


__all__ = ["NEIGHBOR_BACKENDS", "NeighborBackend", "get_neighbor_backend"]
