"""Image search backends, chosen by name: web image search APIs (Brave, Google Images through SerpApi, Google CSE
until it closes), a local pool, URL lists.

Every backend answers ``search(query, max_results, **hints)`` with a list of :class:`Candidate` (image URL, page URL,
caption) and declares what it is (:class:`SearchBackend`: local, cacheable, paged, priced). The ``pool`` backend also
carries the image bytes, so nothing is downloaded for it. Retired APIs stay as names that fail with the reason.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
from datetime import date
from typing import Any

from ..secrets import redact, register_secret
from .base import Candidate, Price, SearchBackend, SearchError, name_in_text, normalize_text
from .captions import CaptionSearch
from .proxies import http_client

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = (
    "neighbor-lt/0.1 (research image-dataset builder; honours robots.txt and X-Robots-Tag noai/noimageai; "
    "+https://github.com/neighbor-lt/neighbor-lt)"
)


def _api_key(value: str | None, env: str | None, what: str) -> str:
    key = value or (os.environ.get(env) if env else None)
    if not key:
        raise ValueError(f"{what}: set the API key in backend_kwargs or the environment variable {env}")
    register_secret(key)  # from here on redact() removes it from every log line, error and file
    return key


#: answers that no later query can escape: no valid key (401, 403), no credit left (402), gone (410); a 422 is fatal
#: only where the provider says the key is wrong (Brave), since it also means one bad query
FATAL_STATUS = (401, 402, 403, 410)
RATE_LIMIT_WAIT = 5.0  # longest Retry-After honoured once per request; a longer one is a quota, not a burst


def _get_json(client, url: str, what: str, **kwargs) -> dict:
    """GET ``url`` and return its JSON; any failure is a :class:`SearchError` carrying the API's own message.

    A 429 whose Retry-After is at most a few seconds (a per-second limit) is retried once after that wait; any other
    429 (a monthly quota, an hourly throughput cap) is fatal like a bad key.
    """
    import httpx

    for attempt in range(2):
        try:
            response = client.get(url, **kwargs)
        except (
            httpx.HTTPError
        ) as e:  # the message of a connection error may hold the URL: keep only its type and reason
            raise SearchError(redact(f"{what}: {type(e).__name__}: {e}")) from None
        wait = _retry_after(response) if response.status_code == 429 and attempt == 0 else None
        if wait is None or wait > RATE_LIMIT_WAIT:
            break
        time.sleep(wait)
    status = response.status_code
    if status >= 400:
        message = redact(f"{what}: HTTP {status}: {_api_message(response)}")
        raise SearchError(message, status, fatal=status in FATAL_STATUS or status == 429)
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("content-type") or "no content type"
        raise SearchError(f"{what}: HTTP {status} but the answer is not JSON ({kind})", status) from None
    if not isinstance(data, dict):
        raise SearchError(f"{what}: HTTP {status} but the answer is not a JSON object", status)
    return data


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _api_message(response) -> str:
    """The error text of Google's ``{"error": {"message", "status"}}``, Brave's ``{"error": {"detail", "code"}}``,
    SerpApi's ``{"error": "..."}``, an ``{"errors": [...]}`` list or the body."""
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    errors = data.get("errors") if isinstance(data, dict) else None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        error = errors[0]
    if isinstance(error, dict):
        parts = [str(error.get(k)) for k in ("status", "code") if error.get(k) not in (None, "")]
        message = error.get("message") or error.get("detail") or ""
        return f"{message} ({', '.join(parts)})" if parts else message or str(error)[:300]
    return str(error or data)[:300]


def _client(endpoint: str, timeout: float, headers: dict | None = None):
    """The HTTP client of every web search backend: our User-Agent, through the environment's proxy for ``endpoint``
    (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``, :func:`~neighbor_lt.retrieval.proxies.http_client`)."""
    return http_client(endpoint, timeout=timeout, headers={"User-Agent": DEFAULT_USER_AGENT, **(headers or {})})


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


#: Google's Custom Search JSON API takes no new customers and stops answering on this day
GOOGLE_CSE_SHUTDOWN = date(2027, 1, 1)


def _today() -> date:
    return date.today()


