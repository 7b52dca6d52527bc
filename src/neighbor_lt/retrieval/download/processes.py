"""Download processes: one Python process is CPU-bound at a few hundred images per second, so fetching, validating
and hashing run in ``num_processes`` spawned processes while the calling process alone deduplicates and writes (a
file and its record are still written together by one process)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager

from ...cores import usable_cores
from ...secrets import redact, register_secret, registered_secrets
from ..search import Candidate
from .client import AddressGuard
from .config import DownloadConfig

logger = logging.getLogger(__name__)


def process_count(config: DownloadConfig, guard: AddressGuard, todo: list[Candidate]) -> int:
    """How many download processes ``todo`` gets: ``num_processes``, or one per core (at most 4) for 200 URLs
    or more; never more than ``max_connections_per_host`` (each process holds at least one connection per host)."""
    wanted = config.num_processes
    if wanted <= 0:
        wanted = min(usable_cores(), 4) if len(todo) >= 200 else 1
    wanted = min(wanted, max(1, config.max_connections_per_host), config.num_workers)
    if any(c.image_bytes is not None for c in todo):
        return 1
    if wanted > 1 and guard.resolver is not socket.getaddrinfo:
        try:
            pickle.dumps(guard.resolver)
        except Exception:
            logger.info("the custom resolver cannot be sent to other processes: downloading in this one")
            return 1
    return wanted


def _share(config: DownloadConfig, processes: int) -> DownloadConfig:
    """One process's settings: its share of the threads and of the per-host limits."""
    return dataclasses.replace(
        config,
        num_workers=-(-config.num_workers // processes),
        max_connections_per_host=max(1, config.max_connections_per_host // processes),
        requests_per_second_per_host=config.requests_per_second_per_host / processes,
        num_processes=1,
    )


class DownloadProcesses:
    """``processes`` download processes kept for a whole run and fed chunk after chunk: fetch and validate there
    (threads in each, the per-host limits shared out), deduplicate and write in ``downloader``'s process (a
    :class:`~.downloader.Downloader`; each process builds one of the same class, so this module needs no import of
    it). Started once, not per chunk of candidates: a start costs about 0.5 CPU-s per process, and the processes keep
    their robots.txt rules and per-host limits from one chunk to the next.

    One fetch per URL: a candidate whose URL is already in flight waits for that record and is settled here.
    Ctrl-C: the processes stop, records arriving within ``stop_grace`` are kept, then they are ended.

    Example:
        >>> group = DownloadProcesses(downloader, 2)  # doctest: +SKIP
        >>> for todo in chunks:  # doctest: +SKIP
        ...     group.run(todo, bar)
        >>> group.close()  # doctest: +SKIP

    Args:
        downloader: the writing :class:`~.downloader.Downloader` (its store open).
        processes: how many (:func:`process_count`).
    """

    def __init__(self, downloader, processes: int):
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
        self.downloader = downloader
        self.jobs, self.results, self.stop = context.Queue(), context.Queue(), context.Event()
        self.jobs.cancel_join_thread()  # URLs still queued at an interruption are dropped, never waited for at exit
        resolver = None if downloader.guard.resolver is socket.getaddrinfo else downloader.guard.resolver
        args = (type(downloader), downloader.output_dir, _share(downloader.config, processes), resolver,
                downloader.reuse_dir, self.jobs, self.results, self.stop, registered_secrets())  # fmt: skip
        self.workers = [
            context.Process(target=_download_process, args=args, name=f"download-{i}", daemon=True)
            for i in range(processes)
        ]
        self._exited = 0
        with _no_main_rerun():
            for worker in self.workers:
                worker.start()

    def run(self, todo: list[Candidate], bar) -> None:
        """Fetch ``todo`` (one chunk) and settle every candidate of it before returning."""
        downloader = self.downloader
        waiting: dict[str, list[Candidate]] = {}  # redacted URL in flight -> later candidates with the same URL
        for candidate in todo:
            url = downloader.source_url(candidate)
            if downloader.url_result(url) is not None:  # a previous run fetched it: settled without a request
                downloader._commit(downloader._prepare(candidate))
                bar.update()
            elif url in waiting:
                waiting[url].append(candidate)
            else:
                waiting[url] = []
                self.jobs.put(candidate)

        def settle(prepared: tuple[dict, bytes | None]) -> None:
            downloader._commit(prepared)
            bar.update()
            url = prepared[0]["source_url"]
            if downloader.url_result(url) is not None:  # committed: its followers are settled without a request
                for follower in waiting.pop(url, ()):
                    downloader._commit(downloader._prepare(follower))
                    bar.update()

        leaders = len(waiting)
        try:
            while leaders:
                kind, payload = self._next()
                if kind == "record":
                    settle(payload)
                if kind in ("record", "stopped"):
                    leaders -= 1
        except KeyboardInterrupt:
            self.stop.set()  # queued URLs are dropped; downloads in flight get stop_grace seconds to arrive and be kept
            deadline = time.monotonic() + downloader.config.stop_grace
            while (left := deadline - time.monotonic()) > 0:
                try:
                    kind, payload = self.results.get(timeout=left)
                except queue.Empty:
                    break
                if kind == "record":
                    settle(payload)
            raise

    def _next(self) -> tuple[str, object]:
        """The next message of a process about a candidate; raises when one failed or died (the URLs it held are
        fetched by the rerun)."""
        while True:
            try:
                kind, payload = self.results.get(timeout=0.2)
            except queue.Empty:
                if any(not w.is_alive() for w in self.workers):
                    raise RuntimeError(
                        f"a download process died (exit codes {[w.exitcode for w in self.workers]}); the URLs it "
                        "held were not processed: rerun to resume, they are fetched then"
                    ) from None
                continue
            if kind == "error":
                raise RuntimeError(f"a download process failed: {payload}")
            if kind == "exit":  # a process leaves only after close() asked: not during a chunk
                self._exited += 1
                self._record_waits(payload)
                continue
            return kind, payload

    def _record_waits(self, waited: dict) -> None:
        with self.downloader._lock:
            self.downloader._throttled_elsewhere.update(waited)

    def close(self, abort: bool = False) -> None:
        """Let the processes finish (their per-host waits are added to the downloader's summary), end any left;
        ``abort``: stop them at once (the run failed or was interrupted: what is still queued is dropped)."""
        if abort:
            self.stop.set()
        try:
            if not self.stop.is_set():
                for _ in self.workers:
                    self.jobs.put(None)
                while self._exited < len(self.workers) and any(w.is_alive() for w in self.workers):
                    try:
                        kind, payload = self.results.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if kind == "exit":
                        self._exited += 1
                        self._record_waits(payload)
        finally:
            self.stop.set()
            for worker in self.workers:
                worker.join(timeout=0.5)
                if worker.is_alive():
                    worker.kill()
                    worker.join(timeout=1)


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


def _download_process(factory, output_dir, config, resolver, reuse_dir, jobs, results, stop, secrets) -> None:
    """A download process of :class:`DownloadProcesses`: fetch and validate the queued candidates on
    ``config.num_workers`` threads and send each ``(record, bytes)`` back; the parent deduplicates and writes.

    Sends ``("record", prepared)`` per candidate (``("stopped", None)`` for one interrupted), ``("exit", {host:
    seconds throttled})`` at the end (a ``None`` job) and ``("error", text)`` if it fails as a whole. Ctrl-C is the parent's to handle; if the parent dies, so does this.
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
        downloader = factory(output_dir, config, resolver=resolver, reuse_dir=reuse_dir, stop=stop)

        def work() -> None:
            while not stop.is_set():
                try:
                    candidate = jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                if candidate is None:
                    jobs.put(None)  # for this process's other threads
                    return
                prepared = downloader._prepare(candidate)  # None only once stopped
                results.put(("stopped", None) if prepared is None else ("record", prepared))

        threads = [threading.Thread(target=work, daemon=True) for _ in range(config.num_workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        downloader.close()
        results.put(("exit", downloader.limiters.waited()))
    except BaseException as e:  # noqa: BLE001  # reported to the parent, which raises it
        results.put(("error", redact(f"{type(e).__name__}: {e}")[:500]))
    results.close()
    results.join_thread()
