"""What every neighbor backend takes (one query per target class) and gives back (one proposal per query)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

from neighbor_lt.configs import ConfigError
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


class Checks:
    """Collects the invalid settings of one settings object, each as ``key must be WHAT (got VALUE)``.

    Example:
        >>> checks = Checks(StaticOptions(mapping=None))
        >>> checks.need(False, "mapping", "a file or a mapping"); checks.problems
        ['mapping must be a file or a mapping (got None)']
    """

    def __init__(self, settings):
        self.settings, self.problems = settings, []

    def need(self, ok: bool, key: str, what: str) -> None:
        """Record a problem with ``key`` unless ``ok``."""
        if not ok:
            self.problems.append(f"{key} must be {what} (got {getattr(self.settings, key)!r})")

    def positive_int(self, *keys: str, optional: bool = False, minimum: int = 1) -> None:
        """Each key an integer >= ``minimum`` (or null when ``optional``)."""
        for key in keys:
            value = getattr(self.settings, key)
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            self.need((optional and value is None) or (is_int(value) and value >= minimum), key,
                      what + (" or null" if optional else ""))  # fmt: skip

    def number(self, key: str, what: str, low: float | None = None, high: float | None = None, strict=False,
               optional: bool = False) -> None:  # fmt: skip
        """``key`` a finite number in [low, high] (> low when ``strict``), or null when ``optional``."""
        value = getattr(self.settings, key)
        ok = is_number(value) and (low is None or value > low or (not strict and value == low))
        self.need((optional and value is None) or (ok and (high is None or value <= high)), key, what)


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_options(backend: type, values: dict, where: str):
    """The backend's ``Options`` from ``values``, or a ``ConfigError`` naming the unknown keys (with the valid ones)
    or every invalid value.

    Example:
        >>> build_options(StaticBackend, {"mappin": {}}, "neighbors.backend_kwargs (static)")
        Traceback (most recent call last):
        ...
        neighbor_lt.configs.ConfigError: unknown option(s) mappin in neighbors.backend_kwargs (static) for \
StaticBackend (valid: mapping)
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of option names to values (got {values!r})")
    valid = option_names(backend)
    unknown = [str(k) for k in values if k not in valid]
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in {where} for {backend.__name__} (valid: {', '.join(valid) or 'none'})"
        )
    if backend.Options is None:
        return None
    options = backend.Options(**values)
    problems = options.problems() if hasattr(options, "problems") else []
    if problems:
        raise ConfigError("invalid neighbors settings: " + "; ".join(problems))
    return options


def option_names(backend: type) -> list[str]:
    """The option keys a backend class takes (its ``Options`` fields)."""
    return [f.name for f in dataclasses.fields(backend.Options)] if backend.Options is not None else []


class NeighborBackend:
    """Base class: ``propose`` returns one ``Proposal`` per query, in order, and never raises for one bad class.

    It raises for the whole run only: ``ConfigError`` for a setting to fix, ``NeighborSearchError`` when the
    source is unreachable, ``KeyboardInterrupt`` passed on. A backend with ``can_top_up`` answers a query that carries
    ``avoid`` with that many *more* names (the stage asks once more when the leak guard leaves a class short).

    A backend owns its settings: ``Options`` is a dataclass (each field with ``help``, a ``problems()`` method listing
    invalid values, ``metadata={"path": True}`` on a file setting the stage resolves next to the YAML file). It is
    built from ``Options`` or from keyword arguments: ``WordNetBackend(depth=2)``.
    """

    name = "base"
    Options: type | None = None
    model: str | None = None
    template_hash: str | None = None
    can_top_up = False
    #: Its answers go to the request cache (``neighbors/cache.jsonl``): a rerun asks only what failed.
    cacheable = False
    #: Needs the WordNet database (the stage stops without it instead of falling back to names only).
    uses_wordnet = False
    #: Finds a target by its class name only: numeric names ('0'..'364') are refused before any request.
    asks_by_name = True

    def __init__(self, options=None, /, **values):
        self.options = (
            options
            if options is not None
            else build_options(type(self), values, f"the options of the {self.name} backend")
        )
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}
        self._stats_lock = threading.Lock()

    def count(self, stat: str, n: int = 1) -> None:
        """Add ``n`` to a run statistic (thread-safe)."""
        with self._stats_lock:
            self.stats[stat] = self.stats.get(stat, 0) + n

    def propose(self, queries: list[TargetQuery], vocabulary=None, cache=None) -> list[Proposal]:
        raise NotImplementedError

    def settings(self) -> dict:
        """Backend settings recorded in the manifest (never secrets)."""
        return {}


@dataclass
class StaticOptions:
    """Options of the ``static`` backend."""

    mapping: Any = field(
        default=None,
        metadata={"help": "static: YAML/JSON file or inline mapping target -> names (required).", "path": True},
    )

    def problems(self) -> list[str]:
        checks = Checks(self)
        checks.need(self.mapping is not None, "mapping", "a file or an inline mapping (required for backend static)")
        return checks.problems


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
    Options = StaticOptions

    def __init__(self, options: StaticOptions | None = None, /, **values):
        super().__init__(options, **values)
        mapping = self.options.mapping
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
