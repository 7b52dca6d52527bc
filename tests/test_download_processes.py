"""Download processes: each URL fetched once over all of them, every outcome recorded, secrets redacted there too."""

import multiprocessing
import os
import signal
import socket

import pytest
from retrieval_fixtures.downloads import loopback_config
from retrieval_fixtures.server import ImageServer, resolve_without_dns

from neighbor_lt.retrieval import Candidate, Downloader
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.secrets import register_secret


def test_download_processes_fetch_each_url_once_and_record_every_outcome(server, tmp_path):
    good = [server.url(f"/img/{i}.jpg") for i in range(10, 22)]
    bad = {
        "http://127.0.0.1:abc/x.jpg": "bad_url",
        "http://[::1/x.jpg": "bad_url",
        "http://dead-domain.invalid/x.jpg": "dns_error",
        server.url("/status/404"): "http_error",
        server.url("/corrupt.jpg"): "not_image",
    }
    candidates = [Candidate("goldfish", url, rank=i) for i, url in enumerate(good + list(bad))]
    candidates += [Candidate("koi", url) for url in good[:3]]  # the same URLs found for another class
    register_secret("process-canary-5150")  # a key known to this process only: the download processes redact it too
    candidates.append(Candidate("carp", server.url("/img/30.jpg?cb=process-canary-5150"), rank=99))
    before = server.requests.copy()
    config = loopback_config(num_processes=2)
    summary = Downloader(str(tmp_path), config, resolver=resolve_without_dns).run(candidates)
    assert all(b"process-canary-5150" not in p.read_bytes() for p in tmp_path.glob("downloads.sqlite*"))
    assert "process-canary-5150" not in repr(read_downloads(tmp_path))
    candidates.pop()
    records = [r for r in read_downloads(tmp_path) if r["aux_name"] != "carp"]
    assert len(records) == len({r["key"] for r in records}) == len(candidates)
    by_key = {r["key"]: r for r in records}
    assert all(by_key[f"goldfish\t{url}"]["outcome"] == "ok" for url in good)
    for url, outcome in bad.items():
        assert by_key[f"goldfish\t{url}"]["outcome"] == outcome, by_key[f"goldfish\t{url}"]
    for url in good[:3]:
        assert by_key[f"koi\t{url}"]["outcome"] == "duplicate" and "same URL" in by_key[f"koi\t{url}"]["detail"]
    for url in good:  # one request per URL, across both processes
        path = url.split(str(server.port), 1)[1]
        assert server.requests[path] - before[path] == 1, path
    assert summary["ok"] == len(good) + 1 and summary["duplicate"] == 3 and summary["total"] == len(candidates) + 1
    stored = sorted(p.name for p in (tmp_path / "images").rglob("*") if p.is_file())
    assert len(stored) == len(good) + 1
    assert set(stored) >= {by_key[f"goldfish\t{url}"]["sha256"] + ".jpg" for url in good}
    # a rerun resumes with nothing to fetch
    before = server.requests.copy()
    again = Downloader(str(tmp_path), config, resolver=resolve_without_dns).run(candidates)
    assert again == summary
    assert server.requests == before


def test_process_count(server):
    from neighbor_lt.retrieval.download import AddressGuard, DownloadConfig
    from neighbor_lt.retrieval.download.processes import process_count

    many = [Candidate("a", server.url(f"/img/{i}.jpg")) for i in range(300)]
    guard = AddressGuard()
    assert process_count(DownloadConfig(num_processes=3), guard, many) == 3
    assert process_count(DownloadConfig(num_processes=0), guard, many[:199]) == 1  # few URLs: this process
    assert process_count(DownloadConfig(num_processes=8, max_connections_per_host=2), guard, many) == 2
    assert process_count(DownloadConfig(num_processes=8, num_workers=3), guard, many) == 3
    pool_rows = [Candidate("a", "pool://x#1", image_bytes=b"...")]
    assert process_count(DownloadConfig(num_processes=4), guard, many + pool_rows) == 1  # bytes stay here
    unpicklable = AddressGuard(resolver=lambda *a, **k: socket.getaddrinfo(*a, **k))
    assert process_count(DownloadConfig(num_processes=4), unpicklable, many) == 1


