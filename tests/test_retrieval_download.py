"""The downloader against a real HTTP server on 127.0.0.1: every outcome, the address guard, kill and resume."""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from retrieval_fixtures.server import ImageServer, load_jpegs, resolve_without_dns

from neighbor_lt.retrieval import AddressGuard, Candidate, DownloadConfig, Downloader
from neighbor_lt.retrieval.download import perceptual_hash, read_jsonl
from neighbor_lt.secrets import register_secret

FIXTURES = Path(__file__).parent / "retrieval_fixtures"


@pytest.fixture(scope="module")
def jpegs(tiny_imagenet_dir):
    return load_jpegs(tiny_imagenet_dir, 40)


@pytest.fixture(scope="module")
def server(jpegs):
    server = ImageServer(jpegs).start()
    yield server
    server.stop()


@pytest.fixture
def only_loopback(monkeypatch):
    """Fail the test if anything tries to open a TCP connection to an address other than 127.0.0.1."""
    real = socket.create_connection
    contacted = []

    def guarded(address, *args, **kwargs):
        contacted.append(address[0])
        assert address[0] == "127.0.0.1", f"connection attempted to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return contacted


def loopback_config(**overrides):
    values = dict(
        num_workers=4,
        allowed_networks=["127.0.0.1/32"],
        requests_per_second_per_host=0,
        read_timeout=0.5,
        max_retries=2,
        backoff_base=0.01,
        max_bytes=100_000,
        max_pixels=10_000_000,
        phash_distance=4,
    )
    values.update(overrides)
    return DownloadConfig(**values)


def outcomes(records):
    return {r["source_url"].split(":", 2)[-1].split("/", 1)[-1]: r["outcome"] for r in records}


