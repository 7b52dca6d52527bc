"""Image search backends, chosen by name: web APIs (Google CSE, Bing-style, DuckDuckGo), a local pool, URL lists.

Every backend answers ``search(query, max_results, **hints)`` with a list of :class:`Candidate` (image URL, page URL,
caption). The ``pool`` backend also carries the image bytes, so nothing is downloaded for it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ..secrets import redact, register_secret

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = (
    "neighbor-lt/0.1 (research image-dataset builder; honours robots.txt and X-Robots-Tag noai/noimageai; "
    "+https://github.com/neighbor-lt/neighbor-lt)"
)


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


def _api_key(value: str | None, env: str | None, what: str) -> str:
    key = value or (os.environ.get(env) if env else None)
    if not key:
        raise ValueError(f"{what}: set the API key in backend_kwargs or the environment variable {env}")
    register_secret(key)  # from here on redact() removes it from every log line, error and file
    return key


class SearchBackend:
    """What a search backend declares, so that the stages ask it instead of testing its name.

    Subclass it, set the capabilities and implement ``search(query, max_results, **hints) -> list[Candidate]``.
    """

    #: reads a local collection and returns the image bytes: nothing to download, and it takes ``exclude_names`` (the
    #: target classes it must never return)
    local: bool = False
    #: its answers are kept in ``retrieve/searches.jsonl`` so that a rerun never asks twice (a paid or remote source)
    cacheable: bool = True
    #: answers come in pages, one request each: ``page_size`` results per request, at most ``max_results`` per query
    pages: bool = False
    page_size: int = 0
    max_results: int | None = None

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        raise NotImplementedError


class SearchError(Exception):
    """A search request failed; the message is the API's own error (redacted), never the request URL."""


def _get_json(client, url: str, what: str, **kwargs) -> dict:
    """GET ``url`` and return its JSON; any failure is a :class:`SearchError` carrying the API's own message."""
    import httpx

    try:
        response = client.get(url, **kwargs)
    except httpx.HTTPError as e:  # the message of a connection error may hold the URL: keep only its type and reason
        raise SearchError(redact(f"{what}: {type(e).__name__}: {e}")) from None
    if response.status_code >= 400:
        raise SearchError(redact(f"{what}: HTTP {response.status_code}: {_api_message(response)}"))
    try:
        return response.json()
    except ValueError:
        raise SearchError(f"{what}: the answer is not JSON ({response.headers.get('content-type')})") from None


def _api_message(response) -> str:
    """The error text of Google's ``{"error": {"message"}}``, Bing's ``{"error"}`` / ``{"errors": [...]}`` or the body."""
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
        message = error.get("message") or ""
        return f"{message} ({', '.join(parts)})" if parts else message or str(error)[:300]
    return str(error or data)[:300]


class GoogleImageSearch(SearchBackend):
    """Google Custom Search JSON API, image search (``searchType=image``), 10 results per page.

    Example:
        >>> backend = get_search_backend("google", endpoint="http://127.0.0.1:8000/customsearch/v1", api_key="k", cx="c")
        >>> hits = backend.search("goldfish", max_results=20)  # doctest: +SKIP

    Args:
        api_key: API key; read from ``api_key_env`` when empty.
        cx: programmable search engine id; read from ``cx_env`` when empty.
        endpoint: API URL (change it for a proxy or a test server).
        timeout: seconds per request.
        extra_params: more query parameters (``safe``, ``imgSize``, ``rights`` ...).
    """

    pages, page_size, max_results = True, 10, 100

    def __init__(
        self,
        api_key: str | None = None,
        cx: str | None = None,
        endpoint: str = "https://www.googleapis.com/customsearch/v1",
        api_key_env: str = "GOOGLE_API_KEY",
        cx_env: str = "GOOGLE_CSE_ID",
        timeout: float = 20.0,
        extra_params: dict | None = None,
    ):
        self.api_key = _api_key(api_key, api_key_env, "google")
        self.cx = _api_key(cx, cx_env, "google (cx)")
        self.endpoint, self.timeout, self.extra_params = endpoint, timeout, dict(extra_params or {})

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        import httpx

        out: list[Candidate] = []
        with httpx.Client(timeout=self.timeout, headers={"User-Agent": DEFAULT_USER_AGENT}, trust_env=False) as client:
            start = 1
            while len(out) < max_results and start <= 91:  # the API serves at most 100 results
                params = {"key": self.api_key, "cx": self.cx, "q": query, "searchType": "image"}
                params.update(num=min(10, max_results - len(out)), start=start, **self.extra_params)
                items = _get_json(client, self.endpoint, "google", params=params).get("items") or []
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


