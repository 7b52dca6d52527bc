"""What every search backend shares: the :class:`Candidate` it returns, the :class:`SearchBackend` capabilities the
stages ask about, a provider's :class:`Price`, and the one rule that normalizes names and captions.

A leaf module, so that backends in their own modules (``captions``) and the registry in ``search`` can both import it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field


@dataclass
class Candidate:
    """One search hit: where the image lives, the page it was found on and its caption/title."""

    query: str
    image_url: str
    page_url: str = ""
    caption: str = ""
    rank: int = 0
    image_bytes: bytes | None = field(default=None, repr=False)
    aux_name: str = ""
    neighbor_of: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.aux_name = self.aux_name or self.query


def normalize_text(text: str | None) -> str:
    """Lower-case, strip accents and punctuation, collapse whitespace (``"Great-White  Shark!"`` -> ``"great white shark"``)."""
    text = unicodedata.normalize("NFKD", str(text or "")).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def name_in_text(name: str, text: str) -> bool:
    """Whether the normalized ``name`` occurs in the normalized ``text`` as whole words."""
    name, text = normalize_text(name), normalize_text(text)
    return bool(name) and f" {name} " in f" {text} "


@dataclass(frozen=True)
class Price:
    """A provider's list price: ``per_1000`` requests in ``currency``, read on ``read`` from ``source``."""

    per_1000: float
    currency: str
    plan: str
    source: str
    read: str
    limits: str = ""


class SearchBackend:
    """What a search backend declares, so that the stages ask it instead of testing its name.

    Subclass it, set the capabilities and implement ``search(query, max_results, **hints) -> list[Candidate]``; then
    add it to ``SEARCH_BACKENDS``.

    Example:
        >>> class Mirror(SearchBackend):
        ...     pages, page_size = True, 50
        ...     price = Price(1.0, "USD", "flat", "https://example.org/pricing", "2026-12-03")
        ...     def search(self, query, max_results=100, **hints):
        ...         return [Candidate(query, f"https://example.org/{query}/{i}.jpg", rank=i) for i in range(max_results)]
        >>> Mirror.requests_per_query(120, {}), len(Mirror().search("koi", 3))
        (3, 3)
    """

    #: reads a local collection and returns the image bytes: nothing to download, and it takes ``exclude_names`` (the
    #: target classes it must never return)
    local: bool = False
    #: its answers are kept in ``retrieve/searches.sqlite`` so that a rerun never asks twice (a paid or remote source)
    cacheable: bool = True
    #: answers come in pages, one request each: ``page_size`` results per request, at most ``max_results`` per query
    pages: bool = False
    page_size: int = 0
    max_results: int | None = None
    #: what one request costs (web APIs), for ``retrieve.dry_run``
    price: Price | None = None

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        raise NotImplementedError

    @classmethod
    def requests_per_query(cls, results: int, options: dict) -> int:
        """Requests one query of ``results`` candidates sends (0 for a source that is not a web API)."""
        if not cls.pages:
            return 0
        return max(1, math.ceil(min(results, cls.max_results or results) / cls.page_size))


class SearchError(Exception):
    """A search request failed; the message is the API's own error (redacted), never the request URL.

    ``fatal``: no other query can succeed either (a bad or exhausted key, an API that is gone): stop asking.
    """

    def __init__(self, message: str, status: int | None = None, fatal: bool = False):
        super().__init__(message)
        self.status, self.fatal = status, fatal
