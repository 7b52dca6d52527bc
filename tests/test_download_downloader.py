"""The downloader's loop against a real HTTP server on 127.0.0.1: every outcome, kill and resume, retrying failed URLs,
Ctrl-C."""

import json
import os
import signal
import subprocess
import time

import pytest
from retrieval_fixtures.downloads import download_command, loopback_config, outcomes, recorded, run_to_end
from retrieval_fixtures.server import ImageServer

from neighbor_lt.retrieval import Candidate, Downloader
from neighbor_lt.retrieval.download import read_downloads


@pytest.mark.parametrize("processes", [1, 2])
def test_every_outcome(server, tmp_path, only_loopback, processes):
    urls = {
        "img/0.jpg": "ok",
        "img/1.jpg": "ok",
        "img/3.jpg": "ok",
        "redirect/5.jpg": "ok",
        "flaky/a": "ok",
        "corrupt.jpg": "not_image",
        "truncated.jpg": "not_image",
        "page.html": "not_image",
        "status/404": "http_error",
        "status/500": "http_error",
        "loop/a": "http_error",
        "to-private/0": "blocked_address",
        "to-private/1": "blocked_address",
        "to-private/2": "blocked_address",
        "big.jpg": "too_large",
        "big-stream.jpg": "too_large",
        "bomb.png": "too_large",
        "tiny.png": "too_small",
        "noai.jpg": "opted_out",
        "private/7.jpg": "opted_out",
        "slow/8.jpg": "timeout",
    }
    candidates = [Candidate("goldfish", server.url("/" + path), rank=i) for i, path in enumerate(urls)]
    candidates.append(Candidate("goldfish", f"http://localhost:{server.port}/img/9.jpg"))  # resolved, then allowed
    candidates.append(Candidate("goldfish", "ftp://127.0.0.1/x.jpg"))
    config = loopback_config(num_processes=processes)
    start = server.requests.copy()  # the server is shared by the parametrized runs
    downloader = Downloader(str(tmp_path), config)
    summary = downloader.run(candidates)
    records = read_downloads(tmp_path)
    got = outcomes(records)
    for path, expected in urls.items():
        assert got[path] == expected, (path, [r for r in records if r["source_url"].endswith(path)])
    by_url = {r["source_url"]: r for r in records}
    assert by_url[server.url("/slow/8.jpg")]["detail"] == "ReadTimeout"
    assert by_url[f"http://localhost:{server.port}/img/9.jpg"]["outcome"] == "ok"
    assert by_url["ftp://127.0.0.1/x.jpg"]["outcome"] == "bad_url"
    assert summary["ok"] == 6 and summary["total"] == len(candidates)
    assert server.requests["/status/500"] - start["/status/500"] == 3  # retried twice
    assert server.requests["/private/7.jpg"] == 0  # robots.txt checked before fetching
    if processes == 1:  # the download processes connect outside this test's monkeypatch
        assert set(only_loopback) == {"127.0.0.1"}
    # stored images: resized JPEGs named by the SHA-256 of the downloaded bytes
    ok = [r for r in records if r["outcome"] == "ok"]
    for record in ok:
        assert os.path.exists(tmp_path / record["path"]) and record["path"].endswith(record["sha256"] + ".jpg")
    assert json.loads((tmp_path / "download_summary.json").read_text())["too_large"] == 3

    # second run: duplicates by bytes, by perceptual hash and by URL; nothing already done is fetched again
    before = server.requests.copy()
    more = [
        Candidate("goldfish", server.url("/dup/0.jpg")),
        Candidate("goldfish", server.url("/reenc/3.jpg")),
        Candidate("koi", server.url("/img/1.jpg")),
    ]
    summary = Downloader(str(tmp_path), config).run(candidates + more)
    records = read_downloads(tmp_path)
    assert len(records) == len(candidates) + 3 and summary["ok"] == 6
    assert [r["outcome"] for r in records[-3:]] == ["duplicate"] * 3
    assert (
        server.requests["/img/0.jpg"] == before["/img/0.jpg"] and server.requests["/img/1.jpg"] == before["/img/1.jpg"]
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_midway_then_resume(jpegs, tmp_path, processes):
    server = ImageServer(jpegs, delay=0.15).start()
    try:
        candidates = [Candidate("fish", server.url(f"/delay/{i}.jpg"), rank=i) for i in range(40)]
        candidates += [Candidate("fish", server.url(f"/dup/{i}.jpg"), rank=40 + i) for i in range(8)]
        command, env, out = download_command(tmp_path, candidates, processes)
        process = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if recorded(out) >= 8:
                break
            time.sleep(0.02)
        process.kill()
        process.wait()
        first = read_downloads(out)
        assert 8 <= len(first) < len(candidates), "the run should have been killed midway"

        run_to_end(command, env)
        records = read_downloads(out)
        keys = [r["key"] for r in records]
        assert len(keys) == len(set(keys)) == len(candidates)  # nothing lost, nothing twice
        ok = [r for r in records if r["outcome"] == "ok"]
        assert len(ok) == 40 and len({r["sha256"] for r in ok}) == 40
        assert sum(r["outcome"] == "duplicate" for r in records) == 8
        stored = [p for p in (out / "images").rglob("*") if p.is_file()]
        assert sorted(p.name for p in stored) == sorted(r["sha256"] + ".jpg" for r in ok)
        assert records[: len(first)] == first  # earlier lines untouched
    finally:
        server.stop()


def test_retry_failed_fetches_only_retryable_failures(jpegs, tmp_path, only_loopback):
    main, no_robots = ImageServer(jpegs).start(), ImageServer(jpegs).start()
    try:
        main.outage, no_robots.robots_status = True, 503
        urls = {
            main.url("/img/0.jpg"): ("ok", "ok"),
            main.url("/status/404"): ("http_error", "http_error"),  # not retryable: stays as it is
            main.url("/outage/1.jpg"): ("http_error", "ok"),  # 503 after the retries
            main.url("/slow/2.jpg"): ("timeout", "timeout"),  # retried, still too slow
            main.url("/corrupt.jpg"): ("not_image", "not_image"),
            no_robots.url("/img/3.jpg"): ("robots_unreachable", "ok"),  # RFC 9309: 5xx robots.txt = disallow all
        }
        candidates = [Candidate("goldfish", url, rank=i) for i, url in enumerate(urls)]
        config = loopback_config(max_retries=1)
        first = Downloader(str(tmp_path), config).run(candidates)
        got = {r["source_url"]: r["outcome"] for r in read_downloads(tmp_path)}
        assert got == {url: outcome for url, (outcome, _) in urls.items()}
        assert first["retryable"] == 3 and no_robots.requests["/img/3.jpg"] == 0

        main.outage, no_robots.robots_status = False, 200
        before_main, before_other = main.requests.copy(), no_robots.requests.copy()
        assert Downloader(str(tmp_path), config).run(candidates) == first  # a plain rerun retries nothing
        assert main.requests == before_main and no_robots.requests == before_other

        second = Downloader(str(tmp_path), config).run(candidates, retry_failed=True)
        records = read_downloads(tmp_path)
        assert len(records) == len(urls)  # one line per URL, the retried ones replaced
        assert {r["source_url"]: r["outcome"] for r in records} == {url: new for url, (_, new) in urls.items()}
        assert second["ok"] == 3 and second["retryable"] == 1 and second["total"] == len(urls)
        fetched = main.requests - before_main
        assert set(fetched) - {"/robots.txt"} == {"/outage/1.jpg", "/slow/2.jpg"}  # nothing else asked again
        assert no_robots.requests["/img/3.jpg"] == 1
        stored = sorted(p.name for p in (tmp_path / "images").rglob("*.jpg"))
        assert stored == sorted(r["sha256"] + ".jpg" for r in records if r["outcome"] == "ok")
    finally:
        main.stop()
        no_robots.stop()


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_drops_queued_urls_and_loses_nothing(jpegs, tmp_path, processes):
    """No wall-clock bound (a loaded machine may take long to get there): after SIGINT the queued URLs are never
    requested (only downloads already being picked up may be), the slow download in flight is abandoned without a
    record, and a rerun completes with nothing lost and nothing twice."""
    server = ImageServer(jpegs, delay=0.3).start()
    try:
        # URL 3 (and every 8th after it) takes 3 s: at the interrupt a download is certainly in flight
        paths = [f"/slow/{i}.jpg" if i % 8 == 3 else f"/delay/{i}.jpg" for i in range(40)]
        candidates = [Candidate("fish", server.url(p), rank=i) for i, p in enumerate(paths)]
        command, env, out = download_command(tmp_path, candidates, processes)
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if recorded(out) >= 4:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before the interrupt"
        time.sleep(0.1)  # slow downloads are in flight now
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)  # a generous bound on the wait, not a timing assertion
        assert process.returncode == 130, stderr[-2000:]
        assert "interrupted" in stderr
        after = [path for when, path in list(server.log) if when > interrupted and path != "/robots.txt"]
        first = read_downloads(out)
        left = len(candidates) - len(first)
        # 4 workers may each have been taking the next URL as the signal came (twice that for a slow hand-over);
        # without the stop every one of the ~30 URLs left would be requested
        assert len(after) <= 8 < left, after
        assert 4 <= len(first) < len(candidates)
        # every stored file has its line and every ok line its file
        stored = sorted(p.name for p in (out / "images").rglob("*") if p.is_file())
        assert stored == sorted(r["sha256"] + ".jpg" for r in first if r["outcome"] == "ok")
        assert all(r["outcome"] == "ok" for r in first) and not any("/slow/3.jpg" in r["key"] for r in first)

        run_to_end(command, env)
        records = read_downloads(out)
        keys = [r["key"] for r in records]
        assert len(keys) == len(set(keys)) == len(candidates)  # nothing lost, nothing twice
        assert records[: len(first)] == first
        ok = [r for r in records if r["outcome"] == "ok"]
        assert len(ok) == 40 and len({r["sha256"] for r in ok}) == 40
    finally:
        server.stop()


