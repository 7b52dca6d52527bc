"""Proxies from the environment: ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either case) and the ``NO_PROXY`` exceptions.

The search client (httpx) and the downloader (http.client) both ask :func:`proxy_for`, so they go through the same
proxy for the same URL. Only http proxies are understood (an ``https://`` target goes through a ``CONNECT`` tunnel,
TLS end to end with the target); a proxy's credentials (``http://user:secret@proxy:3128``) are sent as
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
    headers = {}
    if parts.username is not None:
        password = unquote(parts.password or "")
        if password:
            register_secret(password)
        token = base64.b64encode(f"{unquote(parts.username)}:{password}".encode()).decode()
        register_secret(token)
        headers["Proxy-Authorization"] = f"Basic {token}"
    return Proxy(proxy_url, parts.hostname, parts.port or 80, headers)


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
