"""A forwarding http proxy on 127.0.0.1: ``CONNECT host:port`` tunnels (for https) and absolute-URI requests (for
http), relayed byte for byte. ``requests`` lists each connection's first request line (``CONNECT 127.0.0.1:8443``,
``GET http://127.0.0.1:8000/img/0.jpg``); a target it cannot reach is answered 502."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit


class ConnectProxy:
    """Start with ``ConnectProxy().start()``; ``url`` is what HTTP(S)_PROXY takes."""

    def __init__(self, require_auth: str | None = None):
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.require_auth = require_auth  # the expected Proxy-Authorization header, if any
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        request_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        self.requests.append(request_line)
        self.headers.append(headers)
        method, target, _ = request_line.split(" ", 2)
        if self.require_auth and headers.get("Proxy-Authorization") != self.require_auth:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        host, port = (
            target.rsplit(":", 1) if method == "CONNECT" else (urlsplit(target).hostname, urlsplit(target).port or 80)
        )
        upstream = socket.socket()  # a plain socket: a test's patch of socket.create_connection sees only the client
        try:
            upstream.connect((socket.gethostbyname(str(host).strip("[]")), int(port)))
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            upstream.close()
            return
        if method == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream.sendall(head)  # the server reads the absolute URI's path
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
