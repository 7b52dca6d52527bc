"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY: the downloader and the search client through a loopback forwarding proxy
(absolute-URI requests for http, CONNECT tunnels for https), and what the address guard still checks there."""

import base64
import socket

import pytest
from retrieval_fixtures.downloads import https_image_server, loopback_config, no_dns_resolver
from retrieval_fixtures.proxy import ConnectProxy

from neighbor_lt.retrieval import Candidate, Downloader, get_search_backend
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.secrets import redact


def proxy_env(monkeypatch, **values):
    """Only the given proxy variables set (whatever the machine running the tests has)."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def proxy():
    proxy = ConnectProxy().start()
    yield proxy
    proxy.stop()


@pytest.fixture
def ports(monkeypatch):
    """The ports this process opens TCP connections to (the proxy fixture's own connections are not counted)."""
    real, seen = socket.create_connection, []

    def record(address, *args, **kwargs):
        seen.append(address[1])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", record)
    return seen


def candidates(urls):
    return [Candidate("goldfish", url, rank=i) for i, url in enumerate(urls)]


@pytest.mark.parametrize("processes", [1, 2])
def test_http_goes_through_http_proxy(server, proxy, ports, tmp_path, monkeypatch, processes):
    proxy_env(monkeypatch, HTTP_PROXY=proxy.url, NO_PROXY="example.org")
    paths = [f"/img/{i}.jpg" for i in range(20, 24)]
    before = server.requests.copy()
    config = loopback_config(num_workers=2, num_processes=processes)
    summary = Downloader(str(tmp_path), config).run(candidates(server.url(p) for p in paths))
    assert summary["ok"] == 4, read_downloads(tmp_path)
    assert all(server.requests[p] - before[p] == 1 for p in paths)
    assert f"GET {server.url('/robots.txt')} HTTP/1.1" in proxy.requests  # absolute URIs, sent to the proxy
    assert all(r.startswith(f"GET http://127.0.0.1:{server.port}/") for r in proxy.requests)
    if processes == 1:  # the download processes connect outside this test's monkeypatch
        assert set(ports) == {proxy.port}


def test_https_goes_through_a_connect_tunnel_with_proxy_credentials(jpegs, tmp_path, monkeypatch, ports):
    secret = "pr0xy-s3cret"
    proxy = ConnectProxy(require_auth="Basic " + base64.b64encode(f"me:{secret}".encode()).decode()).start()
    server, cert = https_image_server(jpegs, tmp_path)
    try:
        proxy_env(monkeypatch, HTTPS_PROXY=f"http://me:{secret}@127.0.0.1:{proxy.port}")
        urls = [f"https://127.0.0.1:{server.port}/img/{i}.jpg" for i in range(3)]
        config = loopback_config(num_workers=1, ca_bundle=str(cert))
        summary = Downloader(str(tmp_path / "out"), config).run(candidates(urls))
        assert summary["ok"] == 3, read_downloads(tmp_path / "out")
        assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]  # one tunnel, kept alive, TLS inside
        assert set(ports) == {proxy.port}
        assert secret not in redact(f"proxy {secret} said no")  # the proxy's password is redacted everywhere

        proxy_env(monkeypatch, HTTPS_PROXY=f"http://me:wrong@127.0.0.1:{proxy.port}")
        refused = Downloader(str(tmp_path / "refused"), config).run(candidates(urls))
        detail = read_downloads(tmp_path / "refused")[0]["detail"]
        assert refused["robots_unreachable"] == 3 and "the proxy refused CONNECT" in detail and "407" in detail
    finally:
        server.stop()
        proxy.stop()


