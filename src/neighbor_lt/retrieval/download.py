"""A polite, guarded, resumable image downloader.

Every candidate URL gets exactly one line in ``downloads.jsonl`` (its outcome, hashes and stored file); images are
stored once, by SHA-256, under ``images/``. A rerun skips every URL that already has a line, so killing the process at
any point and starting it again loses nothing and duplicates nothing.

Outcomes: ``ok``, ``http_error``, ``timeout``, ``network_error``, ``dns_error`` (the name does not resolve),
``bad_url`` (malformed URL, invalid port, unsupported scheme), ``robots_unreachable`` (robots.txt answered 5xx or could
not be fetched: RFC 9309 says disallow all), ``not_image``, ``too_large``, ``too_small``, ``duplicate``,
``blocked_address``, ``opted_out``, ``error`` (anything unexpected, with its type in ``detail``). Nothing raises out of
:meth:`Downloader.run` for one URL. Timeouts, network and DNS errors, 429 / 5xx after the retries and an unreachable
robots.txt are *retryable*: ``Downloader.run(..., retry_failed=True)`` (``recipes/curate.py --retry_failed``)
fetches those again and nothing else.

Ctrl-C stops the run within about a second: queued URLs are dropped, downloads still in flight get ``stop_grace``
seconds to finish and be recorded, the rest are abandoned with nothing written for them. An image file is written only
together with its record (a file left by ``kill -9`` between the two is removed on the next run), so a rerun resumes
with nothing lost and nothing twice.

Speed: one Python process is CPU-bound at a few hundred images per second, so ``num_processes`` download processes
(default: one per CPU core, at most 4, for 200 URLs or more) fetch, validate and hash in parallel, with
``num_workers`` threads shared out between them; this process alone deduplicates and writes, so the guarantees above
hold unchanged. Each process reads a host's robots.txt once.

Politeness: at most ``requests_per_second_per_host`` (default 4) requests per second and ``max_connections_per_host``
at once to one host, which caps a single-host source at about that many images per second; the summary says how long
the limit held requests back. Set it to 0 for your own servers. Both limits hold over all download processes
together (each gets its share).

Safety by default: only http(s); any address that is private, loopback, link-local, multicast, reserved or unspecified
is refused, checked on the IP a hostname resolves to at connect time (so redirects and DNS answers cannot sneak past),
unless it is in ``allowed_networks``; robots.txt and ``X-Robots-Tag: noai / noimageai / noindex / none`` are honoured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import ipaddress
import json
import logging
import multiprocessing
import os
import pickle
import queue
import random
import signal
import socket
import ssl
import sys
import threading
import time
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..secrets import redact, redactor, register_secret, registered_secrets
from .search import DEFAULT_USER_AGENT, Candidate

logger = logging.getLogger(__name__)

OUTCOMES = (
    "ok",
    "http_error",
    "timeout",
    "network_error",
    "not_image",
    "too_large",
    "too_small",
    "duplicate",
    "blocked_address",
    "opted_out",
    "bad_url",
    "dns_error",
    "robots_unreachable",
    "error",
)
RETRYABLE_OUTCOMES = ("timeout", "network_error", "dns_error", "robots_unreachable")


def is_retryable(record: dict) -> bool:
    """Whether a manifest record failed in a way that may succeed later (timeouts, network / DNS errors, 429 and
    5xx after the retries, an unreachable robots.txt); ``--retry_failed`` fetches exactly these again."""
    if record.get("outcome") in RETRYABLE_OUTCOMES:
        return True
    status = record.get("status")
    return record.get("outcome") == "http_error" and isinstance(status, int) and (status == 429 or status >= 500)


@dataclass
class DownloadConfig:
    """Downloader settings (the ``download:`` block of the ``retrieve`` stage)."""

    num_workers: int = field(default=16, metadata={"help": "Concurrent downloads (threads, over all processes)."})
    num_processes: int = field(
        default=0,
        metadata={
            "help": "Download processes sharing the threads and the per-host limits (one Python process is CPU-bound "
            "at ~250 images/s); 0 = one per CPU core, at most 4, for 200 URLs or more."
        },
    )
    max_connections_per_host: int = field(default=4, metadata={"help": "Concurrent requests to one host."})
    requests_per_second_per_host: float = field(default=4.0, metadata={"help": "Request rate per host; 0 = no limit."})
    connect_timeout: float = field(default=10.0, metadata={"help": "Seconds to connect."})
    read_timeout: float = field(default=20.0, metadata={"help": "Seconds between two reads."})
    total_timeout: float = field(default=60.0, metadata={"help": "Seconds for one whole response body."})
    max_retries: int = field(default=3, metadata={"help": "Retries on 429, 5xx and connection errors."})
    backoff_base: float = field(default=1.0, metadata={"help": "Backoff before retry k is base * 2^k (+ jitter)."})
    backoff_max: float = field(default=60.0, metadata={"help": "Longest wait before a retry (caps Retry-After too)."})
    max_redirects: int = field(default=5, metadata={"help": "Redirects followed per URL; loops are refused."})
    max_bytes: int = field(default=20_000_000, metadata={"help": "Largest response body accepted, in bytes."})
    max_pixels: int = field(default=40_000_000, metadata={"help": "Largest width*height (decompression-bomb guard)."})
    min_side: int = field(default=16, metadata={"help": "Smallest accepted image side, in pixels."})
    max_side: int = field(default=512, metadata={"help": "Images are resized so their longer side is at most this."})
    jpeg_quality: int = field(default=90, metadata={"help": "Quality of the stored JPEG."})
    phash_distance: int = field(
        default=0, metadata={"help": "Perceptual-hash Hamming distance counted as a duplicate; -1 disables."}
    )
    user_agent: str = field(default=DEFAULT_USER_AGENT, metadata={"help": "User-Agent header (say who you are)."})
    block_private_addresses: bool = field(
        default=True, metadata={"help": "Refuse private, loopback, link-local, multicast and reserved addresses."}
    )
    allowed_networks: list[str] = field(
        default_factory=list, metadata={"help": "CIDRs exempt from the address guard (tests: ['127.0.0.1/32'])."}
    )
    ca_bundle: str | None = field(
        default=None,
        metadata={"help": "PEM file of extra certificate authorities to trust for https (a mirror with its own CA)."},
    )
    respect_robots_txt: bool = field(default=True, metadata={"help": "Skip URLs that robots.txt disallows for us."})
    respect_x_robots_tag: bool = field(default=True, metadata={"help": "Skip responses carrying an opt-out header."})
    opt_out_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "none"],
        metadata={"help": "X-Robots-Tag directives that count as an opt-out."},
    )
    stop_grace: float = field(
        default=1.0, metadata={"help": "Seconds Ctrl-C waits for downloads in flight to finish and be recorded."}
    )


class BlockedAddress(Exception):
    """The URL's host is, or resolves to, an address the guard refuses."""


