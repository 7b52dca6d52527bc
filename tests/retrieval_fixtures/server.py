"""A real HTTP server on 127.0.0.1: image hosting with every failure mode, plus search APIs in each format.

Routes (GET):
  /img/<i>.jpg            real JPEG i of the shared Tiny-ImageNet validation split
  /dup/<i>.jpg            the same bytes as /img/<i>.jpg (SHA-256 duplicate)
  /reenc/<i>.jpg          image i re-encoded (different bytes, same perceptual hash)
  /delay/<i>.jpg          image i after DELAY seconds (for the kill-and-resume test)
  /slow/<i>.jpg           image i after 3 s (timeouts)
  /corrupt.jpg            random bytes labelled image/jpeg
  /truncated.jpg          the first half of a JPEG
  /page.html              an HTML page
  /status/<code>          that status code
  /flaky/<key>            429 with Retry-After: 0 twice per key, then an image
  /loop/a, /loop/b        a redirect loop
  /redirect/<i>.jpg       302 to /img/<i>.jpg
  /to-private/<n>         302 to a private / link-local address (must never be contacted)
  /big.jpg                a valid JPEG larger than the tests' max_bytes (with Content-Length)
  /big-stream.jpg         the same without Content-Length (connection-close body)
  /bomb.png               a small PNG of 6000x6000 pixels (decompression bomb for max_pixels=10M)
  /tiny.png               a 4x4 image
  /noai.jpg               an image sent with X-Robots-Tag: noai
  /private/<i>.jpg        disallowed by robots.txt
  /robots.txt             User-agent: * / Disallow: /private/ (status ``robots_status``: 503 = unreachable)
  /outage/<i>.jpg         503 while ``outage`` is set, else image i (for retrying failed URLs)
  /customsearch/v1        Google Custom Search JSON API (image search); Google's error JSON for a wrong key
  /v7.0/images/search     Bing-style image search API; Bing's error JSON for a wrong key
  /ddg, /ddg/i.js         DuckDuckGo token page and image results
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

PRIVATE_TARGETS = ["http://10.1.2.3/x.jpg", "http://192.168.0.7/x.jpg", "http://169.254.169.254/latest/meta-data/"]


def resolve_without_dns(host, port, *args, **kwargs):
    """A picklable getaddrinfo (download processes get it) that never queries DNS: ``*.invalid`` fails as a dead
    domain does, IP literals pass through."""
    if host.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return socket.getaddrinfo(host, port, *args, flags=socket.AI_NUMERICHOST, **kwargs)


def load_jpegs(data_dir, n: int = 40) -> list[bytes]:
    """The first ``n`` JPEG bytes of the shared validation split."""
    table = pq.read_table(os.path.join(data_dir, "valid-00000-of-00001.parquet"), columns=["image"]).slice(0, n)
    return [row["image"]["bytes"] for row in table.to_pylist()]


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


class ImageServer:
    """Start with ``ImageServer(jpegs).start()``; ``url(path)`` builds URLs; ``requests`` counts paths served."""

    def __init__(
        self, jpegs: list[bytes], delay: float = 0.05, search_results: dict | None = None, api_key: str = "test-key"
    ):
        self.jpegs = jpegs
        self.delay = delay
        self.api_key = api_key
        self.robots_status = 200
        self.outage = False
        self.requests: Counter = Counter()
        self.flaky: Counter = Counter()
        self.lock = threading.Lock()
        self.search_results = search_results or {}  # query -> list of (image path, page path, title)
        rng = np.random.default_rng(0)
        self.reencoded = [_encode(Image.open(io.BytesIO(b)).convert("RGB"), quality=60) for b in jpegs]
        self.big = _encode(Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)), quality=95)
        self.bomb = _encode(Image.new("L", (6000, 6000)), "PNG", optimize=True)
        self.tiny = _encode(Image.new("RGB", (4, 4)), "PNG")
        self.corrupt = rng.integers(0, 255, 5000, dtype=np.uint8).tobytes()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status, body=b"", content_type="image/jpeg", headers=None, length=True):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                parts = urlsplit(self.path)
                path, query = parts.path, parse_qs(parts.query)
                with server.lock:
                    server.requests[path] += 1
                name = path.rsplit("/", 1)[-1]
                index = int(name.split(".")[0]) if name.split(".")[0].isdigit() else 0
                if path == "/robots.txt":
                    return self.send(server.robots_status, b"User-agent: *\nDisallow: /private/\n", "text/plain")
                if path.startswith("/outage/"):
                    if server.outage:
                        return self.send(503, b"down for maintenance", "text/plain")
                    return self.send(200, server.jpegs[index])
                if path.startswith(("/img/", "/dup/", "/private/")):
                    return self.send(200, server.jpegs[index])
                if path.startswith("/reenc/"):
                    return self.send(200, server.reencoded[index])
                if path.startswith("/delay/"):
                    time.sleep(server.delay)
                    return self.send(200, server.jpegs[index])
                if path.startswith("/slow/"):
                    time.sleep(3)
                    return self.send(200, server.jpegs[index])
                if path == "/corrupt.jpg":
                    return self.send(200, server.corrupt)
                if path == "/truncated.jpg":
                    return self.send(200, server.jpegs[0][: len(server.jpegs[0]) // 2])
                if path == "/page.html":
                    return self.send(200, b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
                if path.startswith("/status/"):
                    return self.send(int(name), b"error", "text/plain")
                if path.startswith("/flaky/"):
                    with server.lock:
                        server.flaky[name] += 1
                        count = server.flaky[name]
                    if count <= 2:
                        return self.send(429, b"slow down", "text/plain", {"Retry-After": "0"})
                    return self.send(200, server.jpegs[10])
                if path == "/loop/a":
                    return self.send(302, b"", "text/plain", {"Location": "/loop/b"})
                if path == "/loop/b":
                    return self.send(302, b"", "text/plain", {"Location": "/loop/a"})
                if path.startswith("/redirect/"):
                    return self.send(302, b"", "text/plain", {"Location": f"/img/{name}"})
                if path.startswith("/to-private/"):
                    return self.send(302, b"", "text/plain", {"Location": PRIVATE_TARGETS[index]})
                if path == "/big.jpg":
                    return self.send(200, server.big)
                if path == "/big-stream.jpg":
                    return self.send(200, server.big, length=False)
                if path == "/bomb.png":
                    return self.send(200, server.bomb, "image/png")
                if path == "/tiny.png":
                    return self.send(200, server.tiny, "image/png")
                if path == "/noai.jpg":
                    return self.send(200, server.jpegs[2], headers={"X-Robots-Tag": "noai, noimageai"})
                if path == "/customsearch/v1":
                    return self.google(query)
                if path == "/v7.0/images/search":
                    return self.bing(query)
                if path == "/ddg":
                    q = query["q"][0]
                    return self.send(200, f'<html><script>vqd="4-123{len(q)}"</script></html>'.encode(), "text/html")
                if path == "/ddg/i.js":
                    return self.ddg(query)
                return self.send(404, b"not found", "text/plain")

            def results(self, query):
                return server.search_results.get(query["q"][0], [])

            def json(self, value):
                self.send(200, json.dumps(value).encode(), "application/json")

            def google(self, query):
                if query.get("key") != [server.api_key]:  # what Google answers for a wrong key
                    error = {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                             "status": "INVALID_ARGUMENT"}  # fmt: skip
                    return self.send(400, json.dumps({"error": error}).encode(), "application/json")
                if query.get("cx") != ["test-cx"] or query.get("searchType") != ["image"]:
                    return self.send(403, b'{"error": "bad request"}', "application/json")
                start, num = int(query["start"][0]), int(query["num"][0])
                hits = self.results(query)[start - 1 : start - 1 + num]
                items = [
                    {"link": server.url(img), "title": title, "image": {"contextLink": server.url(page)}}
                    for img, page, title in hits
                ]
                self.json({"items": items} if items else {})

            def bing(self, query):
                if self.headers.get("Ocp-Apim-Subscription-Key") != server.api_key:  # Bing's answer
                    error = {"code": "401", "message": "Access denied due to invalid subscription key or wrong API "
                             "endpoint. Make sure to provide a valid key for an active subscription."}  # fmt: skip
                    return self.send(401, json.dumps({"error": error}).encode(), "application/json")
                offset, count = int(query["offset"][0]), int(query["count"][0])
                hits = self.results(query)[offset : offset + count]
                value = [{"contentUrl": server.url(i), "hostPageUrl": server.url(p), "name": t} for i, p, t in hits]
                self.json({"value": value, "nextOffset": offset + len(hits)})

            def ddg(self, query):
                if not query.get("vqd", [""])[0].startswith("4-123"):
                    return self.send(403, b"{}", "application/json")
                start = int(query.get("s", ["0"])[0])
                hits = self.results(query)[start : start + 100]
                results = [{"image": server.url(i), "url": server.url(p), "title": t} for i, p, t in hits]
                self.json({"results": results})

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients hang up on purpose (size limits, timeouts, kills)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ImageServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
