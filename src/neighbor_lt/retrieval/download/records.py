"""The downloader's files: the append-only JSONL record log, atomic writes, candidates as JSON."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict

from ..search import Candidate

logger = logging.getLogger(__name__)


def read_jsonl(path: str) -> list[dict]:
    """Read a JSONL file, ignoring a torn last line left by a killed writer."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: skipping a torn line", path)
    return records


class JsonlWriter:
    """Append-only JSONL log, one flushed line per record, safe to share between threads."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, "rb+") as f:  # drop a torn last line so the next record starts on its own line
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        with self.lock:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def candidate_to_dict(candidate: Candidate) -> dict:
    """A candidate as a JSON-able dict (without image bytes)."""
    d = asdict(candidate)
    d.pop("image_bytes")
    return d
