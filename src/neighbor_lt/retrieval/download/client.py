"""HTTP/1.1 client of the downloader: keep-alive connections through the address guard.

A URL is checked by :func:`url_problem` (http(s), a host, a valid port) before any request; every TCP connection
goes only to an address :class:`AddressGuard` checked at connect time, so neither a redirect nor a DNS answer can
point the downloader at a private, loopback, link-local, multicast or reserved address (unless allowed).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

from .config import DownloadConfig


class BlockedAddress(Exception):
    """The URL's host is, or resolves to, an address the guard refuses."""


class DnsError(Exception):
    """The URL's host name does not resolve."""


class AddressGuard:
    """Decides which IP addresses may be contacted; resolves hostnames and returns only allowed addresses.

    Args:
        block_private: refuse private, loopback, link-local, multicast, reserved and unspecified addresses.
        allowed_networks: CIDRs exempt from the rule.
        resolver: ``getaddrinfo``-compatible function (tests inject one so that no real DNS lookup happens).
    """

    def __init__(
        self, block_private: bool = True, allowed_networks: Iterable[str] = (), resolver: Callable | None = None
    ):
        self.block_private = block_private
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self.resolver = resolver or socket.getaddrinfo

    def is_allowed(self, ip: str) -> bool:
        """Whether one IP address may be contacted."""
        addr = ipaddress.ip_address(ip.split("%")[0])
        if getattr(addr, "ipv4_mapped", None):
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.allowed):
            return True
        if not self.block_private:
            return True
        return not (
            addr.is_private
            or addr.is_loopback
            or addr.is_link_local
            or addr.is_multicast
            or addr.is_reserved
            or addr.is_unspecified
        )

    def check_literal(self, host: str) -> None:
        """Raise BlockedAddress when ``host`` is an IP literal that is refused (no DNS, no connection)."""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        if not self.is_allowed(host.strip("[]")):
            raise BlockedAddress(f"address {host} is not public")

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its allowed addresses; raise BlockedAddress when none is allowed."""
        try:
            infos = self.resolver(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise DnsError(f"{host}: {e}"[:200]) from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        allowed = [a for a in addresses if self.is_allowed(a)]
        if not allowed:
            raise BlockedAddress(f"{host} resolves to refused address(es) {addresses}")
        return allowed


class HttpError(Exception):
    """A request failed below HTTP: connection refused or reset, TLS, a malformed or cut-off response."""


class HttpTimeout(HttpError):
    """Connecting, or waiting for the next bytes of a response, took longer than its timeout."""


class GuardedConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose TCP connection goes only to an address the guard checked at connect time (so a
    DNS answer cannot point it at a refused address); the read timeout applies once connected."""

    def __init__(self, host, port, guard: AddressGuard, connect_timeout: float, read_timeout: float, ssl_context=None):
        super().__init__(host, port, timeout=connect_timeout)
        self._guard, self._read_timeout, self._ssl_context = guard, read_timeout, ssl_context

    def connect(self):
        error: OSError | None = None
        for ip in self._guard.resolve(self.host, self.port):
            try:
                sock = socket.create_connection((ip, self.port), self.timeout)
                break
            except OSError as e:
                error = e
        else:
            raise error or OSError(f"no address for {self.host}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
        sock.settimeout(self._read_timeout)
        self.sock = sock


class Response:
    """A response being read: ``status_code``, case-insensitive ``headers`` (``get``, ``get_all``), ``iter_bytes``;
    ``complete`` once the body was read to its end (the connection can then be reused)."""

    def __init__(self, response: http.client.HTTPResponse, max_bytes: int):
        self.raw, self.status_code, self.headers = response, response.status, response.headers
        self.complete = False
        encoding = (self.headers.get("content-encoding") or "").strip().lower()
        # asked for identity; a server that compresses anyway is decompressed, never past max_bytes + 1
        self._inflate = zlib.decompressobj(wbits=47) if encoding in ("gzip", "x-gzip", "deflate") else None
        self._limit = max_bytes + 1

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and bool(self.headers.get("location"))

    def iter_bytes(self, size: int = 65536) -> Iterator[bytes]:
        try:
            while chunk := self.raw.read(size):
                yield self._inflate.decompress(chunk, self._limit) if self._inflate else chunk
        except TimeoutError:
            raise HttpTimeout("ReadTimeout") from None
        except (OSError, http.client.HTTPException, zlib.error) as e:
            raise HttpError(f"{type(e).__name__}: {e}") from None
        self.complete = True


class Connections:
    """One thread's keep-alive connections, one per origin, at most ``max_idle`` kept (least recently used closed)."""

    def __init__(self, guard: AddressGuard, config: DownloadConfig, ssl_context, max_idle: int = 8):
        self.guard, self.config, self.ssl_context, self.max_idle = guard, config, ssl_context, max_idle
        self.idle: OrderedDict[tuple, GuardedConnection] = OrderedDict()
        self.headers = {"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}

    @contextmanager
    def get(self, url: str) -> Iterator[Response]:
        """GET ``url`` (checked by :func:`url_problem`); no redirect is followed. Raises HttpTimeout, HttpError,
        and the guard's BlockedAddress / DnsError."""
        parts = urlsplit(url)
        host = parts.hostname.encode("idna").decode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="!#$%&'()*+,/:;=?@[]~")
        key = (parts.scheme, host, port)
        for attempt in range(2):
            connection = self.idle.pop(key, None)
            reused = connection is not None
            if connection is None:
                connection = GuardedConnection(
                    host, port, self.guard, self.config.connect_timeout, self.config.read_timeout,
                    self.ssl_context if parts.scheme == "https" else None,
                )  # fmt: skip
            try:
                connection.request("GET", target, headers=self.headers)
                response = connection.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                connection.close()
                if reused and attempt == 0:  # the server closed an idle keep-alive connection: once more, afresh
                    continue
                raise HttpError(f"{type(e).__name__}: {e}") from None
            except TimeoutError:
                connected = connection.sock is not None
                connection.close()
                raise HttpTimeout("ReadTimeout" if connected else "ConnectTimeout") from None
            except (OSError, http.client.HTTPException, UnicodeError) as e:
                connection.close()
                raise HttpError(f"{type(e).__name__}: {e}") from None
        wrapped = Response(response, self.config.max_bytes)
        try:
            yield wrapped
        finally:
            if wrapped.complete and not response.will_close:
                self.idle[key] = connection
                while len(self.idle) > self.max_idle:
                    self.idle.popitem(last=False)[1].close()
            else:
                connection.close()

    def close(self) -> None:
        while self.idle:
            self.idle.popitem()[1].close()


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched at all (malformed, invalid port, unsupported scheme, no host), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a non-numeric or out-of-range port
        if parts.hostname:
            parts.hostname.encode("idna")
    except (ValueError, UnicodeError) as e:
        return f"{type(e).__name__}: {e}"[:200]
    if parts.scheme not in ("http", "https"):
        return f"unsupported scheme {parts.scheme!r}"
    if not parts.hostname:
        return "no host name"
    if any(c.isspace() or ord(c) < 32 or c in "<>\\^`{|}" for c in parts.netloc):
        return "invalid character in the host"
    return None