class DnsError(Exception):
    """The URL's host name does not resolve."""


class _Stopped(Exception):
    """The run was interrupted (Ctrl-C) while this URL was in flight: nothing is recorded for it."""


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


class _HttpError(Exception):
    """A request failed below HTTP: connection refused or reset, TLS, a malformed or cut-off response."""


class _HttpTimeout(_HttpError):
    """Connecting, or waiting for the next bytes of a response, took longer than its timeout."""


class _GuardedConnection(http.client.HTTPConnection):
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


class _Response:
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
            raise _HttpTimeout("ReadTimeout") from None
        except (OSError, http.client.HTTPException, zlib.error) as e:
            raise _HttpError(f"{type(e).__name__}: {e}") from None
        self.complete = True


class _Connections:
    """One thread's keep-alive connections, one per origin, at most ``max_idle`` kept (least recently used closed)."""

    def __init__(self, guard: AddressGuard, config: DownloadConfig, ssl_context, max_idle: int = 8):
        self.guard, self.config, self.ssl_context, self.max_idle = guard, config, ssl_context, max_idle
        self.idle: OrderedDict[tuple, _GuardedConnection] = OrderedDict()
        self.headers = {"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}

    @contextmanager
    def get(self, url: str) -> Iterator[_Response]:
        """GET ``url`` (checked by :func:`_url_problem`); no redirect is followed. Raises _HttpTimeout, _HttpError,
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
                connection = _GuardedConnection(
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
                raise _HttpError(f"{type(e).__name__}: {e}") from None
            except TimeoutError:
                connected = connection.sock is not None
                connection.close()
                raise _HttpTimeout("ReadTimeout" if connected else "ConnectTimeout") from None
            except (OSError, http.client.HTTPException, UnicodeError) as e:
                connection.close()
                raise _HttpError(f"{type(e).__name__}: {e}") from None
        wrapped = _Response(response, self.config.max_bytes)
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


class _HostLimiter:
    """At most ``max_connections`` requests in flight and ``rate`` requests per second to one host."""

    def __init__(self, max_connections: int, rate: float, stop: threading.Event):
        self.semaphore = threading.BoundedSemaphore(max(1, max_connections))
        self.lock = threading.Lock()
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_time = 0.0
        self.waited = 0.0  # seconds requests were held back by the rate limit (summed over requests)
        self.stop = stop

    @contextmanager
    def slot(self):
        with self.semaphore:
            if self.interval:
                with self.lock:
                    now = time.monotonic()
                    wait = max(0.0, self.next_time - now)
                    self.next_time = max(now, self.next_time) + self.interval
                    self.waited += wait
                if wait and self.stop.wait(wait):
                    raise _Stopped()
            yield


def read_jsonl(path: str) -> list[dict]:
    """Read a JSONL file, ignoring a torn last line left by a killed writer."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: skipping a torn line", path)
    return records


class JsonlWriter:
    """Append-only JSONL log, one flushed line per record, safe to share between threads."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, "rb+") as f:  # drop a torn last line so the next record starts on its own line
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        with self.lock:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def hamming(a: str, b: str) -> int:
    """Hamming distance between two hex-encoded perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


