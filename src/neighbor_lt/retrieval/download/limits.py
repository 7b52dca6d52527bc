"""Politeness: at most ``max_connections`` requests in flight and ``rate`` requests per second to one host."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class Stopped(Exception):
    """The run was interrupted (Ctrl-C) while this URL was in flight: nothing is recorded for it."""


class HostLimiter:
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
        """Hold one of the host's connections for a request, after waiting for its turn; raises Stopped when the
        run is interrupted during the wait."""
        with self.semaphore:
            if self.interval:
                with self.lock:
                    now = time.monotonic()
                    wait = max(0.0, self.next_time - now)
                    self.next_time = max(now, self.next_time) + self.interval
                    self.waited += wait
                if wait and self.stop.wait(wait):
                    raise Stopped()
            yield


class HostLimiters:
    """One :class:`HostLimiter` per host, made on first use, all woken by ``stop``.

    Example:
        >>> limiters = HostLimiters(max_connections=4, rate=4.0, stop=threading.Event())
        >>> with limiters.slot("example.org"):
        ...     pass
        >>> limiters.waited()
        {'example.org': 0.0}
    """

    def __init__(self, max_connections: int, rate: float, stop: threading.Event):
        self.max_connections, self.rate, self.stop = max_connections, rate, stop
        self._lock = threading.Lock()
        self._by_host: dict[str, HostLimiter] = {}

    def slot(self, host: str):
        """:meth:`HostLimiter.slot` of ``host``."""
        with self._lock:
            if host not in self._by_host:
                self._by_host[host] = HostLimiter(self.max_connections, self.rate, self.stop)
            limiter = self._by_host[host]
        return limiter.slot()

    def waited(self) -> dict[str, float]:
        """Seconds the rate limit held requests back, per host."""
        with self._lock:
            return {host: limiter.waited for host, limiter in self._by_host.items()}