def test_download_processes_start_once_and_serve_every_chunk(jpegs, tmp_path, monkeypatch):
    """Candidates stream in chunks; the run's download processes are started by the first chunk and fed the others,
    so each reads robots.txt once for the whole run, and none is left when the run ends."""
    from neighbor_lt.retrieval.download import processes

    started = []

    class Counted(processes.DownloadProcesses):
        def __init__(self, downloader, count):
            started.append(count)
            super().__init__(downloader, count)

    monkeypatch.setattr("neighbor_lt.retrieval.download.downloader.DownloadProcesses", Counted)
    server = ImageServer(jpegs).start()
    try:
        paths = [f"/img/{i}.jpg" for i in range(12)] + ["/img/2.jpg", "/dup/3.jpg", "/status/404", "/private/1.jpg"]

        def candidates():
            for rank, path in enumerate(paths):
                yield Candidate("fish", server.url(path), rank=rank)
            yield Candidate("carp", server.url("/img/11.jpg"))  # same URL, another class, in the last chunk

        config = loopback_config(num_processes=2)
        summary = Downloader(str(tmp_path), config, resolver=resolve_without_dns).run(candidates(), chunk_size=4)
        assert started == [2]
        assert not [p for p in multiprocessing.active_children() if p.name.startswith("download-")]
        records = read_downloads(tmp_path)
        assert summary["total"] == len(records) == len({r["key"] for r in records}) == 16
        assert summary["ok"] == 12 and summary["duplicate"] == 2  # the copy under /dup/ and carp's URL
        assert {r["outcome"] for r in records if "status" in r["source_url"] or "private" in r["source_url"]} == {
            "http_error", "opted_out"
        }  # fmt: skip
        fetched = {p: n for p, n in server.requests.items() if p.startswith(("/img/", "/dup/", "/status/"))}
        assert fetched == {**{f"/img/{i}.jpg": 1 for i in range(12)}, "/dup/3.jpg": 1, "/status/404": 1}
        assert 1 <= server.requests["/robots.txt"] <= 2  # once per process for the run, not per chunk
    finally:
        server.stop()


def test_download_processes_killed_between_chunks_stop_the_run_and_a_rerun_resumes(jpegs, tmp_path):
    """The run's processes outlive a chunk: if they die (OOM killer, kill -9) before the next one is served, the run
    stops with one error instead of waiting for them, keeps what was committed, and a rerun fetches only the rest."""
    server = ImageServer(jpegs).start()
    try:
        urls = [server.url(f"/img/{i}.jpg") for i in range(12)]

        def candidates(kill: bool):
            for rank, url in enumerate(urls):
                if kill and rank == 8:  # chunks of 4: two were served by the processes the first one started
                    victims = [p for p in multiprocessing.active_children() if p.name.startswith("download-")]
                    assert len(victims) == 2
                    for victim in victims:
                        os.kill(victim.pid, signal.SIGKILL)
                        victim.join()
                yield Candidate("fish", url, rank=rank)

        config = loopback_config(num_processes=2)
        with pytest.raises(RuntimeError, match=r"a download process died \(exit codes .*\).* rerun to resume"):
            Downloader(str(tmp_path), config, resolver=resolve_without_dns).run(candidates(True), chunk_size=4)
        assert sorted(r["rank"] for r in read_downloads(tmp_path)) == list(range(8))
        summary = Downloader(str(tmp_path), config, resolver=resolve_without_dns).run(candidates(False), chunk_size=4)
        assert summary["ok"] == summary["total"] == 12
        assert all(server.requests[f"/img/{i}.jpg"] == 1 for i in range(12))
    finally:
        server.stop()