_DCT_LOW: np.ndarray | None = None


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit perceptual hash of ``image`` as 16 hex digits, bit for bit ``str(imagehash.phash(image))``.

    The same algorithm (greyscale, Lanczos resize to 32x32, 2-D DCT-II, the 8x8 lowest frequencies against their
    median) with the DCT as two small matrix products instead of two FFT calls: less than half the CPU, which matters
    at a few hundred images per second.
    """
    global _DCT_LOW
    if _DCT_LOW is None:  # scipy.fftpack.dct's unnormalised DCT-II: 2 cos(pi k (2n + 1) / 2N), first 8 rows
        k, n = np.arange(8)[:, None], np.arange(32)[None, :]
        _DCT_LOW = 2.0 * np.cos(np.pi * k * (2 * n + 1) / 64)
    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = np.round(_DCT_LOW @ pixels @ _DCT_LOW.T, 6)  # float noise must not decide ties (flat images)
    return np.packbits((low > np.median(low)).ravel()).tobytes().hex()


def decode_image(data: bytes, config: DownloadConfig) -> tuple[str, str, Image.Image | None]:
    """Decode and validate image bytes: returns (outcome, detail, RGB image resized to ``max_side``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > config.max_pixels:
                return "too_large", f"decompression bomb guard: {width}x{height} pixels", None
            if min(width, height) < config.min_side:
                return "too_small", f"{width}x{height}", None
            if image.format == "JPEG":
                image.draft("RGB", (config.max_side, config.max_side))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return "too_large", f"decompression bomb: {e}", None
    except Exception as e:  # Pillow raises many types for truncated or non-image bytes
        return "not_image", f"{type(e).__name__}: {e}"[:200], None
    unchanged = image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= config.max_side
    unchanged = unchanged and image.size == (width, height)  # draft() may have shrunk it
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    else:
        image = image.convert("RGB")
    image.thumbnail((config.max_side, config.max_side), Image.Resampling.BICUBIC)
    image.info["unchanged"] = unchanged
    return "ok", "", image


def _url_problem(url: str) -> str | None:
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


class _RobotsUnreachable(Exception):
    """robots.txt answered 5xx or could not be fetched (RFC 9309: disallow all until it can be read)."""


class Downloader:
    """Fetch, validate, deduplicate and store candidate images; one manifest line per candidate.

    Example:
        >>> from neighbor_lt.retrieval import Candidate, DownloadConfig, Downloader
        >>> dl = Downloader("out/retrieve", DownloadConfig(num_workers=8))
        >>> summary = dl.run([Candidate("goldfish", "https://example.org/fish.jpg", aux_name="goldfish")])
        >>> summary["ok"]  # doctest: +SKIP
        >>> dl.run(candidates, retry_failed=True)  # doctest: +SKIP  # timeouts, 5xx, DNS errors ... fetched again

    Args:
        output_dir: folder of ``downloads.jsonl``, ``images/`` and ``download_summary.json``.
        config: a :class:`DownloadConfig`.
        resolver: ``getaddrinfo``-compatible name resolver (default ``socket.getaddrinfo``; tests inject one).
        reuse_dir: another downloader's folder (the rank stage's probes): a candidate with an ``ok`` record there
            (same auxiliary class and URL) takes its stored image instead of a request, then is deduplicated here.
    """

    def __init__(
        self,
        output_dir: str,
        config: DownloadConfig | None = None,
        resolver: Callable | None = None,
        reuse_dir: str | None = None,
    ):
        self.output_dir = output_dir
        self.config = config = config or DownloadConfig()
        self.manifest_path = os.path.join(output_dir, "downloads.jsonl")
        self.guard = AddressGuard(config.block_private_addresses, config.allowed_networks, resolver)
        self._local = threading.local()
        self._connections: list[_Connections] = []
        self._ssl_context = ssl.create_default_context()  # shared: building one costs ~30 ms of CPU
        if config.ca_bundle:
            self._ssl_context.load_verify_locations(cafile=config.ca_bundle)
        self.ua_token = config.user_agent.split("/")[0].split()[0]
        self._limiters: dict[str, _HostLimiter] = {}
        self._robots: dict[str, object] = {}  # origin -> True (no rules), RobotFileParser, or the reason it failed
        self._robots_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._sha: dict[str, str] = {}  # sha256 -> key of the first record
        self._phash: dict[str, str] = {}
        self._url_results: dict[str, dict] = {}  # redacted URL -> its first record
        self._redact = redactor()  # the secrets known now; renewed by run()
        self._throttled_elsewhere: Counter = Counter()  # host -> seconds held back in the download processes
        self._stop = threading.Event()
        self._commit_lock = threading.Lock()  # an image file and its manifest line are written together
        self._writer: JsonlWriter | None = None
        self.reuse_dir = reuse_dir
        self._reuse: dict[str, dict] = {}
        if reuse_dir:
            manifest = os.path.join(reuse_dir, "downloads.jsonl")
            self._reuse = {r["key"]: r for r in read_jsonl(manifest) if r.get("outcome") == "ok" and r.get("path")}

    # ---- resumption -------------------------------------------------------------------------------------------
    def load_records(self, retry_failed: bool = False) -> dict[str, dict]:
        """Records already in the manifest, by key (a key's last line wins); also rebuilds the dedup indexes.

        With ``retry_failed``, the records of retryable failures (:func:`is_retryable`) are taken out of the manifest
        (rewritten atomically), so their URLs are fetched again. Image files without a record (left by ``kill -9``
        between writing a file and its line) are removed.
        """
        lines = read_jsonl(self.manifest_path)
        records = {}
        for record in lines:
            records[record["key"]] = record
        if retry_failed:
            retry = [key for key, record in records.items() if is_retryable(record)]
            for key in retry:
                del records[key]
            if retry or len(lines) != len(records):
                text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values())
                _atomic_write(self.manifest_path, text.encode())
            logger.info("retry_failed: %d failed URL(s) will be fetched again", len(retry))
        for record in records.values():
            if record["outcome"] == "ok":
                self._sha.setdefault(record["sha256"], record["key"])
                self._phash.setdefault(record["phash"], record["key"])
        self._remove_orphans(records)
        return records

    def _remove_orphans(self, records: dict[str, dict]) -> None:
        root = os.path.join(self.output_dir, "images")
        if not os.path.isdir(root):
            return
        keep = {os.path.normpath(os.path.join(self.output_dir, r["path"])) for r in records.values() if r.get("path")}
        removed = 0
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.normpath(os.path.join(folder, name))
                if path not in keep:
                    os.remove(path)
                    removed += 1
        if removed:
            logger.info("removed %d image file(s) without a manifest line (left by an interrupted run)", removed)

    # ---- HTTP -------------------------------------------------------------------------------------------------
    @property
    def _http(self) -> _Connections:
        """This thread's keep-alive connections (http.client: a request costs a fifth of httpx's CPU)."""
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = _Connections(self.guard, self.config, self._ssl_context)
            with self._lock:
                self._connections.append(connections)
        return connections

    def _limiter(self, host: str) -> _HostLimiter:
        with self._lock:
            if host not in self._limiters:
                self._limiters[host] = _HostLimiter(
                    self.config.max_connections_per_host, self.config.requests_per_second_per_host, self._stop
                )
            return self._limiters[host]

    def _robots_allows(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:
            if origin not in self._robots:
                try:
                    self._robots[origin] = self._fetch_robots(origin)
                except DnsError as e:  # one lookup per host, not one per URL of a dead domain
                    self._robots[origin] = e
        rules = self._robots[origin]
        if isinstance(rules, DnsError):
            raise DnsError(str(rules))
        if isinstance(rules, str):
            raise _RobotsUnreachable(rules)
        return rules if isinstance(rules, bool) else rules.can_fetch(self.ua_token, url)

    def _fetch_robots(self, origin: str) -> RobotFileParser | bool | str:
        """robots.txt per RFC 9309: 4xx means no rules, 5xx or unreachable means disallow all (returned as the reason).

        A refused address raises BlockedAddress (not cached), so the URL is reported as blocked, not opted out.
        """
        url = origin + "/robots.txt"
        try:
            for _ in range(self.config.max_redirects + 1):  # redirects followed, each hop through the guard
                if problem := _url_problem(url):
                    return f"robots.txt unreachable (redirect to a bad URL: {problem})"
                with self._limiter(urlsplit(url).netloc).slot(), self._http.get(url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    status = response.status_code
                    body = bytearray()
                    if status < 400:
                        for chunk in response.iter_bytes():
                            body += chunk
                            if len(body) > 500_000:
                                break
                    break
            else:
                return "robots.txt unreachable (too many redirects)"
        except (_HttpError, ValueError) as e:
            return f"robots.txt unreachable ({e})"[:200]
        if 400 <= status < 500:
            return True
        if status >= 500:
            return f"robots.txt answered HTTP {status}"
        parser = RobotFileParser()
        parser.parse(bytes(body[:500_000]).decode("utf-8", "replace").splitlines())
        return parser

    def _opted_out(self, headers) -> str | None:
        for value in headers.get_all("x-robots-tag") or ():
            for directive in value.lower().replace(";", ",").split(","):
                directive = directive.split(":")[-1].strip()  # "googlebot: noindex" -> "noindex"
                if directive in self.config.opt_out_directives:
                    return f"X-Robots-Tag: {value}"
        return None

    def fetch(self, url: str) -> dict:
        """Fetch one URL with the guard, robots, retries and size limits; returns outcome, detail, data, status, final_url.

        Every failure is an outcome (see the module docstring); only an interruption (Ctrl-C) raises.
        """
        cfg = self.config
        seen = set()
        for _ in range(cfg.max_redirects + 1):
            problem = _url_problem(url)
            if problem:
                return {"outcome": "bad_url", "detail": problem, "final_url": url}
            parts = urlsplit(url)
            if url in seen:
                return {"outcome": "http_error", "detail": "redirect loop", "final_url": url}
            seen.add(url)
            try:
                self.guard.check_literal(parts.hostname)
                if cfg.respect_robots_txt and not self._robots_allows(url):
                    return {"outcome": "opted_out", "detail": "robots.txt", "final_url": url}
                result = self._get(url, parts.netloc)
            except BlockedAddress as e:
                return {"outcome": "blocked_address", "detail": str(e), "final_url": url}
            except DnsError as e:
                return {"outcome": "dns_error", "detail": str(e), "final_url": url}
            except _RobotsUnreachable as e:
                return {"outcome": "robots_unreachable", "detail": str(e), "final_url": url}
            except _HttpTimeout as e:
                return {"outcome": "timeout", "detail": str(e), "final_url": url}
            except _HttpError as e:
                return {"outcome": "network_error", "detail": str(e)[:200], "final_url": url}
            if "location" not in result:
                return {**result, "final_url": url}
            try:
                url = urljoin(url, result["location"])
            except ValueError as e:
                return {"outcome": "bad_url", "detail": f"redirect to a malformed URL: {e}"[:200], "final_url": url}
        return {"outcome": "http_error", "detail": f"more than {cfg.max_redirects} redirects", "final_url": url}

    def _get(self, url: str, host: str) -> dict:
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            try:
                with self._limiter(host).slot(), self._http.get(url) as response:
                    status = response.status_code
                    if response.is_redirect:  # a redirect status with a Location header
                        return {"location": response.headers["location"], "status": status}
                    if status == 429 or status >= 500:
                        retry_after = response.headers.get("retry-after")
                        result = {"outcome": "http_error", "detail": f"HTTP {status}", "status": status}
                    elif status >= 400:
                        return {"outcome": "http_error", "detail": f"HTTP {status}", "status": status}
                    else:
                        return self._read_body(response)
            except _HttpTimeout:
                raise
            except _HttpError as e:
                result = {"outcome": "network_error", "detail": str(e)[:200]}
            if attempt < cfg.max_retries:
                wait = cfg.backoff_base * 2**attempt * (1 + random.random() / 4)
                if retry_after and retry_after.strip().isdigit():
                    wait = float(retry_after)
                if self._stop.wait(min(wait, cfg.backoff_max)):
                    raise _Stopped()
        return result

    def _read_body(self, response) -> dict:
        cfg = self.config
        status = response.status_code
        if cfg.respect_x_robots_tag and (reason := self._opted_out(response.headers)):
            return {"outcome": "opted_out", "detail": reason, "status": status}
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not (content_type.startswith("image/") or content_type.endswith("octet-stream")):
            return {"outcome": "not_image", "detail": f"content-type {content_type}", "status": status}
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_bytes:
            return {"outcome": "too_large", "detail": f"content-length {length}", "status": status}
        chunks, size, deadline = [], 0, time.monotonic() + cfg.total_timeout
        for chunk in response.iter_bytes():
            if self._stop.is_set():
                raise _Stopped()
            size += len(chunk)
            if size > cfg.max_bytes:
                return {"outcome": "too_large", "detail": f"body over {cfg.max_bytes} bytes", "status": status}
            if time.monotonic() > deadline:
                return {"outcome": "timeout", "detail": f"body took over {cfg.total_timeout}s", "status": status}
            chunks.append(chunk)
        return {"outcome": "ok", "data": b"".join(chunks), "status": status, "content_type": content_type}

    # ---- one candidate ----------------------------------------------------------------------------------------
    def _prepare(self, candidate: Candidate) -> tuple[dict, bytes | None] | None:
        """The candidate's record and the bytes to store (for an ``ok``), or None when interrupted."""
        local = candidate.image_bytes is not None
        url = candidate.image_url if local else self._redact(candidate.image_url)  # no credential reaches a file
        record = {
            "key": f"{candidate.aux_name}\t{url}",
            "aux_name": candidate.aux_name,
            "neighbor_of": list(candidate.neighbor_of),
            "query": candidate.query,
            "source_url": url,
            "page_url": candidate.page_url if local else self._redact(candidate.page_url),
            "caption": candidate.caption,
            "rank": candidate.rank,
        }
        start = time.monotonic()
        try:
            record, data = self._fetch_and_check(candidate, record)
        except _Stopped:
            return None
        except Exception as e:  # one URL must never stop the stage: an unexpected failure is recorded like any other
            logger.debug("unexpected error on %s", url, exc_info=True)
            record.update(outcome="error", detail=f"{type(e).__name__}: {e}"[:200])
            data = None
        for key in ("final_url", "detail"):
            if key in record and not local:
                record[key] = self._redact(record[key])
        record["seconds"] = round(time.monotonic() - start, 4)
        return record, data

    def _fetch_and_check(self, candidate: Candidate, record: dict) -> tuple[dict, bytes | None]:
        """Fetch (or reuse) and validate one candidate: its record with hashes and size, and the bytes to store
        (re-encoded unless already a small enough RGB JPEG). Deduplication is left to :meth:`_commit`."""
        reused = self._reused(record["key"])
        if reused is not None:
            result = reused
        elif candidate.image_bytes is not None:
            result = {"outcome": "ok", "data": candidate.image_bytes}
        else:
            with self._lock:
                previous = self._url_results.get(record["source_url"])
            if previous is not None:  # the same URL found by another query
                result = {"outcome": "duplicate" if previous["outcome"] == "ok" else previous["outcome"]}
                result["detail"] = f"same URL as {previous['key']}"
                if "status" in previous:
                    result["status"] = previous["status"]
            else:
                result = self.fetch(candidate.image_url)
        data = result.pop("data", None)
        hashes = {k: result.pop(k) for k in ("sha256", "phash") if k in result}  # a reused image's, as first received
        record.update({k: v for k, v in result.items() if k != "content_type"})
        if result["outcome"] != "ok":
            return record, None
        outcome, detail, image = decode_image(data, self.config)
        record.update(outcome=outcome, detail=detail)
        if image is None:
            return record, None
        sha = hashes.get("sha256") or hashlib.sha256(data).hexdigest()
        phash = hashes.get("phash") or perceptual_hash(image)
        record.update(sha256=sha, phash=phash, width=image.width, height=image.height, bytes=len(data))
        if not (data[:3] == b"\xff\xd8\xff" and image.info.get("unchanged")):
            buffer = io.BytesIO()  # re-encode only what is not already a small enough RGB JPEG
            image.save(buffer, "JPEG", quality=self.config.jpeg_quality)
            data = buffer.getvalue()
        return record, data

    def _dedup(self, record: dict, data: bytes | None) -> bytes | None:
        """Mark ``record`` a duplicate of an earlier image (same SHA-256 or a near perceptual hash) or give it its
        storage path; returns the bytes to write (None for anything but a new ``ok`` image)."""
        if record["outcome"] != "ok" or data is None:
            return None
        with self._lock:
            first = self._sha.get(record["sha256"]) or self._find_phash(record["phash"])
            if first is not None:
                record.update(outcome="duplicate", detail=f"same image as {first}")
                return None
            self._sha[record["sha256"]] = self._phash[record["phash"]] = record["key"]
        record["path"] = os.path.join("images", record["sha256"][:2], f"{record['sha256']}.jpg")
        return data

    def _reused(self, key: str) -> dict | None:
        """The stored image of ``key`` in ``reuse_dir`` as a fetch result (its record's fields), or None."""
        previous = self._reuse.get(key)
        path = os.path.join(self.reuse_dir, previous["path"]) if previous else None
        if path is None or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            data = f.read()
        fields = ("final_url", "status", "content_type", "sha256", "phash")
        return {"outcome": "ok", "data": data, **{k: previous[k] for k in fields if k in previous}, "reused": True}

    def _find_phash(self, phash: str) -> str | None:
        if self.config.phash_distance < 0:
            return None
        if phash in self._phash or self.config.phash_distance == 0:
            return self._phash.get(phash)
        return next((k for h, k in self._phash.items() if hamming(h, phash) <= self.config.phash_distance), None)

    def _commit(self, prepared: tuple[dict, bytes | None] | None) -> None:
        """Deduplicate a candidate, then write its image file and its manifest line together; dropped once the run
        has stopped."""
        if prepared is None:
            return
        record, data = prepared
        with self._commit_lock:
            if self._writer is None:
                return
            data = self._dedup(record, data)
            if not record["source_url"].startswith("pool://"):
                with self._lock:
                    self._url_results.setdefault(record["source_url"], record)
            if data is not None:
                _atomic_write(os.path.join(self.output_dir, record["path"]), data)
            self._writer.write(record)

    # ---- a run --------------------------------------------------------------------------------------------------
    def run(
        self, candidates: Iterable[Candidate], desc: str = "download", retry_failed: bool = False
    ) -> dict[str, int]:
        """Process every candidate that has no manifest line yet; returns counts per outcome over the whole manifest.

        Ctrl-C (KeyboardInterrupt) stops it within about ``stop_grace`` seconds: what finished is recorded, the
        rest is not, and the KeyboardInterrupt is raised again for the caller.

        Example:
            >>> Downloader("out").run(candidates)  # doctest: +SKIP
            {'ok': 812, 'http_error': 40, 'duplicate': 25, ..., 'retryable': 31, 'total': 900}

        Args:
            candidates: :class:`Candidate` objects (their ``aux_name`` + URL is the resumption key).
            desc: progress-bar label.
            retry_failed: fetch again the URLs whose record is a retryable failure (:func:`is_retryable`).
        """
        self._redact = redactor()  # secrets registered since construction (a search backend's key) are known now
        done = self.load_records(retry_failed)
        for record in done.values():
            if not record["source_url"].startswith("pool://"):
                self._url_results.setdefault(record["source_url"], record)
        todo, keys = [], set(done)
        for candidate in candidates:
            url = candidate.image_url if candidate.image_bytes is not None else self._redact(candidate.image_url)
            key = f"{candidate.aux_name}\t{url}"
            if key not in keys:
                keys.add(key)
                todo.append(candidate)
        logger.info("%s: %d candidate(s) already in %s, %d to do", desc, len(done), self.manifest_path, len(todo))
        self._stop.clear()
        self._writer = JsonlWriter(self.manifest_path)
        try:
            with tqdm(total=len(todo), desc=desc, unit="img") as bar:
                if self.config.num_workers <= 1 or all(c.image_bytes is not None for c in todo):
                    for candidate in todo:
                        self._commit(self._prepare(candidate))
                        bar.update()
                elif (processes := self._process_count(todo)) > 1:
                    self._run_processes(todo, bar, processes)
                else:
                    self._run_threads(todo, bar)
        except KeyboardInterrupt:
            logger.warning("%s: interrupted; what finished is recorded, rerun to resume", desc)
            raise
        finally:
            self._stop.set()
            with self._commit_lock:  # from here on, a late worker writes nothing (no file without its line)
                writer, self._writer = self._writer, None
                writer.close()
        return self.summary()

    def _run_threads(self, todo: list[Candidate], bar) -> None:
        """Process ``todo`` on ``num_workers`` daemon threads (they never hold up the interpreter's exit)."""
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        finished: queue.SimpleQueue = queue.SimpleQueue()
        for candidate in todo:
            jobs.put(candidate)
        errors: list[BaseException] = []

        def work() -> None:
            while not self._stop.is_set():
                try:
                    candidate = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._commit(self._prepare(candidate))
                except BaseException as e:  # writing failed (disk full ...): stop the run and report it
                    errors.append(e)
                    self._stop.set()
                finally:
                    finished.put(1)

        threads = [
            threading.Thread(target=work, name=f"download-{i}", daemon=True)
            for i in range(min(self.config.num_workers, len(todo)))
        ]
        for thread in threads:
            thread.start()
        count = 0
        try:
            while count < len(todo) and not errors:
                try:
                    finished.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads):
                        break
                    continue
                count += 1
                bar.update()
        except KeyboardInterrupt:
            self._stop.set()  # queued URLs are dropped; sleeping retries and rate-limit waits wake up and give up
            deadline = time.monotonic() + self.config.stop_grace
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            raise
        if errors:
            raise errors[0]

    def _process_count(self, todo: list[Candidate]) -> int:
        """How many download processes ``todo`` gets: ``num_processes``, or one per core (at most 4) for 200 URLs
        or more; never more than ``max_connections_per_host`` (each process holds at least one connection per host)."""
        cfg = self.config
        wanted = cfg.num_processes
        if wanted <= 0:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            wanted = min(cores, 4) if len(todo) >= 200 else 1
        wanted = min(wanted, max(1, cfg.max_connections_per_host), cfg.num_workers)
        if any(c.image_bytes is not None for c in todo):
            return 1
        if wanted > 1 and self.guard.resolver is not socket.getaddrinfo:
            try:
                pickle.dumps(self.guard.resolver)
            except Exception:
                logger.info("the custom resolver cannot be sent to other processes: downloading in this one")
                return 1
        return wanted

    def _run_processes(self, todo: list[Candidate], bar, processes: int) -> None:
        """Fetch and validate ``todo`` in ``processes`` worker processes (threads in each, the per-host limits shared
        out); deduplicate and write here, so a file and its line are still written together by one process.

        One fetch per URL: a candidate whose URL is already in flight waits for that record and is settled here.
        Ctrl-C: the workers stop, records arriving within ``stop_grace`` are kept, then the workers are ended.
        """
        cfg = self.config
        share = dataclasses.replace(
            cfg,
            num_workers=-(-cfg.num_workers // processes),
            max_connections_per_host=max(1, cfg.max_connections_per_host // processes),
            requests_per_second_per_host=cfg.requests_per_second_per_host / processes,
            num_processes=1,
        )
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
        jobs, results, stop = context.Queue(), context.Queue(), context.Event()
        jobs.cancel_join_thread()  # URLs still queued at an interruption are dropped, never waited for at exit
        waiting: dict[str, list[Candidate]] = {}  # redacted URL in flight -> later candidates with the same URL
        leaders = 0
        for candidate in todo:
            url = self._redact(candidate.image_url)
            if url in self._url_results:  # a previous run fetched it: settled here without a request
                self._commit(self._prepare(candidate))
                bar.update()
            elif url in waiting:
                waiting[url].append(candidate)
            else:
                waiting[url] = []
                jobs.put(candidate)
                leaders += 1
        for _ in range(processes):
            jobs.put(None)
        resolver = None if self.guard.resolver is socket.getaddrinfo else self.guard.resolver
        workers = [
            context.Process(
                target=_download_process,
                args=(self.output_dir, share, resolver, self.reuse_dir, jobs, results, stop, registered_secrets()),
                name=f"download-{i}",
                daemon=True,
            )
            for i in range(processes)
        ]
        with _no_main_rerun():
            for worker in workers:
                worker.start()

        def settle(prepared: tuple[dict, bytes | None]) -> None:
            self._commit(prepared)
            bar.update()
            url = prepared[0]["source_url"]
            if url in self._url_results:  # committed: the candidates waiting on its URL are settled without a request
                for follower in waiting.pop(url, ()):
                    self._commit(self._prepare(follower))
                    bar.update()

        exited = 0
        try:
            while exited < processes:
                try:
                    kind, payload = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):
                        break
                    continue
                if kind == "record":
                    settle(payload)
                    leaders -= 1
                elif kind == "exit":
                    exited += 1
                    self._throttled_elsewhere.update(payload)
                elif kind == "error":
                    raise RuntimeError(f"a download process failed: {payload}")
            if leaders:
                codes = [w.exitcode for w in workers]
                raise RuntimeError(
                    f"a download process died (exit codes {codes}); {leaders} URL(s) were not processed: rerun to "
                    "resume, they are fetched then"
                )
        except KeyboardInterrupt:
            stop.set()  # queued URLs are dropped; downloads in flight get stop_grace seconds to arrive and be kept
            deadline = time.monotonic() + cfg.stop_grace
            while (left := deadline - time.monotonic()) > 0:
                try:
                    kind, payload = results.get(timeout=left)
                except queue.Empty:
                    break
                if kind == "record":
                    settle(payload)
            raise
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=0.5)
                if worker.is_alive():
                    worker.kill()
                    worker.join(timeout=1)

    def summary(self) -> dict[str, int]:
        """Counts per outcome over the whole manifest (one per key), the number of retryable failures and the seconds
        the per-host rate limit held requests back; also written to ``download_summary.json``."""
        records = {r["key"]: r for r in read_jsonl(self.manifest_path)}
        counts = Counter(r["outcome"] for r in records.values())
        summary = {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}
        summary["retryable"] = sum(is_retryable(r) for r in records.values())
        summary["total"] = len(records)
        with self._lock:
            waited = Counter({host: limiter.waited for host, limiter in self._limiters.items()})
            waited.update(self._throttled_elsewhere)
            throttled = {host: seconds for host, seconds in waited.items() if seconds >= 1}
        summary["throttled_seconds"] = round(sum(throttled.values()), 1)
        _atomic_write(os.path.join(self.output_dir, "download_summary.json"), json.dumps(summary, indent=2).encode())
        if throttled:
            worst = max(throttled, key=throttled.get)
            logger.info(
                "the per-host rate limit (requests_per_second_per_host=%s) held requests back %.0f s in all, %.0f s "
                "on %s; raise it (or set 0) for a source that allows more",
                self.config.requests_per_second_per_host, summary["throttled_seconds"], throttled[worst], worst,
            )  # fmt: skip
        logger.info("download summary: %s", {k: v for k, v in summary.items() if v})
        return summary

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for pool in connections:
            pool.close()


@contextmanager
def _no_main_rerun():
    """Start spawned download processes without re-running the caller's ``__main__`` in each.

    multiprocessing's spawn imports the main script again in every child (as ``__mp_main__``) so that functions
    defined there can be unpickled; a download process needs nothing from it, and re-running ``recipes/curate.py``'s
    imports costs ~3 s of CPU per process. Hiding the main module's file and spec while the processes start makes
    the children skip that step.
    """
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        if main is not None:
            main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _download_process(output_dir, config, resolver, reuse_dir, jobs, results, stop, secrets) -> None:
    """A download process of :meth:`Downloader._run_processes`: fetch and validate the queued candidates on
    ``config.num_workers`` threads and send each ``(record, bytes)`` back; the parent deduplicates and writes.

    Sends ``("record", prepared)`` per candidate, ``("exit", {host: seconds throttled})`` at the end and
    ``("error", text)`` if it fails as a whole. Ctrl-C is the parent's to handle; if the parent dies, so does this.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for secret in secrets:  # the parent's registered secrets are redacted here too
        register_secret(secret)
    parent = multiprocessing.parent_process()

    def exit_with_parent() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    try:
        downloader = Downloader(output_dir, config, resolver=resolver, reuse_dir=reuse_dir)
        downloader._stop = stop

        def work() -> None:
            while not stop.is_set():
                try:
                    candidate = jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                if candidate is None:
                    jobs.put(None)  # for this process's other threads
                    return
                prepared = downloader._prepare(candidate)
                if prepared is not None:
                    results.put(("record", prepared))

        threads = [threading.Thread(target=work, daemon=True) for _ in range(config.num_workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        downloader.close()
        results.put(("exit", {host: limiter.waited for host, limiter in downloader._limiters.items()}))
    except BaseException as e:  # noqa: BLE001  # reported to the parent, which raises it
        results.put(("error", redact(f"{type(e).__name__}: {e}")[:500]))
    results.close()
    results.join_thread()


def candidate_to_dict(candidate: Candidate) -> dict:
    """A candidate as a JSON-able dict (without image bytes)."""
    d = asdict(candidate)
    d.pop("image_bytes")
    return d


def iter_img2dataset(folder: str) -> Iterable[Candidate]:
    """Candidates (with their bytes) from an img2dataset output folder, any of its output formats.

    Hand ``retrieve/urls.parquet`` to img2dataset (``--input_format parquet --url_col url --caption_col caption
    --save_additional_columns '["aux_name","neighbor_of","page_url","rank"]'``, with its Spark or Ray distributor at web
    scale), then point ``retrieve.img2dataset_dir`` at its output: the images go through the same validation, dedup,
    filters and builder. Only rows with ``status == "success"`` are read.

    Example:
        >>> candidates = list(iter_img2dataset("i2d_out"))  # doctest: +SKIP
    """
    import glob
    import tarfile

    import pyarrow.parquet as pq

    def make(meta: dict, data: bytes) -> Candidate:
        neighbor_of = meta.get("neighbor_of") or []
        if isinstance(neighbor_of, str):
            neighbor_of = json.loads(neighbor_of) if neighbor_of.startswith("[") else [neighbor_of]
        name = meta.get("aux_name") or meta.get("caption") or ""
        return Candidate(
            name, meta.get("url") or "", meta.get("page_url") or "", meta.get("caption") or "",
            int(meta.get("rank") or 0), data, name, list(neighbor_of),
        )  # fmt: skip

    for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        table = pq.read_table(path)
        if "jpg" not in table.column_names:
            continue  # the metadata table of the "files" / "webdataset" formats
        for row in table.to_pylist():
            if row.get("status", "success") == "success" and row.get("jpg"):
                yield make(row, row.pop("jpg"))
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.json"))):
        with open(path) as f:
            meta = json.load(f)
        image_path = path[: -len(".json")] + ".jpg"
        if meta.get("status", "success") == "success" and os.path.exists(image_path):
            with open(image_path, "rb") as f:
                yield make(meta, f.read())
    for path in sorted(glob.glob(os.path.join(folder, "*.tar"))):
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if name.endswith(".json") and name[:-5] + ".jpg" in members:
                    meta = json.load(tar.extractfile(member))
                    if meta.get("status", "success") == "success":
                        yield make(meta, tar.extractfile(members[name[:-5] + ".jpg"]).read())
