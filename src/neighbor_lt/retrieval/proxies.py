"""Proxies from the environment: ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either case) and the ``NO_PROXY`` exceptions.

The search client (httpx), the downloader (http.client) and the captions backend's remote reads (DuckDB's httpfs,
:func:`duckdb_proxy_settings`) all ask :func:`proxy_for`, so they go through the same proxy for the same URL. Only
http proxies are understood (an ``https://`` target goes through a ``CONNECT`` tunnel, TLS end to end with the target); a proxy's credentials (``http://user:secret@proxy:3128``) are sent as
``Proxy-Authorization`` and redacted from logs and records.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from ..secrets import register_secret


@dataclass(frozen=True)
class Proxy:
    """An http proxy: where to connect, and the ``Proxy-Authorization`` header when its URL has credentials."""

    url: str
    host: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    username: str | None = None  # the URL's credentials, percent-decoded (None: the URL has none)
    password: str = field(default="", repr=False)  # never in a repr (a log line)


def proxy_for(url: str, environ: dict[str, str] | None = None) -> str | None:
    """The proxy URL the environment gives for ``url`` (``HTTPS_PROXY`` for https, ``HTTP_PROXY`` for http), or None
    when there is none or ``NO_PROXY`` exempts its host.

    Example:
        >>> proxy_for("https://example.org/a.jpg", {"https": "http://proxy:3128", "no": "localhost"})
        'http://proxy:3128'
        >>> proxy_for("http://localhost:8000/a.jpg", {"http": "http://proxy:3128", "no": "localhost"}) is None
        True

    Args:
        url: the target.
        environ: proxies as ``urllib.request.getproxies_environment`` returns them; read from the environment when
            None.
    """
    proxies = getproxies_environment() if environ is None else environ
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy or not parts.hostname or proxy_bypass_environment(parts.hostname, proxies):
        return None
    return proxy


def parse_proxy(proxy_url: str) -> Proxy:
    """A proxy URL (``http://[user:password@]host[:port]``, the scheme optional) as a :class:`Proxy`.

    Raises:
        ValueError: not an http proxy, or no host; the message leaves the credentials out.
    """
    parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    if parts.scheme != "http" or not parts.hostname:
        where = f"{parts.scheme}://{parts.hostname or ''}"
        raise ValueError(f"proxy {where} is not an http:// proxy with a host (HTTPS_PROXY / HTTP_PROXY)")
    headers, username, password = {}, None, ""
    if parts.username is not None:
        username, password = unquote(parts.username), unquote(parts.password or "")
        if password:
            register_secret(password)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        register_secret(token)
        headers["Proxy-Authorization"] = f"Basic {token}"
    return Proxy(proxy_url, parts.hostname, parts.port or 80, headers, username, password)


# where DuckDB's httpfs sends the requests of a non-http scheme (for the proxy choice and NO_PROXY)
_ENDPOINTS = {
    "hf": "huggingface.co",
    "s3": "s3.amazonaws.com",
    "gs": "storage.googleapis.com",
    "gcs": "storage.googleapis.com",
    "r2": "r2.cloudflarestorage.com",
}


def duckdb_proxy_settings(paths: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """DuckDB settings (``SET name = value``) that send its remote reads of ``paths`` through the environment's proxy:
    ``http_proxy`` (``host:port``) and, when the proxy URL has credentials, ``http_proxy_username`` / ``_password``.
    Empty when every path is local, or no proxy applies (none set, or ``NO_PROXY`` exempts the host). DuckDB reads
    no proxy variable itself, so without these a remote read behind a proxy fails to connect.

    Example:
        >>> duckdb_proxy_settings(["hf://datasets/org/meta/*.parquet"], {"https": "http://proxy:3128"})
        {'http_proxy': 'proxy:3128'}
        >>> duckdb_proxy_settings(["shards/part-0.parquet"], {"https": "http://proxy:3128"})
        {}

    Args:
        paths: files or globs; those with a ``scheme://`` are remote (``hf``, ``s3``, ``gs`` go to their services'
            https endpoints; ``http(s)`` to their own host).
        environ: proxies as ``urllib.request.getproxies_environment`` returns them; read from the environment when
            None.

    Raises:
        ValueError: the remote paths need different proxies (one DuckDB connection has one), or the proxy is not an
            http:// proxy; the message leaves the credentials out.
    """
    chosen: dict[str, str] = {}
    for path in paths:
        scheme, sep, rest = str(path).partition("://")
        if not sep:
            continue
        scheme = scheme.lower()
        host = urlsplit(path).hostname if scheme in ("http", "https") else _ENDPOINTS.get(scheme, rest.split("/")[0])
        target = path if scheme in ("http", "https") else f"https://{host}/"
        proxy = proxy_for(target, environ)
        if proxy:
            chosen[proxy] = host or ""
    if len(chosen) > 1:
        hosts = ", ".join(sorted(set(chosen.values())))
        raise ValueError(f"the remote files ({hosts}) need different proxies; read them in separate runs")
    if not chosen:
        return {}
    proxy = parse_proxy(next(iter(chosen)))  # registers the credentials as secrets
    settings = {"http_proxy": f"{proxy.host}:{proxy.port}"}
    if proxy.username is not None:
        settings.update(http_proxy_username=proxy.username, http_proxy_password=proxy.password)
    return settings


def http_client(endpoint: str, **kwargs):
    """An ``httpx.Client`` for a search API at ``endpoint``: through the environment's proxy for it (or none), and
    nothing else taken from the environment (no ``.netrc`` credentials, no other ``SSL_CERT_*`` settings).

    Example:
        >>> with http_client("https://api.example.org/search", timeout=20.0) as client:  # doctest: +SKIP
        ...     client.get("https://api.example.org/search", params={"q": "goldfish"})

    Args:
        endpoint: the API URL the client is for (its scheme and host choose the proxy).
        **kwargs: ``httpx.Client`` arguments (``timeout``, ``headers`` ...).
    """
    import httpx

    return httpx.Client(trust_env=False, proxy=proxy_for(endpoint), **kwargs)
