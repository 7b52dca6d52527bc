"""Download processes: each URL fetched once over all of them, every outcome recorded, secrets redacted there too."""

import socket

from retrieval_fixtures.downloads import loopback_config
from retrieval_fixtures.server import resolve_without_dns

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