def test_address_guard_rules():
    guard = AddressGuard()
    for address in ["10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "127.0.0.1", "224.0.0.1", "0.0.0.0"]:
        assert not guard.is_allowed(address), address
    for address in ["::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1"]:
        assert not guard.is_allowed(address), address
    assert guard.is_allowed("8.8.8.8") and guard.is_allowed("2606:4700::1111")
    loop_only = AddressGuard(allowed_networks=["127.0.0.1/32"])
    assert loop_only.is_allowed("127.0.0.1") and not loop_only.is_allowed("10.0.0.1")
    assert not loop_only.is_allowed("127.0.0.2")


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


def test_guard_is_on_by_default(server, tmp_path, only_loopback):
    candidates = [
        Candidate("goldfish", server.url("/img/0.jpg")),
        Candidate("goldfish", f"http://localhost:{server.port}/img/1.jpg"),
    ]
    before = server.requests.copy()
    Downloader(str(tmp_path), DownloadConfig(num_workers=2)).run(candidates)
    assert [r["outcome"] for r in read_jsonl(tmp_path / "downloads.jsonl")] == ["blocked_address"] * 2
    assert server.requests == before  # refused before connecting, robots.txt included
    assert only_loopback == []


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


def no_dns_resolver(calls):
    """A getaddrinfo that never queries DNS: ``*.invalid`` fails as a dead domain does, IP literals pass through."""

    def resolve(host, port, *args, **kwargs):
        calls.append(host)
        if host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return socket.getaddrinfo(host, port, *args, flags=socket.AI_NUMERICHOST, **kwargs)

    return resolve


@pytest.mark.parametrize("num_workers", [1, 4])
def test_bad_urls_are_recorded_and_never_stop_the_run(server, tmp_path, only_loopback, num_workers):
    bad = {
        "http://127.0.0.1:abc/x.jpg": "bad_url",  # httpx.InvalidURL
        "http://[::1/x.jpg": "bad_url",  # ValueError: Invalid IPv6 URL
        "http://127.0.0.1:99999/x.jpg": "bad_url",  # port out of range (was recorded as a robots.txt opt-out)
        "http://dead-domain.invalid/x.jpg": "dns_error",  # socket.gaierror
        "http://dead-domain.invalid/y.jpg": "dns_error",
        "not a url at all": "bad_url",
        "": "bad_url",
    }
    good = [server.url(f"/img/{i}.jpg") for i in range(6)]
    urls = [u for pair in itertools.zip_longest(good, bad) for u in pair if u is not None]
    candidates = [Candidate("goldfish", url, rank=i) for i, url in enumerate(urls)]
    calls = []
    config = loopback_config(num_workers=num_workers)
    summary = Downloader(str(tmp_path), config, resolver=no_dns_resolver(calls)).run(candidates)
    records = read_jsonl(tmp_path / "downloads.jsonl")
    got = {r["source_url"]: r for r in records}
    assert len(records) == len(urls) == len(got)  # each URL recorded exactly once
    for url, outcome in bad.items():
        assert got[url]["outcome"] == outcome, got[url]
        assert got[url]["detail"]
    assert all(got[url]["outcome"] == "ok" for url in good)
    assert "Name or service not known" in got["http://dead-domain.invalid/x.jpg"]["detail"]
    assert summary["ok"] == 6 and summary["bad_url"] == 5 and summary["dns_error"] == 2
    assert summary["retryable"] == 2 and summary["total"] == len(urls)
    assert calls.count("dead-domain.invalid") == 1  # one lookup per dead host (its robots.txt), not one per URL
    # a rerun resumes: nothing is fetched again, nothing crashes
    before = server.requests.copy()
    again = Downloader(str(tmp_path), config, resolver=no_dns_resolver([])).run(candidates)
    assert again == summary and server.requests == before


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
    assert "process-canary-5150" not in (tmp_path / "downloads.jsonl").read_text()
    candidates.pop()
    records = [r for r in read_jsonl(tmp_path / "downloads.jsonl") if r["aux_name"] != "carp"]
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


def test_a_keep_alive_connection_the_server_dropped_is_reopened(jpegs, tmp_path):
    """HTTP/1.1 keep-alive: the server answers one request per connection as if it kept it open, then closes it
    (as idle connections are closed on the real web); the next request on it is sent again on a new connection."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port, connections = listener.getsockname()[1], []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            robots = b"/robots.txt " in request.split(b"\r\n", 1)[0]
            body = b"User-agent: *\n" if robots else jpegs[len(connections) % len(jpegs)]
            kind = b"text/plain" if robots else b"image/jpeg"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        candidates = [Candidate("fish", f"http://127.0.0.1:{port}/{i}.jpg", rank=i) for i in range(3)]
        summary = Downloader(str(tmp_path), loopback_config(num_workers=1, max_retries=0)).run(candidates)
    finally:
        listener.close()
    assert summary["ok"] == 3, read_jsonl(tmp_path / "downloads.jsonl")
    assert len(connections) == 4  # robots.txt and three images, each on its own connection


def test_https_goes_through_the_guard_and_verifies_the_certificate(jpegs, tmp_path):
    """A loopback https server with a self-signed certificate for 127.0.0.1: refused as unverified by default,
    downloaded once its certificate is given as ``ca_bundle`` (SNI, verification and keep-alive over TLS)."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days",
         "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ImageServer(jpegs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    server.start()
    try:
        urls = [f"https://127.0.0.1:{server.port}/img/{i}.jpg" for i in range(33, 36)]
        candidates = [Candidate("goldfish", url, rank=i) for i, url in enumerate(urls)]
        refused = Downloader(str(tmp_path / "default"), loopback_config()).run(candidates)
        records = read_jsonl(tmp_path / "default" / "downloads.jsonl")
        assert refused["ok"] == 0 and refused["robots_unreachable"] == 3
        assert "CERTIFICATE_VERIFY_FAILED" in records[0]["detail"]
        trusted = Downloader(str(tmp_path / "trusted"), loopback_config(ca_bundle=str(cert))).run(candidates)
        assert trusted["ok"] == 3
    finally:
        server.stop()


def test_perceptual_hash_is_imagehash_phash(jpegs):
    import io

    import imagehash  # a test dependency only: the downloader and the filters use perceptual_hash

    images = [Image.open(io.BytesIO(data)) for data in jpegs]
    images += [Image.new("RGB", (64, 64), (10, 20, 30)), Image.linear_gradient("L"), Image.new("L", (300, 200), 9)]
    images += [Image.effect_noise((500, 300), 50).convert("RGB"), Image.open(io.BytesIO(jpegs[0])).convert("RGBA")]
    for image in images:
        assert perceptual_hash(image) == str(imagehash.phash(image))


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
