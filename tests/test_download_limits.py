"""Per-host limits: the polite default rate holds over a whole run (and its download processes) and is reported."""

import threading
import time

import pytest
from retrieval_fixtures.downloads import loopback_config
from retrieval_fixtures.server import resolve_without_dns

from neighbor_lt.retrieval import Candidate, DownloadConfig, Downloader


@pytest.mark.parametrize("processes", [1, 2])
def test_default_rate_limit_is_polite_and_reported(server, tmp_path, caplog, processes):
    """The default 4 requests/s per host holds for the whole run (shared out between download processes), and the
    summary says how long it held requests back."""
    assert DownloadConfig().requests_per_second_per_host == 4.0
    config = loopback_config(requests_per_second_per_host=4.0, num_processes=processes)
    candidates = [Candidate("goldfish", server.url(f"/img/{i}.jpg"), rank=i) for i in range(23, 33)]
    started = time.monotonic()
    with caplog.at_level("INFO", logger="neighbor_lt.retrieval.download"):
        summary = Downloader(str(tmp_path), config, resolver=resolve_without_dns).run(candidates)
    took = time.monotonic() - started
    assert summary["ok"] == 10
    # 10 images (+ robots.txt per process) at 4/s, the first of each process free: at least 2 s
    assert took >= 2.0, f"{took:.2f} s: the per-host limit did not hold"
    assert summary["throttled_seconds"] >= 1
    assert "per-host rate limit (requests_per_second_per_host=4.0) held requests back" in caplog.text


def test_host_limiter_caps_requests_in_flight_per_host():
    from neighbor_lt.retrieval.download.limits import HostLimiters

    limiters = HostLimiters(max_connections=2, rate=0, stop=threading.Event())
    inside, most, lock, release = {"a": 0, "b": 0}, {"a": 0, "b": 0}, threading.Lock(), threading.Event()

    def request(host):
        with limiters.slot(host):
            with lock:
                inside[host] += 1
                most[host] = max(most[host], inside[host])
            release.wait(5)
            with lock:
                inside[host] -= 1

    threads = [threading.Thread(target=request, args=(host,)) for host in "aaaaabbb"]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30  # generous: only waits until both hosts have their two requests in flight
    while time.monotonic() < deadline and (inside["a"] < 2 or inside["b"] < 2):
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join()
    assert most == {"a": 2, "b": 2}  # two at once per host, hosts independent of each other


def test_host_limiter_spaces_requests_and_a_stop_wakes_a_waiting_one():
    from neighbor_lt.retrieval.download.limits import HostLimiters, Stopped

    stop = threading.Event()
    limiters = HostLimiters(max_connections=4, rate=2.0, stop=stop)
    for _ in range(3):
        with limiters.slot("a"):
            pass
    assert limiters.waited()["a"] >= 0.9  # the 2nd and 3rd waited 0.5 s each (less the time the loop took)
    assert "b" not in limiters.waited()
    stop.set()
    with pytest.raises(Stopped), limiters.slot("a"):
        pass
