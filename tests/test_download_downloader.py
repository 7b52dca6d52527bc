"""The downloader's loop against a real HTTP server on 127.0.0.1: every outcome, kill and resume, retrying failed URLs,
Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from retrieval_fixtures.downloads import loopback_config, outcomes
from retrieval_fixtures.server import ImageServer

from neighbor_lt.retrieval import Candidate, Downloader
from neighbor_lt.retrieval.download import read_jsonl

FIXTURES = Path(__file__).parent / "retrieval_fixtures"


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
    records = read_jsonl(tmp_path / "downloads.jsonl")
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
    records = read_jsonl(tmp_path / "downloads.jsonl")
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
        spec = tmp_path / "candidates.json"
        spec.write_text(json.dumps([{"query": c.query, "image_url": c.image_url, "rank": c.rank} for c in candidates]))
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, str(FIXTURES / "run_download.py"), str(spec), str(out), f"processes={processes}"]
        process = subprocess.Popen(command, env=env)
        manifest = out / "downloads.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.exists() and manifest.read_text().count("\n") >= 8:
                break
            time.sleep(0.02)
        process.kill()
        process.wait()
        first = read_jsonl(manifest)
        assert 8 <= len(first) < len(candidates), "the run should have been killed midway"

        subprocess.run(command, env=env, check=True)
        records = read_jsonl(manifest)
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
        got = {r["source_url"]: r["outcome"] for r in read_jsonl(tmp_path / "downloads.jsonl")}
        assert got == {url: outcome for url, (outcome, _) in urls.items()}
        assert first["retryable"] == 3 and no_robots.requests["/img/3.jpg"] == 0

        main.outage, no_robots.robots_status = False, 200
        before_main, before_other = main.requests.copy(), no_robots.requests.copy()
        assert Downloader(str(tmp_path), config).run(candidates) == first  # a plain rerun retries nothing
        assert main.requests == before_main and no_robots.requests == before_other

        second = Downloader(str(tmp_path), config).run(candidates, retry_failed=True)
        records = read_jsonl(tmp_path / "downloads.jsonl")
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
def test_ctrl_c_stops_within_two_seconds_and_loses_nothing(jpegs, tmp_path, processes):
    server = ImageServer(jpegs, delay=0.3).start()
    try:
        # URL 3 (and every 8th after it) takes 3 s: at the interrupt a download is certainly in flight
        paths = [f"/slow/{i}.jpg" if i % 8 == 3 else f"/delay/{i}.jpg" for i in range(40)]
        candidates = [Candidate("fish", server.url(p), rank=i) for i, p in enumerate(paths)]
        spec = tmp_path / "candidates.json"
        spec.write_text(json.dumps([{"query": c.query, "image_url": c.image_url, "rank": c.rank} for c in candidates]))
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, str(FIXTURES / "run_download.py"), str(spec), str(out), f"processes={processes}"]
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        manifest = out / "downloads.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.exists() and manifest.read_text().count("\n") >= 4:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before the interrupt"
        time.sleep(0.1)  # slow downloads are in flight now
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - interrupted
        assert process.returncode == 130, stderr[-2000:]
        assert took < 2.0, f"Ctrl-C took {took:.2f} s"
        assert "interrupted" in stderr
        first = read_jsonl(manifest)
        assert 4 <= len(first) < len(candidates)
        # every stored file has its line and every ok line its file
        stored = sorted(p.name for p in (out / "images").rglob("*") if p.is_file())
        assert stored == sorted(r["sha256"] + ".jpg" for r in first if r["outcome"] == "ok")
        assert all(r["outcome"] == "ok" for r in first) and not any("/slow/3.jpg" in r["key"] for r in first)

        subprocess.run(command, env=env, check=True, capture_output=True)
        records = read_jsonl(manifest)
        keys = [r["key"] for r in records]
        assert len(keys) == len(set(keys)) == len(candidates)  # nothing lost, nothing twice
        assert records[: len(first)] == first
        ok = [r for r in records if r["outcome"] == "ok"]
        assert len(ok) == 40 and len({r["sha256"] for r in ok}) == 40
    finally:
        server.stop()