class GoogleImageSearch(SearchBackend):
    """Google Custom Search JSON API, image search (``searchType=image``), 10 results per page, 100 per query.

    Closed to new customers; it stops serving on 2027-01-01 (``GOOGLE_CSE_SHUTDOWN``). Existing keys work until then,
    with one warning per run; afterwards its refusal (HTTP 410, 403 or 404) stops the searches with one line. Google
    Images stays reachable through the ``serpapi`` backend.

    Example:
        >>> backend = get_search_backend("google", endpoint="http://127.0.0.1:8000/customsearch/v1", api_key="k", cx="c")
        >>> hits = backend.search("goldfish", max_results=20)  # doctest: +SKIP

    Args:
        api_key: API key; read from ``api_key_env`` when empty.
        cx: programmable search engine id; read from ``cx_env`` when empty.
        endpoint: API URL (change it for a proxy or a test server).
        timeout: seconds per request.
        extra_params: more query parameters (``safe``, ``imgSize``, ``rights`` ...).
        price_per_1000: your price per 1,000 requests for ``retrieve.dry_run`` (default: the list price).
    """

    pages, page_size, max_results = True, 10, 100
    price = Price(
        5.0, "USD", "JSON API (after 100 free queries a day)",
        "https://support.google.com/customsearch/answer/9069107", "2026-12-03",
        "10,000 queries a day; closed to new customers; stops serving on 2027-01-01",
    )  # fmt: skip

    def __init__(
        self,
        api_key: str | None = None,
        cx: str | None = None,
        endpoint: str = "https://www.googleapis.com/customsearch/v1",
        api_key_env: str = "GOOGLE_API_KEY",
        cx_env: str = "GOOGLE_CSE_ID",
        timeout: float = 20.0,
        extra_params: dict | None = None,
        price_per_1000: float | None = None,
    ):
        self.api_key = _api_key(api_key, api_key_env, "google")
        self.cx = _api_key(cx, cx_env, "google (cx)")
        self.endpoint, self.timeout, self.extra_params = endpoint, timeout, dict(extra_params or {})
        days = (GOOGLE_CSE_SHUTDOWN - _today()).days
        when = f"in {days} day(s)" if days > 0 else "already"
        _warn_once(
            "google", "google: the Custom Search JSON API takes no new customers and stops serving on %s (%s); "
            "existing keys work until then. Move to retrieve.backend brave or serpapi (Google Images).",
            GOOGLE_CSE_SHUTDOWN, when,
        )  # fmt: skip

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        out: list[Candidate] = []
        with _client(self.endpoint, self.timeout) as client:
            start = 1
            while len(out) < max_results and start <= 91:  # the API serves at most 100 results
                params = {"key": self.api_key, "cx": self.cx, "q": query, "searchType": "image"}
                params.update(num=min(10, max_results - len(out)), start=start, **self.extra_params)
                items = self._get(client, params).get("items") or []
                for item in items:
                    image = item.get("image") or {}
                    out.append(
                        Candidate(
                            query, item.get("link", ""), image.get("contextLink", ""), item.get("title", ""), len(out)
                        )
                    )
                if len(items) < params["num"]:
                    break
                start += len(items)
        return out[:max_results]

    def _get(self, client, params: dict) -> dict:
        try:
            return _get_json(client, self.endpoint, "google", params=params)
        except SearchError as e:
            if e.status == 410 or (e.status in (403, 404) and _today() >= GOOGLE_CSE_SHUTDOWN):
                raise SearchError(
                    f"google: the Custom Search JSON API stopped serving on {GOOGLE_CSE_SHUTDOWN} (HTTP {e.status}); "
                    "set retrieve.backend to brave or serpapi",
                    e.status,
                    fatal=True,
                ) from None
            raise