def test_no_proxy_goes_direct(server, proxy, ports, tmp_path, monkeypatch):
    proxy_env(monkeypatch, HTTP_PROXY=proxy.url, HTTPS_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
    summary = Downloader(str(tmp_path), loopback_config()).run(candidates([server.url("/img/25.jpg")]))
    assert summary["ok"] == 1 and proxy.requests == [] and set(ports) == {server.port}


def test_the_guard_through_a_proxy_checks_what_it_can_resolve_here(server, proxy, tmp_path, monkeypatch):
    """IP literals and names that resolve here to refused addresses never reach the proxy; a name only the proxy can
    resolve is the proxy's to check (it answers 502 here: the name does not exist)."""
    proxy_env(monkeypatch, HTTP_PROXY=proxy.url)

    def resolve(host, port, *args, **kwargs):
        if host == "intranet.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))]
        return no_dns_resolver([])(host, port, *args, **kwargs)

    urls = ["http://10.1.2.3/x.jpg", "http://intranet.example/y.jpg", server.url("/to-private/1"),
            "http://dead-domain.invalid/z.jpg"]  # fmt: skip
    Downloader(str(tmp_path), loopback_config(), resolver=resolve).run(candidates(urls))
    got = {r["source_url"]: r for r in read_downloads(tmp_path)}
    assert [got[u]["outcome"] for u in urls[:3]] == ["blocked_address"] * 3
    assert not any("10." in r or "intranet" in r or "192.168" in r for r in proxy.requests)
    assert got[urls[3]]["outcome"] == "robots_unreachable" and "502" in got[urls[3]]["detail"]
    assert "GET http://dead-domain.invalid/robots.txt HTTP/1.1" in proxy.requests


def test_search_goes_through_the_proxy(server, proxy, monkeypatch):
    proxy_env(monkeypatch, HTTP_PROXY=proxy.url)
    server.search_results["goldfish"] = [("/img/1.jpg", "/page/1", "a goldfish")]
    backend = get_search_backend(
        "google", endpoint=server.url("/customsearch/v1"), api_key=server.api_key, cx="test-cx"
    )
    hits = backend.search("goldfish", max_results=5)
    assert [h.image_url for h in hits] == [server.url("/img/1.jpg")]
    assert any(r.startswith(f"GET {server.url('/customsearch/v1')}?") for r in proxy.requests)
    proxy_env(monkeypatch, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
    count = len(proxy.requests)
    assert len(backend.search("goldfish", max_results=5)) == 1 and len(proxy.requests) == count  # direct


def test_a_proxy_it_cannot_use_is_one_line_before_any_request(tmp_path, monkeypatch):
    proxy_env(monkeypatch, HTTPS_PROXY="socks5://me:pw-1234@127.0.0.1:1080")
    with pytest.raises(ValueError, match=r"^proxy socks5://127\.0\.0\.1 is not an http:// proxy") as caught:
        Downloader(str(tmp_path), loopback_config())
    assert "pw-1234" not in str(caught.value)


# ---- the captions backend's remote reads (DuckDB's httpfs reads no proxy variable itself) ----


def test_duckdb_proxy_settings_follow_the_environment(monkeypatch):
    from neighbor_lt.retrieval.proxies import duckdb_proxy_settings

    proxy_env(monkeypatch, HTTPS_PROXY="http://alice:s3cr%40t@proxy.example:3128", NO_PROXY="internal.example")
    settings = duckdb_proxy_settings(["hf://datasets/org/meta/*.parquet", "local/part-0.parquet"])
    assert settings == {
        "http_proxy": "proxy.example:3128",
        "http_proxy_username": "alice",
        "http_proxy_password": "s3cr@t",
    }
    assert "s3cr@t" not in redact("password s3cr@t")  # registered as a secret: never logged
    assert duckdb_proxy_settings(["local/part-*.parquet"]) == {}
    assert duckdb_proxy_settings(["https://internal.example/meta/part-0.parquet"]) == {}  # NO_PROXY
    proxy_env(monkeypatch, HTTP_PROXY="http://proxy.example:3128")
    assert duckdb_proxy_settings(["s3://bucket/meta/part-0.parquet"]) == {}  # https endpoint, only HTTP_PROXY set
    assert duckdb_proxy_settings(["http://files.example/part-0.parquet"]) == {"http_proxy": "proxy.example:3128"}


def test_duckdb_proxy_settings_refuse_two_proxies_without_leaking_credentials(monkeypatch):
    from neighbor_lt.retrieval.proxies import duckdb_proxy_settings

    proxy_env(monkeypatch, HTTP_PROXY="http://bob:hunter2@plain.example:8080", HTTPS_PROXY="http://tls.example:3128")
    with pytest.raises(ValueError, match="different proxies") as info:
        duckdb_proxy_settings(["http://a.example/x.parquet", "hf://datasets/org/meta/x.parquet"])
    assert "hunter2" not in str(info.value) and "bob" not in str(info.value)
    proxy_env(monkeypatch, HTTPS_PROXY="socks5://proxy.example:1080")
    with pytest.raises(ValueError, match="not an http:// proxy"):
        duckdb_proxy_settings(["hf://datasets/org/meta/x.parquet"])


def test_the_captions_backend_sets_the_proxy_on_its_connection(monkeypatch):
    from neighbor_lt.retrieval.captions import CaptionSearch

    proxy_env(monkeypatch, HTTPS_PROXY="http://carol:pw@proxy.example:3128")
    # the remote shard cannot be read offline: the schema check is the only part left out
    monkeypatch.setattr(CaptionSearch, "_check_columns", lambda self: {})
    backend = CaptionSearch(data_files="hf://datasets/org/meta/part-0.parquet")
    rows = dict(
        backend.db.execute("SELECT name, value FROM duckdb_settings() WHERE name LIKE 'http_proxy%'").fetchall()
    )
    assert rows == {"http_proxy": "proxy.example:3128", "http_proxy_username": "carol", "http_proxy_password": "pw"}
