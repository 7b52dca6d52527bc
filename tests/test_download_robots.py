"""Opt-outs against a real server on 127.0.0.1: robots.txt (RFC 9309) read once per origin, and X-Robots-Tag."""

import threading
from email.message import Message

import pytest
from retrieval_fixtures.downloads import loopback_config, no_dns_resolver
from retrieval_fixtures.server import ImageServer

from neighbor_lt.retrieval.download import DnsError, Downloader
from neighbor_lt.retrieval.download.robots import RobotsUnreachable, opted_out


@pytest.mark.parametrize("status", [200, 404, 503])
def test_robots_txt_is_read_once_per_origin_and_its_status_decides(jpegs, tmp_path, status):
    server = ImageServer(jpegs).start()
    try:
        server.robots_status = status
        rules = Downloader(str(tmp_path), loopback_config()).robots
        answers = []

        def ask(path):
            try:
                answers.append((path, rules.allows(server.url(path))))
            except RobotsUnreachable as e:
                answers.append((path, str(e)))

        threads = [threading.Thread(target=ask, args=(p,)) for p in ["/img/1.jpg", "/private/2.jpg"] * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.requests["/robots.txt"] == 1  # one fetch for eight questions from eight threads
        got = dict(answers)
        if status == 200:
            assert got == {"/img/1.jpg": True, "/private/2.jpg": False}
        elif status == 404:  # 4xx: no rules at all
            assert got == {"/img/1.jpg": True, "/private/2.jpg": True}
        else:  # 5xx: disallow all until it can be read
            assert set(got.values()) == {"robots.txt answered HTTP 503"}
    finally:
        server.stop()


def test_a_dead_host_is_looked_up_once(tmp_path):
    calls = []
    rules = Downloader(str(tmp_path), loopback_config(), resolver=no_dns_resolver(calls)).robots
    for path in ("/a.jpg", "/b.jpg"):
        with pytest.raises(DnsError, match="Name or service not known"):
            rules.allows(f"http://dead-domain.invalid{path}")
    assert calls == ["dead-domain.invalid"]


def test_x_robots_tag_directives():
    def headers(*values):
        message = Message()
        for value in values:
            message["X-Robots-Tag"] = value
        return message

    directives = ["noai", "noimageai", "noindex", "none"]
    assert opted_out(headers("noai, noimageai"), directives) == "X-Robots-Tag: noai, noimageai"
    assert opted_out(headers("max-snippet: 20", "otherbot: NoIndex"), directives) == "X-Robots-Tag: otherbot: NoIndex"
    assert opted_out(headers("nofollow; noarchive"), directives) is None
    assert opted_out(headers(), directives) is None
    assert opted_out(headers("noai"), ["noindex"]) is None  # only the configured directives count