class BingImageSearch(SearchBackend):
    """A Bing-style image search API (``value[].contentUrl / hostPageUrl / name``, ``count`` + ``offset`` paging).

    Example:
        >>> backend = get_search_backend("bing", endpoint="http://127.0.0.1:8000/v7.0/images/search", api_key="k")
        >>> hits = backend.search("goldfish", max_results=50)  # doctest: +SKIP

    Args:
        api_key: subscription key sent as ``Ocp-Apim-Subscription-Key``; read from ``api_key_env`` when empty.
        endpoint: API URL.
        page_size: results asked per request (the API caps it at 150).
        timeout: seconds per request.
        extra_params: more query parameters (``safeSearch``, ``license`` ...).
    """

    pages, page_size = True, 150

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str = "https://api.bing.microsoft.com/v7.0/images/search",
        api_key_env: str = "BING_SEARCH_KEY",
        page_size: int = 150,
        timeout: float = 20.0,
        extra_params: dict | None = None,
    ):
        self.api_key = _api_key(api_key, api_key_env, "bing")
        self.endpoint, self.page_size, self.timeout = endpoint, page_size, timeout
        self.extra_params = dict(extra_params or {})

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        import httpx

        headers = {"User-Agent": DEFAULT_USER_AGENT, "Ocp-Apim-Subscription-Key": self.api_key}
        out: list[Candidate] = []
        with httpx.Client(timeout=self.timeout, headers=headers, trust_env=False) as client:
            offset = 0
            while len(out) < max_results:
                params = {"q": query, "count": min(self.page_size, max_results - len(out)), "offset": offset}
                data = _get_json(client, self.endpoint, "bing", params={**params, **self.extra_params})
                items = data.get("value") or []
                for item in items:
                    url = item.get("contentUrl", "")
                    out.append(Candidate(query, url, item.get("hostPageUrl", ""), item.get("name", ""), len(out)))
                next_offset = data.get("nextOffset", offset + len(items))
                if not items or next_offset <= offset:
                    break
                offset = next_offset
        return out[:max_results]


class DuckDuckGoImageSearch(SearchBackend):
    """DuckDuckGo image search through the ``ddgs`` package, with a configurable endpoint.

    DuckDuckGo has no keyed API: ``ddgs`` reads a token from the search page and then the ``i.js`` JSON endpoint.
    Please keep volumes small and respect its terms.

    Example:
        >>> backend = get_search_backend("duckduckgo", endpoint="http://127.0.0.1:8000")
        >>> hits = backend.search("goldfish", max_results=20)  # doctest: +SKIP

    Args:
        endpoint: base URL serving ``/`` (token page) and ``/i.js`` (results).
        region: ``ddgs`` region code.
        safesearch: "on", "moderate" or "off".
        timeout: seconds per request.
    """

    pages, page_size = True, 100

    def __init__(
        self,
        endpoint: str = "https://duckduckgo.com",
        region: str = "us-en",
        safesearch: str = "moderate",
        timeout: int = 20,
    ):
        from ddgs.engines.duckduckgo_images import DuckduckgoImages
        from ddgs.utils import _extract_vqd

        base = endpoint.rstrip("/")

        class _Engine(DuckduckgoImages):
            search_url = f"{base}/i.js"

            def _get_vqd(self, query: str) -> str:  # the upstream method hard-codes duckduckgo.com
                return _extract_vqd(self.http_client.request("GET", base, params={"q": query}).content, query)

        self.engine = _Engine(timeout=timeout)
        self.region, self.safesearch = region, safesearch

    def search(self, query: str, max_results: int = 100, **hints) -> list[Candidate]:
        out: list[Candidate] = []
        page = 1
        while len(out) < max_results:
            items = self.engine.search(query, region=self.region, safesearch=self.safesearch, page=page) or []
            for item in items:
                out.append(Candidate(query, item.image or "", item.url or "", item.title or "", len(out)))
            if not items:
                break
            page += 1
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
        >>> pool = get_search_backend("pool", data_files=["train-*.parquet"], caption_column="words", id_column="wnid")
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
        >>> urls = get_search_backend("urls", path="my_urls.csv")  # columns: name, url, caption, page_url
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
    "google": GoogleImageSearch,
    "bing": BingImageSearch,
    "duckduckgo": DuckDuckGoImageSearch,
    "pool": PoolSearch,
    "urls": UrlListSearch,
}


def search_backend_class(name: str) -> type[SearchBackend]:
    """The class registered as ``name`` in ``SEARCH_BACKENDS`` (for its capabilities and options).

    Raises:
        ValueError: an unknown name, with the valid ones.
    """
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