class BraveImageSearch(SearchBackend):
    """Brave Search API image search (``GET /res/v1/images/search``, header ``X-Subscription-Token``).

    One request returns up to 200 images (``count``); the image API has no offset, so a query yields at most 200
    candidates: a class that needs more takes the ``serpapi`` backend or more queries (synonyms in the manifest).

    Example:
        >>> backend = get_search_backend("brave", endpoint="http://127.0.0.1:8000/res/v1/images/search", api_key="k")
        >>> hits = backend.search("goldfish", max_results=150)  # doctest: +SKIP

    Args:
        api_key: subscription token; read from ``api_key_env`` (``BRAVE_API_KEY``) when empty.
        endpoint: API URL (change it for a proxy or a test server).
        timeout: seconds per request.
        extra_params: more query parameters (``safesearch``: strict (the API's default) or off; ``country``,
            ``search_lang``, ``spellcheck``).
        price_per_1000: your price per 1,000 requests for ``retrieve.dry_run`` (default: the list price).
    """

    pages, page_size, max_results = True, 200, 200
    price = Price(
        5.0, "USD", "Search", "https://api-dashboard.search.brave.com/app/plans", "2026-12-03",
        "50 requests/s; $5 of free credit a month (about 1,000 requests); at most 200 images per query",
    )  # fmt: skip

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str = "https://api.search.brave.com/res/v1/images/search",
        api_key_env: str = "BRAVE_API_KEY",
        timeout: float = 20.0,
        extra_params: dict | None = None,
        price_per_1000: float | None = None,
    ):
        self.api_key = _api_key(api_key, api_key_env, "brave")
        self.endpoint, self.timeout, self.extra_params = endpoint, timeout, dict(extra_params or {})

    def search(self, query: str, max_results: int = 200, **hints) -> list[Candidate]:
        headers = {"Accept": "application/json", "X-Subscription-Token": self.api_key}
        params = {"q": query, "count": max(1, min(self.page_size, max_results)), **self.extra_params}
        with _client(self.endpoint, self.timeout, headers) as client:
            try:
                data = _get_json(client, self.endpoint, "brave", params=params)
            except SearchError as e:  # Brave answers a wrong or missing key with 422 SUBSCRIPTION_TOKEN_*
                e.fatal = e.fatal or (e.status == 422 and "SUBSCRIPTION_TOKEN" in str(e))
                raise
        results = data.get("results")
        if not isinstance(results, list):
            raise SearchError(f"brave: the answer has no 'results' list (keys: {sorted(data)[:5]})")
        out = []
        for item in results:
            url = (item.get("properties") or {}).get("url") or ""
            if url:
                out.append(Candidate(query, url, item.get("url") or "", item.get("title") or "", len(out)))
        return out[:max_results]


class SerpApiImageSearch(SearchBackend):
    """Google Images through SerpApi (``GET /search.json?engine=google_images``), 100 images per page (``ijn``).

    Pages are asked until ``max_results`` images, an empty page, a page with nothing new, or ``max_pages``. The key
    travels in the query string (``api_key``), so no request URL is ever logged or stored (see :mod:`..secrets`).

    Example:
        >>> backend = get_search_backend("serpapi", endpoint="http://127.0.0.1:8000/search.json", api_key="k")
        >>> hits = backend.search("goldfish", max_results=800)  # doctest: +SKIP

    Args:
        api_key: API key; read from ``api_key_env`` (``SERPAPI_API_KEY``) when empty.
        endpoint: API URL (change it for a proxy or a test server).
        timeout: seconds per request (SerpApi fetches Google live: several seconds is normal).
        max_pages: most pages asked per query (each is one billed search).
        extra_params: more query parameters (``gl``, ``hl``, ``safe``, ``tbs``, ``no_cache`` ...).
        price_per_1000: your plan's price per 1,000 searches for ``retrieve.dry_run`` (default: the Developer plan).
    """

    pages, page_size = True, 100
    price = Price(
        15.0, "USD", "Developer ($75 a month for 5,000 searches; Production $150 for 15,000)",
        "https://serpapi.com/pricing", "2026-12-03",
        "monthly plans; free plan 250 searches a month; only successful searches count",
    )  # fmt: skip

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str = "https://serpapi.com/search.json",
        api_key_env: str = "SERPAPI_API_KEY",
        timeout: float = 60.0,
        max_pages: int = 10,
        extra_params: dict | None = None,
        price_per_1000: float | None = None,
    ):
        self.api_key = _api_key(api_key, api_key_env, "serpapi")
        self.endpoint, self.timeout, self.max_pages = endpoint, timeout, max_pages
        self.extra_params = dict(extra_params or {})

    @classmethod
    def requests_per_query(cls, results: int, options: dict) -> int:
        return min(int(options.get("max_pages", 10)), max(1, math.ceil(results / cls.page_size)))

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        out: list[Candidate] = []
        seen: set[str] = set()
        with _client(self.endpoint, self.timeout) as client:
            for page in range(self.max_pages):
                if len(out) >= max_results:
                    break
                params = {"engine": "google_images", "q": query, "ijn": page, **self.extra_params}
                data = _get_json(client, self.endpoint, "serpapi", params={**params, "api_key": self.api_key})
                items = data.get("images_results") or []
                if not items:
                    status = (data.get("search_metadata") or {}).get("status")
                    if data.get("error") and status == "Error":  # an empty result is a Success with an "error" text
                        raise SearchError(redact(f"serpapi: {data['error']}"))
                    break
                fresh = [i for i in items if i.get("original") and i["original"] not in seen]
                for item in fresh:
                    seen.add(item["original"])
                    out.append(
                        Candidate(query, item["original"], item.get("link") or "", item.get("title") or "", len(out))
                    )
                if not fresh:
                    break
        return out[:max_results]


