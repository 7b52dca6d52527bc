"""The request cache of the LLM neighbor backend: an append-only JSONL file, one record per answered request."""

from __future__ import annotations

import hashlib
import json
import os
import threading


class RequestCache:
    """Append-only JSONL store of LLM requests and replies, safe to share between threads.

    Example:
        >>> cache = RequestCache(None)  # in memory
        >>> cache.put("k", {"reply": "[a, b]"}); cache.get("k")["reply"]
        '[a, b]'
    """

    def __init__(self, path: str | None):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._torn = False
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            self._torn = bool(text) and not text.endswith("\n")  # a run killed mid-write: start on a new line
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by an interrupted run
                    continue
                self.records[record["key"]] = record

    @staticmethod
    def key(**parts) -> str:
        """A stable key from the request's identifying parts."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """The stored record for ``key``, or None."""
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        """Store a record and append it to the file at once (an interrupted run keeps what it got)."""
        record = {"key": key, **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.records[key] = record
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(("\n" if self._torn else "") + line)
                self._torn = False
