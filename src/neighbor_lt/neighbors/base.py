"""What every neighbor backend takes (one query per target class) and gives back (one proposal per query)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import yaml

from neighbor_lt.neighbors.names import NameIndex, clean_name

logger = logging.getLogger(__name__)


class NeighborSearchError(RuntimeError):
    """The neighbors stage cannot go on or produced nothing usable (endpoint down, every class failed).

    Work already done stays in the request cache, so a rerun resumes. Configuration problems (a bad or rejected API
    key, a wrong ``base_url`` or ``model``, an invalid setting) raise ``neighbor_lt.configs.ConfigError`` instead.
    """


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
        avoid: names already proposed, for a top-up request (ask for ``num_requested`` more, none of these).
    """

    index: int
    name: str
    query: str
    synonyms: list[str] = field(default_factory=list)
    wnid: str | None = None
    count: int = 0
    group: str = "many"
    num_requested: int = 5
    avoid: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    """A proposed neighbor name, with its WordNet id and similarity to the target when known.

    ``sense_corrected`` / ``suspect`` are set by the leak guard when it reads a bare name in WordNet: the sense it
    chose is not the name's most frequent one / is not a thing a photo shows (its lexicographer file).
    """

    name: str
    wnid: str | None = None
    similarity: float | None = None
    distance: int | None = None
    sense_corrected: bool = False
    suspect: str | None = None


@dataclass
class Proposal:
    """A backend's answer for one target: ranked candidates, or a failure with a message.

    ``rejected`` holds the (item, reason) pairs of a reply that did not look like names (a sentence, ``null``).
    """

    candidates: list[Candidate] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    raw_reply: str | None = None
    cached: bool = False
    rejected: list[tuple[str, str]] = field(default_factory=list)
    top_up: dict | None = None

    @classmethod
    def failed(cls, error: str, raw_reply: str | None = None) -> Proposal:
        """A failed proposal carrying a message (and the raw reply, if any)."""
        return cls(status="failed", error=error, raw_reply=raw_reply)


class NeighborBackend:
    """Base class: ``propose`` returns one ``Proposal`` per query, in order, and never raises for one bad class.

    It raises for the whole run only: ``ConfigError`` for a setting to fix, ``NeighborSearchError`` when the
    source is unreachable, ``KeyboardInterrupt`` passed on. A backend with ``can_top_up`` answers a query that carries
    ``avoid`` with that many *more* names (the stage asks once more when the leak guard leaves a class short).
    """

    name = "base"
    model: str | None = None
    template_hash: str | None = None
    can_top_up = False
    #: Finds a target by its class name only: numeric names ('0'..'364') are refused before any request.
    asks_by_name = True

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
        self.mapping = NameIndex()
        for key, value in mapping.items():
            self.mapping.add(str(key), value)

    def propose(self, queries, vocabulary=None, cache=None):
        out = []
        for q in queries:
            names = None
            for key in [q.name, q.query, *q.synonyms]:
                if key in self.mapping:
                    names = self.mapping.get(key)
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
