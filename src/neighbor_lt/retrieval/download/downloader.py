"""The downloader: each candidate fetched (or reused), validated, deduplicated and recorded with its image."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit
from urllib.request import getproxies_environment

from tqdm.auto import tqdm

from ...secrets import redactor
from ..proxies import parse_proxy
from ..records_store import RecordStore
from ..search import Candidate
from .client import AddressGuard, BlockedAddress, Connections, DnsError, HttpError, HttpTimeout, Response, url_problem
from .config import (
    OUTCOMES,
    RETRYABLE_OUTCOMES,
    SETTING_OUTCOMES,
    DownloadConfig,
    guard_settings,
    is_refetched,
    is_retryable,
)
from .dedup import DedupIndex, image_path, perceptual_hash
from .images import decode_image
from .limits import HostLimiters, Stopped
from .processes import DownloadProcesses, process_count
from .records import DOWNLOADS, atomic_write, has_downloads, open_downloads
from .robots import RobotsRules, RobotsUnreachable, opted_out

logger = logging.getLogger(__name__)


class Downloader:
    """Fetch, validate, deduplicate and store candidate images; one record per candidate in ``downloads.sqlite``.

    Example:
        >>> from neighbor_lt.retrieval import Candidate, DownloadConfig, Downloader
        >>> dl = Downloader("out/retrieve", DownloadConfig(num_workers=8))
        >>> summary = dl.run([Candidate("goldfish", "https://example.org/fish.jpg", aux_name="goldfish")])
        >>> summary["ok"]  # doctest: +SKIP
        >>> dl.run(candidates, retry_failed=True)  # doctest: +SKIP  # timeouts, 5xx, DNS errors ... fetched again

    Args:
        output_dir: folder of ``downloads.sqlite`` (:func:`~.records.open_downloads`; an earlier version's
            ``downloads.jsonl`` is migrated into it once), ``images/`` and ``download_summary.json``.
        config: a :class:`DownloadConfig`.
        resolver: ``getaddrinfo``-compatible name resolver (default ``socket.getaddrinfo``; tests inject one).
        reuse_dir: another downloader's folder (the rank stage's probes): a candidate with an ``ok`` record there
            (same auxiliary class and URL) takes its stored image instead of a request, then is deduplicated here.
        stop: the event that interrupts a run (a download process is given its parent's); a new one by default.
    """

    def __init__(
        self,
        output_dir: str,
        config: DownloadConfig | None = None,
        resolver: Callable | None = None,
        reuse_dir: str | None = None,
        stop: threading.Event | None = None,
    ):
        self.output_dir = output_dir
        self.config = config = config or DownloadConfig()
        self.manifest_path = os.path.join(output_dir, DOWNLOADS)
        self.guard = AddressGuard(config.block_private_addresses, config.allowed_networks, resolver)
        self._local = threading.local()
        self._connections: list[Connections] = []
        self._ssl_context = ssl.create_default_context()  # shared: building one costs ~30 ms of CPU
        if config.ca_bundle:
            self._ssl_context.load_verify_locations(cafile=config.ca_bundle)
        self.proxies = getproxies_environment()  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as the search client reads them
        for scheme in ("http", "https"):
            if self.proxies.get(scheme):
                parse_proxy(self.proxies[scheme])  # a proxy it cannot use is one error here, not one per URL
        self._lock = threading.Lock()
        self._stop = stop if stop is not None else threading.Event()
        self.limiters = HostLimiters(config.max_connections_per_host, config.requests_per_second_per_host, self._stop)
        self.robots = RobotsRules(config.user_agent.split("/")[0].split()[0], self._request, config.max_redirects)
        self.seen = DedupIndex(config.phash_distance)
        self._guard_settings = guard_settings(config)
        self._redact = redactor()  # the secrets known now; renewed by run()
        self._throttled_elsewhere: Counter = Counter()  # host -> seconds held back in the download processes
        self._commit_lock = threading.Lock()  # an image file and its record are written together
        self._store: RecordStore | None = None  # open during a run (in the process that writes)
        self._writing = False
        self.reuse_dir = reuse_dir
        self._reuse: RecordStore | None = None  # reuse_dir's records, opened on first use
        self._processes: DownloadProcesses | None = None  # started by the first chunk that needs them, for the run

    # ---- resumption -------------------------------------------------------------------------------------------
    def _resume(self, store: RecordStore, retry_failed: bool = False) -> None:
        """Prepare a run on the records already in ``store``: take out those fetched again, index the stored images.

        With ``retry_failed``, the records of retryable failures (:func:`is_retryable`) and of refused addresses are
        deleted, so their URLs are fetched again; refused addresses also whenever the guard's settings changed since
        (:func:`is_refetched`). Image files without a record (left by ``kill -9`` before their batch was committed)
        are removed. Records are read in chunks: memory holds the dedup index's hashes, not the records.
        """
        guard = guard_settings(self.config)
        asked = [*RETRYABLE_OUTCOMES, "http_error", *SETTING_OUTCOMES] if retry_failed else list(SETTING_OUTCOMES)
        refetch = [
            record["key"] for chunk in store.chunks(outcome=asked) for record in chunk
            if is_refetched(record, retry_failed, guard)
        ]  # fmt: skip
        store.delete(refetch)
        if retry_failed:
            logger.info("retry_failed: %d failed URL(s) will be fetched again", len(refetch))
        elif refetch:
            logger.info("%d URL(s) the address guard refused under other settings will be checked again", len(refetch))
        for chunk in store.chunks(outcome="ok"):
            for record in chunk:
                self.seen.add_stored(record)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Remove the image files that have no record (left by ``kill -9`` before their batch was committed).

        A stored image is ``images/<sha256[:2]>/<sha256>.jpg`` and :meth:`_resume` has just put the SHA-256 of every
        stored image in the dedup index, so a file is kept when its name is a stored SHA-256 at its place: no lookup
        per file (an index on the paths, random as the hashes, cost more than the rest of a commit at a million).
        """
        root = os.path.join(self.output_dir, "images")
        if not os.path.isdir(root):
            return
        removed = 0
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.relpath(os.path.join(folder, name), self.output_dir)
                sha = name.removesuffix(".jpg")
                if not (self.seen.stored(sha) and path == image_path(sha)):
                    os.remove(os.path.join(self.output_dir, path))
                    removed += 1
        if removed:
            logger.info("removed %d image file(s) without a record (left by an interrupted run)", removed)

    def url_result(self, url: str) -> dict | None:
        """The first record of ``url`` in this run's store (any class), or None: not fetched yet, a local pool's row,
        or a download process (which has no store)."""
        store = self._store
        if store is None or url.startswith("pool://"):
            return None
        return store.first(source_url=url)

    # ---- HTTP -------------------------------------------------------------------------------------------------
    @property
    def _http(self) -> Connections:
        """This thread's keep-alive connections (http.client: a request costs a fifth of httpx's CPU)."""
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = Connections(
                self.guard, self.config, self._ssl_context, proxies=self.proxies
            )
            with self._lock:
                self._connections.append(connections)
        return connections

    @contextmanager
    def _request(self, url: str) -> Iterator[Response]:
        """GET ``url`` in one of its host's slots (:class:`HostLimiters`) on this thread's connections."""
        with self.limiters.slot(urlsplit(url).netloc), self._http.get(url) as response:
            yield response

    def fetch(self, url: str) -> dict:
        """Fetch one URL with the guard, robots, retries and size limits; returns outcome, detail, data, status, final_url.

        Every failure is an outcome (see the package docstring); only an interruption (Ctrl-C) raises.
        """
        cfg = self.config
        seen = set()
        for _ in range(cfg.max_redirects + 1):
            problem = url_problem(url)
            if problem:
                return {"outcome": "bad_url", "detail": problem, "final_url": url}
            parts = urlsplit(url)
            if url in seen:
                return {"outcome": "http_error", "detail": "redirect loop", "final_url": url}
            seen.add(url)
            try:
                self.guard.check_literal(parts.hostname)
                if cfg.respect_robots_txt and not self.robots.allows(url):
                    return {"outcome": "opted_out", "detail": "robots.txt", "final_url": url}
                result = self._get(url)
            except BlockedAddress as e:
                return {
                    "outcome": "blocked_address",
                    "detail": str(e),
                    "final_url": url,
                    "guard": self._guard_settings,
                }
            except DnsError as e:
                return {"outcome": "dns_error", "detail": str(e), "final_url": url}
            except RobotsUnreachable as e:
                return {"outcome": "robots_unreachable", "detail": str(e), "final_url": url}
            except HttpTimeout as e:
                return {"outcome": "timeout", "detail": str(e), "final_url": url}
            except HttpError as e:
                return {"outcome": "network_error", "detail": str(e)[:200], "final_url": url}
            if "location" not in result:
                return {**result, "final_url": url}
            try:
                url = urljoin(url, result["location"])
            except ValueError as e:
                return {"outcome": "bad_url", "detail": f"redirect to a malformed URL: {e}"[:200], "final_url": url}
        return {"outcome": "http_error", "detail": f"more than {cfg.max_redirects} redirects", "final_url": url}

    def _get(self, url: str) -> dict:
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            try:
                with self._request(url) as response:
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
            except HttpTimeout:
                raise
            except HttpError as e:
                result = {"outcome": "network_error", "detail": str(e)[:200]}
            if attempt < cfg.max_retries:
                wait = cfg.backoff_base * 2**attempt * (1 + random.random() / 4)
                if retry_after and retry_after.strip().isdigit():
                    wait = float(retry_after)
                if self._stop.wait(min(wait, cfg.backoff_max)):
                    raise Stopped()
        return result

    def _read_body(self, response: Response) -> dict:
        cfg = self.config
        status = response.status_code
        if cfg.respect_x_robots_tag and (reason := opted_out(response.headers, cfg.opt_out_directives)):
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
                raise Stopped()
            size += len(chunk)
            if size > cfg.max_bytes:
                return {"outcome": "too_large", "detail": f"body over {cfg.max_bytes} bytes", "status": status}
            if time.monotonic() > deadline:
                return {"outcome": "timeout", "detail": f"body took over {cfg.total_timeout}s", "status": status}
            chunks.append(chunk)
        return {"outcome": "ok", "data": b"".join(chunks), "status": status, "content_type": content_type}

    # ---- one candidate ----------------------------------------------------------------------------------------
    def source_url(self, candidate: Candidate) -> str:
        """The URL a record names: redacted (no credential reaches a file), a local pool's row as it is."""
        return candidate.image_url if candidate.image_bytes is not None else self._redact(candidate.image_url)

    def _prepare(self, candidate: Candidate) -> tuple[dict, bytes | None] | None:
        """The candidate's record and the bytes to store (for an ``ok``), or None when interrupted."""
        local = candidate.image_bytes is not None
        url = self.source_url(candidate)
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
        except Stopped:
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
        elif (previous := self.url_result(record["source_url"])) is not None:  # found by another query
            result = {"outcome": "duplicate" if previous["outcome"] == "ok" else previous["outcome"]}
            result["detail"] = f"same URL as {previous['key']}"
            result.update({k: previous[k] for k in ("status", "guard") if k in previous})
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
        first = self.seen.claim(record["key"], record["sha256"], record["phash"])
        if first is not None:
            record.update(outcome="duplicate", detail=f"same image as {first}")
            return None
        record["path"] = image_path(record["sha256"])
        return data

    def _reused(self, key: str) -> dict | None:
        """The stored image of ``key`` in ``reuse_dir`` as a fetch result (its record's fields), or None."""
        if self._reuse is None and self.reuse_dir and has_downloads(self.reuse_dir):
            with self._lock:
                self._reuse = self._reuse or open_downloads(self.reuse_dir)
        previous = self._reuse.get(key) if self._reuse is not None else None
        ok = previous is not None and previous.get("outcome") == "ok" and previous.get("path")
        path = os.path.join(self.reuse_dir, previous["path"]) if ok else None
        if path is None or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            data = f.read()
        fields = ("final_url", "status", "content_type", "sha256", "phash")
        return {"outcome": "ok", "data": data, **{k: previous[k] for k in fields if k in previous}, "reused": True}

    def _commit(self, prepared: tuple[dict, bytes | None] | None) -> None:
        """Deduplicate a candidate, then write its image file and its record together; dropped once the run has
        stopped."""
        if prepared is None:
            return
        record, data = prepared
        with self._commit_lock:
            if not self._writing:
                return
            data = self._dedup(record, data)
            if data is not None:
                atomic_write(os.path.join(self.output_dir, record["path"]), data)
            self._store.put(record)

    # ---- a run --------------------------------------------------------------------------------------------------
    def run(
        self,
        candidates: Iterable[Candidate],
        desc: str = "download",
        retry_failed: bool = False,
        chunk_size: int = 20_000,
    ) -> dict[str, int]:
        """Process every candidate that has no record yet; returns counts per outcome over the whole store.

        Candidates are read ``chunk_size`` at a time (a generator is never materialised), those already recorded
        are skipped, and each chunk is downloaded before the next is read, so memory follows the chunk, not the run.
        Ctrl-C (KeyboardInterrupt) stops it within about ``stop_grace`` seconds: what finished is recorded, the
        rest is not, and the KeyboardInterrupt is raised again for the caller.

        Example:
            >>> Downloader("out").run(candidates)  # doctest: +SKIP
            {'ok': 812, 'http_error': 40, 'duplicate': 25, ..., 'retryable': 31, 'total': 900}

        Args:
            candidates: :class:`Candidate` objects (their ``aux_name`` + URL is the resumption key), any iterable.
            desc: progress-bar label.
            retry_failed: fetch again the URLs whose record is a retryable failure (:func:`is_retryable`).
            chunk_size: candidates read and downloaded at a time.
        """
        self._redact = redactor()  # secrets registered since construction (a search backend's key) are known now
        store = self._store = open_downloads(self.output_dir)
        try:
            self._download(store, candidates, desc, retry_failed, chunk_size)
            return self.summary()
        finally:
            self._store = None  # a late worker of an interrupted run finds no store (and writes nothing)
            store.close()

    def _download(self, store: RecordStore, candidates, desc: str, retry_failed: bool, chunk_size: int) -> None:
        """The body of :meth:`run` on its open store."""
        try:
            self._resume(store, retry_failed)
            logger.info("%s: %d record(s) already in %s", desc, store.count(), self.manifest_path)
            self._stop.clear()
            self._writing = True
            total = len(candidates) if hasattr(candidates, "__len__") else None
            done = 0
            with tqdm(total=total, desc=desc, unit="img") as bar:
                for todo, skipped in self._todo_chunks(candidates, store, chunk_size):
                    bar.update(skipped)
                    done += len(todo)
                    self._run_chunk(todo, bar)
            self._end_processes()
            logger.info("%s: %d candidate(s) downloaded or settled in this run", desc, done)
        except KeyboardInterrupt:
            logger.warning("%s: interrupted; what finished is recorded, rerun to resume", desc)
            raise
        finally:
            self._end_processes(abort=True)  # a no-op after a run that finished
            self._stop.set()
            with self._commit_lock:  # from here on, a late worker writes nothing (no file without its record)
                self._writing = False
                store.flush()

    def _todo_chunks(self, candidates: Iterable[Candidate], store: RecordStore, size: int):
        """``(candidates without a record, how many were skipped)`` per ``size`` candidates read; a chunk is read
        after the previous one was recorded, so a key repeated in a later chunk is found in the store."""
        chunk: dict[str, Candidate] = {}
        read = 0
        for candidate in candidates:
            chunk.setdefault(f"{candidate.aux_name}\t{self.source_url(candidate)}", candidate)
            read += 1
            if read >= size:
                yield self._not_recorded(chunk, store, read)
                chunk, read = {}, 0
        if read:
            yield self._not_recorded(chunk, store, read)

    @staticmethod
    def _not_recorded(chunk: dict[str, Candidate], store: RecordStore, read: int) -> tuple[list[Candidate], int]:
        recorded = store.present(chunk)
        todo = [candidate for key, candidate in chunk.items() if key not in recorded]
        return todo, read - len(todo)

    def _run_chunk(self, todo: list[Candidate], bar) -> None:
        """Download ``todo``: in this thread, on threads, or in download processes."""
        if not todo:
            return
        if self.config.num_workers <= 1 or all(c.image_bytes is not None for c in todo):
            for candidate in todo:
                if self._stop.is_set():
                    return
                self._commit(self._prepare(candidate))
                bar.update()
        elif self._processes is not None and not any(c.image_bytes is not None for c in todo):
            self._processes.run(todo, bar)  # the run's processes, started by an earlier chunk
        elif (processes := process_count(self.config, self.guard, todo)) > 1:
            self._processes = DownloadProcesses(self, processes)
            self._processes.run(todo, bar)
        else:
            self._run_threads(todo, bar)

    def _end_processes(self, abort: bool = False) -> None:
        """End the run's download processes, if it started any (:meth:`DownloadProcesses.close`)."""
        processes, self._processes = self._processes, None
        if processes is not None:
            processes.close(abort)

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

    def summary(self) -> dict[str, int]:
        """Counts per outcome over the whole store (one per key), the number of retryable failures and the seconds
        the per-host rate limit held requests back; also written to ``download_summary.json``."""
        store = self._store or open_downloads(self.output_dir)
        try:
            counts = store.count_by("outcome")
            summary = {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}
            summary["retryable"] = sum(counts.get(outcome, 0) for outcome in RETRYABLE_OUTCOMES) + sum(
                is_retryable(r) for chunk in store.chunks(outcome="http_error") for r in chunk
            )
            summary["total"] = store.count()
        finally:
            if store is not self._store:
                store.close()
        waited = Counter(self.limiters.waited())
        with self._lock:
            waited.update(self._throttled_elsewhere)
        throttled = {host: seconds for host, seconds in waited.items() if seconds >= 1}
        summary["throttled_seconds"] = round(sum(throttled.values()), 1)
        atomic_write(os.path.join(self.output_dir, "download_summary.json"), json.dumps(summary, indent=2).encode())
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
        """Close every thread's idle keep-alive connections (and ``reuse_dir``'s records)."""
        with self._lock:
            connections, self._connections = self._connections, []
            reuse, self._reuse = self._reuse, None
        for pool in connections:
            pool.close()
        if reuse is not None:
            reuse.close()
