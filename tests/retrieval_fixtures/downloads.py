"""Helpers of the downloader tests: the loopback settings, outcome tables, a DNS-free resolver, a run in a child."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from neighbor_lt.retrieval import DownloadConfig

RUN_DOWNLOAD = Path(__file__).parent / "run_download.py"


def loopback_config(**overrides) -> DownloadConfig:
    """Settings for the loopback servers: 127.0.0.1 allowed, no rate limit, short timeouts and backoff."""
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


def outcomes(records) -> dict[str, str]:
    """URL path (without scheme, host and port) -> outcome."""
    return {r["source_url"].split(":", 2)[-1].split("/", 1)[-1]: r["outcome"] for r in records}


def no_dns_resolver(calls):
    """A getaddrinfo that never queries DNS: ``*.invalid`` fails as a dead domain does, IP literals pass through."""

    def resolve(host, port, *args, **kwargs):
        calls.append(host)
        if host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return socket.getaddrinfo(host, port, *args, flags=socket.AI_NUMERICHOST, **kwargs)

    return resolve


def download_command(tmp_path, candidates, processes: int) -> tuple[list[str], dict, Path]:
    """The command (and environment) that runs the downloader on ``candidates`` in a child process, and its output
    folder."""
    spec = tmp_path / "candidates.json"
    spec.write_text(json.dumps([{"query": c.query, "image_url": c.image_url, "rank": c.rank} for c in candidates]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(RUN_DOWNLOAD), str(spec), str(out), f"processes={processes}"]
    return command, env, out


def recorded(folder: Path) -> int:
    """How many records a (running) downloader has committed in ``folder``."""
    from neighbor_lt.retrieval.download import DOWNLOADS, open_downloads

    if not (folder / DOWNLOADS).exists():
        return 0
    with open_downloads(str(folder)) as store:
        return store.count()


def run_to_end(command, env) -> subprocess.CompletedProcess:
    """Run the child to its end (it must succeed)."""
    return subprocess.run(command, env=env, check=True, capture_output=True)


def https_image_server(jpegs, folder: Path):
    """An :class:`ImageServer` over TLS with a fresh self-signed certificate for 127.0.0.1 (started); returns it and
    the certificate's path (a ``ca_bundle`` that trusts it)."""
    import ssl

    from retrieval_fixtures.server import ImageServer

    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days",
         "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ImageServer(jpegs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    return server.start(), cert
