"""What every neighbor backend takes (one query per target class) and gives back (one proposal per query)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import yaml

from neighbor_lt.neighbors.guard import clean_name, normalize

logger = logging.getLogger(__name__)


@dataclass
class TargetQuery:
    """One target class to find neighbors for.

    Args:
        index: label index in the target ClassLabel.
        name: the ClassLabel name (e.g. ``n01443537`` or ``goldfish``).
        query: the human-readable name sent to the knowledge source (e.g. ``goldfish``).
        synonyms: other names of the class (leak guard, WordNet lookup).
        wnid: WordNet noun id when known.
        count: training images of the class.
        group: ``many`` / ``medium`` / ``few``.
        num_requested: how many neighbors the class should get.
    """

    index: int
    name: str
    query: str
    synonyms: list[str] = field(default_factory=list)
    wnid: str | None = None
    count: int = 0
    group: str = "many"
    num_requested: int = 5


@dataclass
class Candidate:
    """A proposed neighbor name, with its WordNet id and similarity to the target when the backend knows them."""

    name: str
    wnid: str | None = None
    similarity: float | None = None
    distance: int | None = None


@dataclass
class Proposal:
    """A backend's answer for one target: ranked candidates, or a failure with a message."""

    candidates: list[Candidate] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    raw_reply: str | None = None
    cached: bool = False

    @classmethod
    def failed(cls, error: str, raw_reply: str | None = None) -> Proposal:
        """A failed proposal carrying a message (and the raw reply, if any)."""
        return cls(status="failed", error=error, raw_reply=raw_reply)


class NeighborBackend:
    """Base class: ``propose`` returns one ``Proposal`` per query, in order, and never raises for one bad class."""

    name = "base"
    model: str | None = None
    template_hash: str | None = None

    def __init__(self):
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}
        self._stats_lock = threading.Lock()

    def count(self, stat: str) -> None:
        """Increment a run statistic (thread-safe)."""
        with self._stats_lock:
            self.stats[stat] += 1

    def propose(self, queries: list[TargetQuery], vocabulary=None, cache=None) -> list[Proposal]:
        raise NotImplementedError

    def settings(self) -> dict:
        """Backend settings recorded in the manifest (never secrets)."""
        return {}


class StaticBackend(NeighborBackend):
    """Neighbors from a user-supplied mapping: target name (or query, or synonym) -> list of neighbor names.

    Example:
        >>> backend = StaticBackend(mapping={"goldfish": ["koi", "carp"]})
        >>> [c.name for c in backend.propose([TargetQuery(0, "n01443537", "goldfish")])[0].candidates]
        ['koi', 'carp']

    Args:
        mapping: the mapping itself, or a YAML / JSON file holding it.
    """

    name = "static"

    def __init__(self, mapping: dict | str):
        super().__init__()
        self.source = mapping if isinstance(mapping, str) else None
        if isinstance(mapping, str):
            if not os.path.isfile(mapping):
                raise FileNotFoundError(f"static neighbor mapping not found: {mapping}")
            with open(mapping, encoding="utf-8") as f:
                mapping = yaml.safe_load(f) or {}  # YAML is a superset of JSON
        if not isinstance(mapping, dict):
            raise ValueError("a static neighbor mapping must map target names to lists of names")
        self.mapping = {normalize(k): v for k, v in mapping.items()}

    def propose(self, queries, vocabulary=None, cache=None):
        out = []
        for q in queries:
            names = None
            for key in [q.name, q.query, *q.synonyms]:
                if normalize(key) in self.mapping:
                    names = self.mapping[normalize(key)]
                    break
            if names is None:
                out.append(Proposal.failed(f"no entry for {q.name!r} in the static mapping"))
                continue
            if isinstance(names, str):
                names = [names]
            out.append(Proposal([Candidate(clean_name(n)) for n in names if clean_name(str(n))]))
        return out

    def settings(self):
        return {"mapping": self.source}