def test_a_url_refused_by_a_setting_is_fetched_once_the_setting_allows_it(server, tmp_path, caplog):
    """``blocked_address`` names the setting; a rerun under the same settings fetches nothing, ``retry_failed``
    checks the refused URLs again, and a rerun with ``allowed_networks`` changed fetches them."""
    urls = [server.url(f"/img/{i}.jpg") for i in (26, 27)] + [server.url("/to-private/2")]
    candidates = [Candidate("goldfish", url, rank=i) for i, url in enumerate(urls)]
    before = server.requests.copy()
    strict = loopback_config(allowed_networks=[])
    first = Downloader(str(tmp_path), strict).run(candidates)
    records = read_downloads(tmp_path)
    assert first["blocked_address"] == 3 and first["retryable"] == 0 and server.requests == before
    assert all("retrieve.download.allowed_networks" in r["detail"] for r in records)

    assert Downloader(str(tmp_path), strict).run(candidates) == first  # the same settings: nothing asked again
    assert Downloader(str(tmp_path), strict).run(candidates, retry_failed=True) == first  # checked again, refused
    assert len(read_downloads(tmp_path)) == len(urls) and server.requests == before

    with caplog.at_level("INFO", logger="neighbor_lt.retrieval.download"):
        allowed = Downloader(str(tmp_path), loopback_config()).run(candidates)  # 127.0.0.1/32 allowed now
    assert "3 URL(s) the address guard refused under other settings will be checked again" in caplog.text
    records = {r["source_url"]: r for r in read_downloads(tmp_path)}
    assert len(records) == len(urls) and allowed["ok"] == 2 and allowed["blocked_address"] == 1
    assert records[urls[2]]["detail"].startswith("address 169.254.169.254 is not public")  # still refused: private
    assert all(server.requests[f"/img/{i}.jpg"] - before[f"/img/{i}.jpg"] == 1 for i in (26, 27))