def _load_table(path: str | list[str], split: str = "train", data_files=None):
    """Open a `datasets` source: a Parquet/CSV/JSON(L) file or glob, an image folder, a saved folder or a Hub id."""
    from datasets import load_dataset

    if data_files is not None:
        files = data_files if isinstance(data_files, list) else [data_files]
        builder = path or _builder_for(files[0])
        return load_dataset(builder, data_files={split: files}, split=split)
    if isinstance(path, str) and (os.path.isfile(path) or glob.has_magic(path)):
        return load_dataset(_builder_for(path), data_files={split: path}, split=split)
    return load_dataset(path, split=split)


def _builder_for(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower()
    return {"parquet": "parquet", "csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(ext, "parquet")


class PoolSearch(SearchBackend):
    """Search a local image collection by name: rows whose caption/name column holds the query, or whose id matches.

    A caption such as ``"goldfish, Carassius auratus"`` is split on commas and matches a query equal to one of its
    names; when no row matches exactly, rows whose caption contains the query as whole words are returned. Rows whose
    id, label or caption names a target class are never returned (``exclude_names``).

    Example:
        >>> pool = get_search_backend(  # doctest: +SKIP
        ...     "pool", data_files=["train-*.parquet"], caption_column="words", id_column="wnid"
        ... )
        >>> hits = pool.search("goldfish", max_results=50, wnid="n01443537")  # doctest: +SKIP

    Args:
        dataset: a `datasets` source (builder name, folder, Hub id, or a file); with ``data_files``, the builder.
        data_files: file(s) or glob(s) of the pool.
        split: split to read.
        image_column: column with the images.
        caption_column: column with the caption or class names; when empty, the label column's class names.
        id_column: optional id column (e.g. WordNet ids) matched against an auxiliary entry's ``wnid``.
        label_column: optional ClassLabel column, used for captions and for excluding target classes.
        exclude_names: names (ids, labels or captions) of target classes, never returned.
        seed: seed of the order in which the matches of a query are returned (None keeps the pool's order).
    """

    local, cacheable = True, False

    def __init__(
        self,
        dataset: str | None = None,
        data_files: str | list[str] | None = None,
        split: str = "train",
        image_column: str = "image",
        caption_column: str | None = "caption",
        id_column: str | None = None,
        label_column: str | None = None,
        exclude_names: list[str] | None = None,
        seed: int | None = 0,
    ):
        from datasets import Image

        self.source = str(dataset or data_files)
        self.ds = _load_table(dataset, split, data_files).cast_column(image_column, Image(decode=False))
        self.image_column, self.seed = image_column, seed
        names = None
        if label_column and label_column in self.ds.column_names:
            names = getattr(self.ds.features[label_column], "names", None)
        columns = {"caption": caption_column, "id": id_column, "label": label_column}
        table = {key: self.ds[col] if col and col in self.ds.column_names else None for key, col in columns.items()}
        if table["label"] is not None and names:
            table["label"] = [names[i] for i in table["label"]]
        if table["caption"] is None:
            table["caption"] = table["label"] or [""] * len(self.ds)
        self.captions = [str(c or "") for c in table["caption"]]
        self.ids = [str(i) for i in table["id"]] if table["id"] is not None else None
        excluded = {normalize_text(n) for n in exclude_names or []}
        self.allowed = []
        for i, caption in enumerate(self.captions):
            keys = {normalize_text(caption), *(normalize_text(p) for p in caption.split(","))}
            if self.ids:
                keys.add(normalize_text(self.ids[i]))
            if table["label"] is not None:
                keys.add(normalize_text(table["label"][i]))
            if not keys & excluded:
                self.allowed.append(i)
        # index: each comma-separated name of a caption -> rows
        self.by_name: dict[str, list[int]] = {}
        self.by_id: dict[str, list[int]] = {}
        for i in self.allowed:
            for part in {normalize_text(p) for p in self.captions[i].split(",")} | {normalize_text(self.captions[i])}:
                self.by_name.setdefault(part, []).append(i)
            if self.ids:
                self.by_id.setdefault(self.ids[i], []).append(i)
        logger.info(
            "pool %s: %d rows, %d after excluding target classes", self.source, len(self.ds), len(self.allowed)
        )

    def search(self, query: str, max_results: int = 100, wnid: str | None = None, **hints) -> list[Candidate]:
        rows = self.by_id.get(wnid, []) if wnid else []
        if not rows:
            rows = self.by_name.get(normalize_text(query), [])
        if not rows:
            rows = [i for i in self.allowed if name_in_text(query, self.captions[i])]
        rows = sorted(set(rows))
        if self.seed is not None:
            import random

            random.Random(f"{self.seed}:{query}").shuffle(rows)
        rows = rows[:max_results]
        images = self.ds[rows][self.image_column] if rows else []
        out = []
        for rank, (i, image) in enumerate(zip(rows, images)):
            data = image.get("bytes")
            if data is None and image.get("path"):
                with open(image["path"], "rb") as f:
                    data = f.read()
            out.append(Candidate(query, f"pool://{self.source}#{i}", "", self.captions[i], rank, data))
        return out


class UrlListSearch(SearchBackend):
    """User-supplied URL lists (CSV, Parquet or JSONL): rows for a query are those whose name column equals it.

    Without a name column, rows whose caption contains the query (whole words) are returned.

    Example:
        >>> urls = get_search_backend("urls", path="my_urls.csv")  # doctest: +SKIP
        >>> hits = urls.search("goldfish")  # doctest: +SKIP

    Args:
        path: the file (or glob).
        url_column, caption_column, page_url_column, name_column: column names; missing optional columns are empty.
    """

    def __init__(
        self,
        path: str,
        url_column: str = "url",
        caption_column: str = "caption",
        page_url_column: str = "page_url",
        name_column: str | None = "name",
    ):
        table = _load_table(path)
        cols = table.column_names
        n = len(table)
        self.urls = [str(u) for u in table[url_column]]
        self.captions = [str(c or "") for c in table[caption_column]] if caption_column in cols else [""] * n
        self.pages = [str(p or "") for p in table[page_url_column]] if page_url_column in cols else [""] * n
        self.names = [normalize_text(x) for x in table[name_column]] if name_column and name_column in cols else None

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        key = normalize_text(query)
        if self.names is not None:
            rows = [i for i, name in enumerate(self.names) if name == key]
        else:
            rows = [i for i, caption in enumerate(self.captions) if name_in_text(query, caption)]
        return [
            Candidate(query, self.urls[i], self.pages[i], self.captions[i], rank)
            for rank, i in enumerate(rows[:max_results])
        ]


SEARCH_BACKENDS: dict[str, type[SearchBackend]] = {
    "brave": BraveImageSearch,
    "serpapi": SerpApiImageSearch,
    "google": GoogleImageSearch,
    "pool": PoolSearch,
    "urls": UrlListSearch,
    "captions": CaptionSearch,
}

#: names of sources that are gone, with why: a config naming one fails before any request, with the way out
RETIRED_SEARCH_BACKENDS = {
    "bing": "Microsoft retired the Bing Search APIs in August 2025 and no key can be had",
    "duckduckgo": "DuckDuckGo offers no API, and the public API of ddgs can neither be pointed at another endpoint nor "
    "send our User-Agent (it impersonates a browser), so neighbor-lt no longer ships it",
}
_ALTERNATIVES = {
    "brave": "web image search API",
    "serpapi": "Google Images",
    "captions": "open image-text metadata: LAION, DataComp, COYO",
    "pool": "a local image collection",
    "urls": "your own URL list",
}


def _alternatives() -> str:
    names = [f"{name} ({what})" for name, what in _ALTERNATIVES.items() if name in SEARCH_BACKENDS]
    return ", ".join(names[:-1]) + " or " + names[-1]


def search_backend_class(name: str) -> type[SearchBackend]:
    """The class registered as ``name`` in ``SEARCH_BACKENDS`` (for its capabilities and options).

    Example:
        >>> search_backend_class("pool").local, search_backend_class("serpapi").page_size
        (True, 100)

    Raises:
        ValueError: a retired name (why, and what to use instead) or an unknown one (the valid ones).
    """
    if name in RETIRED_SEARCH_BACKENDS:
        raise ValueError(f"search backend {name!r} is retired: {RETIRED_SEARCH_BACKENDS[name]}; use {_alternatives()}")
    if name not in SEARCH_BACKENDS:
        raise ValueError(f"unknown search backend {name!r}; choose from {', '.join(sorted(SEARCH_BACKENDS))}")
    return SEARCH_BACKENDS[name]


def get_search_backend(name: str, **kwargs: Any) -> SearchBackend:
    """Build a search backend by name (one of ``SEARCH_BACKENDS``); ``kwargs`` go to its constructor.

    Example:
        >>> backend = get_search_backend("urls", path="urls.csv")  # doctest: +SKIP
        >>> [c.image_url for c in backend.search("goldfish", max_results=5)]  # doctest: +SKIP

    Args:
        name: a key of ``SEARCH_BACKENDS``.
        **kwargs: the backend's options (endpoint, api_key, data_files ...).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    return search_backend_class(name)(**kwargs)
