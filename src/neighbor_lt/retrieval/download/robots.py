"""Opt-outs: robots.txt (RFC 9309), read once per origin, and the ``X-Robots-Tag`` header of each response."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from .client import DnsError, HttpError, Response, url_problem

MAX_ROBOTS_BYTES = 500_000


class RobotsUnreachable(Exception):
    """robots.txt answered 5xx or could not be fetched (RFC 9309: disallow all until it can be read)."""


class RobotsRules:
    """Whether robots.txt lets ``user_agent`` fetch a URL; each origin's file is fetched once, by one thread.

    Example:
        >>> rules = RobotsRules("neighbor-lt", downloader._request, max_redirects=5)  # doctest: +SKIP
        >>> rules.allows("https://example.org/a.jpg")  # doctest: +SKIP
        True

    Args:
        user_agent: the product token matched against ``User-agent`` lines.
        request: opens a GET of a URL as a context manager yielding a :class:`~.client.Response` (the downloader's
            guarded connections under its per-host limits).
        max_redirects: redirects followed to reach a robots.txt, each hop through ``request``.
    """

    def __init__(
        self, user_agent: str, request: Callable[[str], AbstractContextManager[Response]], max_redirects: int
    ):
        self.user_agent, self.request, self.max_redirects = user_agent, request, max_redirects
        self._rules: dict[str, object] = {}  # origin -> True (no rules), RobotFileParser, DnsError, or why it failed
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def allows(self, url: str) -> bool:
        """Whether ``url`` may be fetched. Raises RobotsUnreachable (disallow all), DnsError (the host does not
        resolve: one lookup per host, not one per URL of a dead domain) and the guard's BlockedAddress."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            if origin not in self._rules:
                try:
                    self._rules[origin] = self._fetch(origin)
                except DnsError as e:
                    self._rules[origin] = e
        rules = self._rules[origin]
        if isinstance(rules, DnsError):
            raise DnsError(str(rules))
        if isinstance(rules, str):
            raise RobotsUnreachable(rules)
        return rules if isinstance(rules, bool) else rules.can_fetch(self.user_agent, url)

    def _fetch(self, origin: str) -> RobotFileParser | bool | str:
        """robots.txt per RFC 9309: 4xx means no rules, 5xx or unreachable means disallow all (returned as the reason).

        A refused address raises BlockedAddress (not cached), so the URL is reported as blocked, not opted out.
        """
        url = origin + "/robots.txt"
        try:
            for _ in range(self.max_redirects + 1):  # redirects followed, each hop through the guard
                if problem := url_problem(url):
                    return f"robots.txt unreachable (redirect to a bad URL: {problem})"
                with self.request(url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    status = response.status_code
                    body = bytearray()
                    if status < 400:
                        for chunk in response.iter_bytes():
                            body += chunk
                            if len(body) > MAX_ROBOTS_BYTES:
                                break
                    break
            else:
                return "robots.txt unreachable (too many redirects)"
        except (HttpError, ValueError) as e:
            return f"robots.txt unreachable ({e})"[:200]
        if 400 <= status < 500:
            return True
        if status >= 500:
            return f"robots.txt answered HTTP {status}"
        parser = RobotFileParser()
        parser.parse(bytes(body[:MAX_ROBOTS_BYTES]).decode("utf-8", "replace").splitlines())
        return parser


def opted_out(headers, directives) -> str | None:
    """The ``X-Robots-Tag`` value that opts the response out (one of ``directives``, e.g. ``noai``), or None.

    Example:
        >>> from email.message import Message
        >>> headers = Message()
        >>> headers["X-Robots-Tag"] = "googlebot: noindex"
        >>> opted_out(headers, ["noai", "noindex"])
        'X-Robots-Tag: googlebot: noindex'
    """
    for value in headers.get_all("x-robots-tag") or ():
        for directive in value.lower().replace(";", ",").split(","):
            directive = directive.split(":")[-1].strip()  # "googlebot: noindex" -> "noindex"
            if directive in directives:
                return f"X-Robots-Tag: {value}"
    return None