def test_retrieve_stage_names_the_setting_and_a_rerun_with_it_fetches(server, tmp_path):
    """A user's local image server, refused by default: the stage's one line names
    retrieve.download.allowed_networks; a rerun with it set fetches the URLs, no --retry_failed needed."""
    import pandas as pd

    from neighbor_lt.curate import CurateContext, StageError
    from neighbor_lt.neighbors.manifest import default_manifest_path, save_manifest
    from neighbor_lt.retrieval.stages import run_retrieve

    manifest = {"version": 1, "backend": "static", "targets": [{"index": 0, "name": "tench"}],
                "auxiliary": [{"name": "goldfish", "neighbor_of": ["tench"]}]}  # fmt: skip
    save_manifest(manifest, default_manifest_path(str(tmp_path)))
    urls = tmp_path / "urls.csv"
    pd.DataFrame({"name": ["goldfish"] * 3, "url": [server.url(f"/img/{i}.jpg") for i in (28, 29, 30)]}).to_csv(
        urls, index=False
    )
    section = {"backend": "urls", "backend_kwargs": {"path": str(urls)}, "download": {"num_workers": 2}}
    before = server.requests.copy()
    with pytest.raises(StageError, match=r"3 URL\(s\) point at private.*retrieve\.download\.allowed_networks"):
        run_retrieve(section, CurateContext(str(tmp_path)))
    assert server.requests == before
    section["download"] = {"num_workers": 2, "allowed_networks": ["127.0.0.1/32"], "requests_per_second_per_host": 0}
    assert run_retrieve(section, CurateContext(str(tmp_path)))["ok"] == 3


