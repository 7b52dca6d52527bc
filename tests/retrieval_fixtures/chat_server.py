"""Plumbing shared by the loopback OpenAI-compatible chat servers of the neighbor tests: start one on a free port,
answer JSON, stop them all. What each server answers stays in its test file."""

import http.server
import json
import threading


def start_server(handler, **state) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server on 127.0.0.1 serving ``handler`` in the background, with ``state`` as attributes, a
    ``lock`` and its ``url`` (``http://127.0.0.1:PORT/v1``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads, server.lock = True, threading.Lock()
    for name, value in state.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return server


def stop_servers(servers) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()


def send_json(handler, status: int, payload, headers: dict | None = None) -> None:
    """Answer ``payload`` (a JSON value, or raw bytes for a malformed body) with ``status`` and extra ``headers``."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    try:
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (a Ctrl-C test): nothing to answer
