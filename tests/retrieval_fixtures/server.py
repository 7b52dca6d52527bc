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
  /res/v1/images/search   Brave Search API image search (X-Subscription-Token, q, count <= 200, no offset)
  /search.json            SerpApi, engine=google_images (api_key, q, ijn: 100 images a page)

The search APIs answer in their documented formats, errors included; ``api_mode`` switches them all to one failure:
"quota" (the provider's quota-exhausted answer), "malformed" (HTTP 200 with a body that is not JSON), "gone"
(HTTP 410, an API that was shut down) or, for Brave, "burst" (one 429 with Retry-After: 0 per query). ``search_results`` maps a query to its hits (image path, page path, title).
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
        self.api_mode: str | None = None
        self.requests: Counter = Counter()
        self.log: list[tuple[float, str]] = []  # (time.monotonic() on arrival, path) of every request
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
                    server.log.append((time.monotonic(), path))
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
                if path == "/res/v1/images/search":
                    return self.brave(query)
                if path == "/search.json":
                    return self.serpapi(query)
                return self.send(404, b"not found", "text/plain")

            def results(self, query):
                return server.search_results.get(query["q"][0], [])

            def json(self, value):
                self.send(200, json.dumps(value).encode(), "application/json")

            def failure(self, error: dict, quota_status: int = 429, quota_body: dict | None = None) -> bool:
                """Answer with the mode's failure (True) or leave the request to the API (False)."""
                if server.api_mode == "malformed":
                    self.send(200, b'{"results": [{"title": "cut off', "application/json")
                elif server.api_mode == "gone":
                    self.send(410, json.dumps(error).encode(), "application/json")
                elif server.api_mode == "quota":
                    self.send(quota_status, json.dumps(quota_body).encode(), "application/json")
                return server.api_mode in ("malformed", "gone", "quota")

            def google(self, query):
                gone = {"error": {"code": 410, "message": "Custom Search JSON API is no longer available.",
                                  "status": "GONE"}}  # fmt: skip
                quota = {"error": {"code": 429, "message": "Quota exceeded for quota metric 'Queries' and limit "
                                   "'Queries per day'.", "status": "RESOURCE_EXHAUSTED"}}  # fmt: skip
                if self.failure(gone, 429, quota):
                    return
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

            def brave_error(self, status, code, detail, meta):
                error = {"id": "0f2b8c1e", "status": status, "code": code, "detail": detail, "meta": meta}
                body = {"type": "ErrorResponse", "error": error, "time": 1764720000}
                self.send(status, json.dumps(body).encode(), "application/json")

            def brave(self, query):
                quota_meta = {"component": "rate_limiter", "plan": "Search", "rate_limit": 50, "rate_current": 1,
                              "quota_limit": 2000, "quota_current": 2000}  # fmt: skip
                if server.api_mode == "burst" and not server.flaky[query["q"][0]]:  # over the per-second limit
                    server.flaky[query["q"][0]] += 1
                    self.send_response(429)
                    body = json.dumps({"type": "ErrorResponse", "error": {"status": 429, "code": "RATE_LIMITED"}})
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    return self.wfile.write(body.encode())
                if server.api_mode == "quota":  # Brave's answer once the plan's monthly quota is spent
                    return self.brave_error(429, "RATE_LIMITED", "Request rate limit exceeded for plan.", quota_meta)
                if self.failure({"type": "ErrorResponse"}):
                    return
                if self.headers.get("X-Subscription-Token") != server.api_key:  # Brave's answer for a wrong token
                    return self.brave_error(
                        422, "SUBSCRIPTION_TOKEN_INVALID", "The provided subscription token is invalid.",
                        {"component": "authentication"},
                    )  # fmt: skip
                count = int(query.get("count", ["50"])[0])
                if not 1 <= count <= 200:
                    return self.brave_error(
                        422, "VALIDATION", "Unable to validate request parameter(s)", {"errors": ["count"]}
                    )
                hits = self.results(query)[:count]
                results = [
                    {"type": "image_result", "title": title, "url": server.url(page), "source": "127.0.0.1",
                     "thumbnail": {"src": server.url(img) + "?thumb"},
                     "properties": {"url": server.url(img), "placeholder": server.url(img) + "?ph"},
                     "meta_url": {"scheme": "http", "netloc": "127.0.0.1", "path": page}, "confidence": "high"}
                    for img, page, title in hits
                ]  # fmt: skip
                original = query["q"][0]
                self.json({"type": "images", "query": {"original": original, "spellcheck_off": False},
                           "results": results, "extra": {"might_be_offensive": False}})  # fmt: skip

            def serpapi(self, query):
                if self.failure({"error": "The search expired and has been deleted from the archive."}, 429,
                                {"error": "Your account has run out of searches."}):  # fmt: skip
                    return
                if query.get("api_key") != [server.api_key]:  # SerpApi's answer for a wrong key
                    error = {
                        "error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"
                    }
                    return self.send(401, json.dumps(error).encode(), "application/json")
                if query.get("engine") != ["google_images"] or not query.get("q"):
                    return self.send(400, b'{"error": "Missing query `q` parameter."}', "application/json")
                page = int(query.get("ijn", ["0"])[0])
                hits = self.results(query)[page * 100 : page * 100 + 100]
                metadata = {"id": "6540ac26b68f8b2910019dd5", "status": "Success",
                            "json_endpoint": "https://serpapi.com/searches/d46c933a/6540ac26.json"}  # fmt: skip
                parameters = {"engine": "google_images", "q": query["q"][0], "ijn": str(page)}
                if not hits:  # an empty result is a Success with an error text
                    return self.json({"search_metadata": metadata, "search_parameters": parameters,
                                      "search_information": {"image_results_state": "Fully empty"},
                                      "error": "Google hasn't returned any results for this query."})  # fmt: skip
                images = [
                    {"position": page * 100 + i + 1, "thumbnail": server.url(img) + "?thumb", "original": server.url(img),
                     "original_width": 64, "original_height": 64, "title": title, "link": server.url(page_path),
                     "source": "127.0.0.1", "is_product": False}
                    for i, (img, page_path, title) in enumerate(hits)
                ]  # fmt: skip
                self.json({"search_metadata": metadata, "search_parameters": parameters, "images_results": images})

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
