"""The downloader's HTTP client against real servers on 127.0.0.1: the address guard, malformed URLs, keep-alive
connections and https."""

import itertools
import socket

import pytest
from retrieval_fixtures.downloads import https_image_server, loopback_config, no_dns_resolver

from neighbor_lt.retrieval import AddressGuard, Candidate, DownloadConfig, Downloader
from neighbor_lt.retrieval.download import read_downloads


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


def test_guard_is_on_by_default(server, tmp_path, only_loopback):
    candidates = [
        Candidate("goldfish", server.url("/img/0.jpg")),
        Candidate("goldfish", f"http://localhost:{server.port}/img/1.jpg"),
    ]
    before = server.requests.copy()
    Downloader(str(tmp_path), DownloadConfig(num_workers=2)).run(candidates)
    assert [r["outcome"] for r in read_downloads(tmp_path)] == ["blocked_address"] * 2
    assert server.requests == before  # refused before connecting, robots.txt included
    assert only_loopback == []


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
    records = read_downloads(tmp_path)
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
    assert summary["ok"] == 3, read_downloads(tmp_path)
    assert len(connections) == 4  # robots.txt and three images, each on its own connection


def test_https_goes_through_the_guard_and_verifies_the_certificate(jpegs, tmp_path):
    """A loopback https server with a self-signed certificate for 127.0.0.1: refused as unverified by default,
    downloaded once its certificate is given as ``ca_bundle`` (SNI, verification and keep-alive over TLS)."""
    server, cert = https_image_server(jpegs, tmp_path)
    try:
        urls = [f"https://127.0.0.1:{server.port}/img/{i}.jpg" for i in range(33, 36)]
        candidates = [Candidate("goldfish", url, rank=i) for i, url in enumerate(urls)]
        refused = Downloader(str(tmp_path / "default"), loopback_config()).run(candidates)
        records = read_downloads(tmp_path / "default")
        assert refused["ok"] == 0 and refused["robots_unreachable"] == 3
        assert "CERTIFICATE_VERIFY_FAILED" in records[0]["detail"]
        trusted = Downloader(str(tmp_path / "trusted"), loopback_config(ca_bundle=str(cert))).run(candidates)
        assert trusted["ok"] == 3
    finally:
        server.stop()