def test_candidates_stream_in_chunks_and_a_key_repeated_in_a_later_chunk_is_settled_once(jpegs, tmp_path):
    server = ImageServer(jpegs).start()
    try:
        paths = [f"/img/{i}.jpg" for i in range(7)] + ["/img/2.jpg", "/dup/3.jpg", "/img/0.jpg"]

        def candidates():  # a generator: never a list in the downloader
            for rank, path in enumerate(paths):
                yield Candidate("fish", server.url(path), rank=rank)

        summary = Downloader(str(tmp_path), loopback_config()).run(candidates(), chunk_size=3)
        records = read_downloads(tmp_path)
        assert summary["total"] == len(records) == len({r["key"] for r in records}) == 8  # 7 URLs + the copy
        assert summary["ok"] == 7 and summary["duplicate"] == 1
        assert sum(n for p, n in server.requests.items() if p.startswith(("/img/", "/dup/"))) == 8  # each URL once
    finally:
        server.stop()


def test_a_rerun_removes_image_files_without_a_record_and_keeps_every_stored_one(jpegs, tmp_path):
    """Files a killed run wrote before their batch was committed go; a stored image's file stays, found by its SHA-256
    (the store has no index on the paths)."""
    server = ImageServer(jpegs).start()
    try:
        candidates = [Candidate("fish", server.url(f"/img/{i}.jpg"), rank=i) for i in range(4)]
        Downloader(str(tmp_path), loopback_config()).run(candidates)
        ok = [r for r in read_downloads(tmp_path) if r["outcome"] == "ok"]
        sha = ok[0]["sha256"]
        orphans = [
            tmp_path / "images" / "ab" / ("ab" + "0" * 62 + ".jpg"),  # an image whose record was never committed
            tmp_path / "images" / "cd" / f"{sha}.jpg",  # a stored image's name in the wrong folder
            tmp_path / "images" / sha[:2] / f"{sha}.jpg.tmp",  # a torn write
        ]
        for path in orphans:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xff")
        Downloader(str(tmp_path), loopback_config()).run(candidates)
        stored = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "images").rglob("*") if p.is_file())
        assert stored == sorted(r["path"] for r in ok) and len(ok) == 4
        assert all((tmp_path / r["path"]).read_bytes()[:3] == b"\xff\xd8\xff" for r in ok)
    finally:
        server.stop()
