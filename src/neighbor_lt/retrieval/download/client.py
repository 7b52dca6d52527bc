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
from urllib.request import getproxies_environment

from ..proxies import Proxy, parse_proxy, proxy_for
from .config import DownloadConfig

#: Where a refused address is allowed: every ``blocked_address`` record says so.
ALLOW_HINT = " (allow its network in retrieve.download.allowed_networks)"


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
            raise BlockedAddress(f"address {host} is not public{ALLOW_HINT}")

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its allowed addresses; raise BlockedAddress when none is allowed."""
        try:
            infos = self.resolver(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise DnsError(f"{host}: {e}"[:200]) from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        allowed = [a for a in addresses if self.is_allowed(a)]
        if not allowed:
            raise BlockedAddress(f"{host} resolves to refused address(es) {addresses}{ALLOW_HINT}")
        return allowed


class HttpError(Exception):
    """A request failed below HTTP: connection refused or reset, TLS, a malformed or cut-off response."""


class HttpTimeout(HttpError):
    """Connecting, or waiting for the next bytes of a response, took longer than its timeout."""


class GuardedConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose TCP connection goes only to an address the guard checked at connect time (so a
    DNS answer cannot point it at a refused address); the read timeout applies once connected.

    With a ``proxy`` the TCP connection goes to the proxy (the user's own setting: not checked), an https target
    through a ``CONNECT`` tunnel; the target's name is checked where this machine can resolve it, and a name only
    the proxy can resolve is left to the proxy's own rules (see the README's proxy section).
    """

    def __init__(
        self, host, port, guard: AddressGuard, connect_timeout: float, read_timeout: float, ssl_context=None,
        proxy: Proxy | None = None,
    ):  # fmt: skip
        super().__init__(host, port, timeout=connect_timeout)
        self._guard, self._read_timeout, self._ssl_context, self._proxy = guard, read_timeout, ssl_context, proxy

    def connect(self):
        sock = self._connect_proxy() if self._proxy is not None else self._connect_direct()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
        sock.settimeout(self._read_timeout)
        self.sock = sock

    def _connect_direct(self) -> socket.socket:
        error: OSError | None = None
        for ip in self._guard.resolve(self.host, self.port):
            try:
                return socket.create_connection((ip, self.port), self.timeout)
            except OSError as e:
                error = e
        raise error or OSError(f"no address for {self.host}")

    def _connect_proxy(self) -> socket.socket:
        try:
            self._guard.resolve(self.host, self.port)  # BlockedAddress when every address it has here is refused
        except DnsError:
            pass  # a name only the proxy resolves: what it points to is the proxy's to check
        sock = socket.create_connection((self._proxy.host, self._proxy.port), self.timeout)
        if self._ssl_context is not None:
            try:
                _open_tunnel(sock, self.host, self.port, self._proxy.headers)
            except BaseException:
                sock.close()
                raise
        return sock


def _open_tunnel(sock: socket.socket, host: str, port: int, headers: dict[str, str]) -> None:
    """Ask the proxy on ``sock`` for a ``CONNECT`` tunnel to ``host:port``; raises OSError when it refuses."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    response = http.client.HTTPResponse(sock, method="CONNECT")
    response.begin()  # the status line and headers only: the tunnel's bytes follow
    if response.status != 200:
        raise OSError(f"the proxy refused CONNECT {authority}: HTTP {response.status} {response.reason}".strip())


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

    def __init__(
        self, guard: AddressGuard, config: DownloadConfig, ssl_context, max_idle: int = 8, proxies: dict | None = None
    ):
        self.guard, self.config, self.ssl_context, self.max_idle = guard, config, ssl_context, max_idle
        self.idle: OrderedDict[tuple, GuardedConnection] = OrderedDict()
        self.proxies = getproxies_environment() if proxies is None else proxies  # HTTP(S)_PROXY, NO_PROXY
        self._parsed: dict[str, Proxy] = {}
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
        proxy, headers = self._proxy(url), self.headers
        if proxy is not None and parts.scheme == "http":  # a plain request to the proxy names the whole URL
            authority = f"[{host}]" if ":" in host else host
            authority += f":{port}" if parts.port else ""
            target, headers = f"http://{authority}{target}", {**headers, **proxy.headers}
        for attempt in range(2):
            connection = self.idle.pop(key, None)
            reused = connection is not None
            if connection is None:
                connection = GuardedConnection(
                    host, port, self.guard, self.config.connect_timeout, self.config.read_timeout,
                    self.ssl_context if parts.scheme == "https" else None, proxy,
                )  # fmt: skip
            try:
                connection.request("GET", target, headers=headers)
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

    def _proxy(self, url: str) -> Proxy | None:
        """The proxy ``url`` goes through (:func:`~neighbor_lt.retrieval.proxies.proxy_for`), or None."""
        proxy_url = proxy_for(url, self.proxies)
        if proxy_url is None:
            return None
        if proxy_url not in self._parsed:
            self._parsed[proxy_url] = parse_proxy(proxy_url)
        return self._parsed[proxy_url]

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
