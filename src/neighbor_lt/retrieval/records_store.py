"""A keyed, append-only record store on SQLite: the curate stages' manifests (downloads, searches, scores).

One table of JSON records keyed by a field of the record (``key`` by default): writing a key again replaces its
record (a key's last record wins), so a rerun that redoes a record never leaves two. Writes are batched into
transactions (``batch_size`` records or ``commit_seconds``, whichever comes first) in SQLite's write-ahead log, so a
``kill -9`` loses at most the last uncommitted batch, never a committed record, and never leaves a torn or half-written
one: a rerun redoes what was lost. Reads go in chunks (``iter`` / ``chunks`` by insertion order, ``get_many``,
``count``, ``count_by``) so memory stays flat however many records there are.

Threads may share one store (a lock guards the connection; a reader sees the writes not yet committed); processes
each open their own, and SQLite serialises their write transactions (another process waits up to ``timeout`` seconds
for a batch to commit). A JSONL log of an earlier version (``legacy_jsonl``) is imported once, with one INFO line, and
kept beside the store renamed ``<name>.migrated``.

Example:
    >>> store = RecordStore("out/retrieve/downloads.sqlite", columns=("outcome",))  # doctest: +SKIP
    >>> store.put({"key": "goldfish\\thttps://a.org/1.jpg", "outcome": "ok", "path": "images/ab/ab12.jpg"})
    >>> store.count(outcome="ok"), store.count_by("outcome")
    (1, {'ok': 1})
    >>> for chunk in store.chunks(outcome="ok", chunk_size=10_000):
    ...     score(chunk)
    >>> store.close()
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["RecordStore", "iter_jsonl"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IN_CHUNK = 500  # keys per "IN (...)" lookup, well under SQLite's limit on bound parameters


def iter_jsonl(path: str) -> Iterator[dict]:
    """The records of a JSONL file one at a time, skipping a torn line left by a killed writer."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: skipping a torn line", path)


class RecordStore:
    """JSON records keyed by one of their fields, written in batches and read back in chunks.

    Example:
        >>> with RecordStore("scores.sqlite", columns=("outcome",)) as store:  # doctest: +SKIP
        ...     store.put_many({"key": k, "outcome": "ok", "similarity": 0.9} for k in ("a", "b"))
        ...     store.get("a")["similarity"], sorted(store.get_many(["a", "zz"]))
        (0.9, ['a'])

    Args:
        path: the SQLite file (created with its folder when missing).
        columns: record fields kept in indexed columns, the ones ``iter`` / ``count`` / ``first`` select on and
            ``count_by`` groups by (a missing field is NULL). Columns added to an existing store are filled from
            its records.
        key: the field that keys a record (every record must have it).
        batch_size: records per committed transaction.
        commit_seconds: a batch open this long is committed at the next write (bounds what ``kill -9`` can lose).
        legacy_jsonl: a JSONL log of the same records to import once (a key's last line wins); it is then renamed
            ``<legacy_jsonl>.migrated``, never deleted.
        timeout: seconds to wait for another process's write transaction.
        cache_mib: SQLite's page cache of this connection, which fills up to this size as the file is read or
            written: 64 MiB keeps a writer's inserts into the key index off the disk; a reader that scans the
            records once needs little.
    """

    def __init__(
        self,
        path: str,
        columns: Iterable[str] = ("outcome",),
        key: str = "key",
        batch_size: int = 1000,
        commit_seconds: float = 1.0,
        legacy_jsonl: str | None = None,
        timeout: float = 60.0,
        cache_mib: int = 64,
    ):
        self.path, self.key = path, key
        self.columns = tuple(columns)
        for name in (key, *self.columns):
            if not _NAME.match(name) or name in ("record", "rowid"):
                raise ValueError(f"record store {path}: {name!r} cannot be a column name")
        self.batch_size, self.commit_seconds = max(1, batch_size), commit_seconds
        self._lock = threading.RLock()
        self._pending, self._opened = 0, 0.0
        names = ", ".join(f'"{n}"' for n in ("key", "record", *self.columns))
        self._insert = f"INSERT OR REPLACE INTO records ({names}) VALUES ({', '.join('?' * (2 + len(self.columns)))})"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA cache_size=-{max(1, int(cache_mib)) * 1024}")  # in KiB
        self._db.execute("PRAGMA wal_autocheckpoint=16384")  # 64 MiB of log between checkpoints (each one syncs)
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed batch survives a killed process
        self._create_schema()
        if legacy_jsonl and os.path.exists(legacy_jsonl):
            self._migrate(legacy_jsonl)

    # ---- schema and migration -------------------------------------------------------------------------------
    def _create_schema(self) -> None:
        """Create the table, columns and indexes that are missing (under the write lock only when some are)."""
        with self._lock:
            if self._schema_ready():
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                have = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
                for name in self.columns:
                    if name not in have:
                        self._db.execute(f'ALTER TABLE records ADD COLUMN "{name}"')
                        self._db.execute(f"UPDATE records SET \"{name}\" = json_extract(record, '$.{name}')")
                    self._db.execute(f'CREATE INDEX IF NOT EXISTS "by_{name}" ON records ("{name}")')
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _schema_ready(self) -> bool:
        names = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        wanted = {"records", "meta", *(f"by_{name}" for name in self.columns)}
        return wanted <= names

    def _migrate(self, legacy: str) -> None:
        """Import ``legacy`` in one transaction with its done-marker (a process that opens the store meanwhile waits,
        then finds it done), then rename it."""
        marker = f"migrated:{os.path.basename(legacy)}"
        count = None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                done = self._db.execute("SELECT value FROM meta WHERE name = ?", (marker,)).fetchone()
                if done is None and os.path.exists(legacy):
                    count, rows = 0, []
                    for record in iter_jsonl(legacy):
                        if isinstance(record, dict) and self.key in record:
                            rows.append(self._row(record))
                            count += 1
                        if len(rows) >= 10_000:
                            self._db.executemany(self._insert, rows)
                            rows = []
                    self._db.executemany(self._insert, rows)
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (marker, str(count)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if count is not None:
            logger.info(
                "%s: %d record(s) migrated into %s (the JSONL is kept as %s.migrated)",
                legacy, count, self.path, os.path.basename(legacy),
            )  # fmt: skip
        try:
            os.replace(legacy, legacy + ".migrated")
        except FileNotFoundError:  # another process renamed it
            pass

    # ---- writing ----------------------------------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")  # take the write lock now: a later upgrade could fail at once
            self._pending, self._opened = 0, time.monotonic()

    def _row(self, record: dict) -> tuple:
        values = []
        for name in self.columns:
            value = record.get(name)
            scalar = value is None or isinstance(value, (str, int, float))
            values.append(value if scalar else json.dumps(value, separators=(",", ":")))
        return (str(record[self.key]), json.dumps(record, ensure_ascii=False), *values)

    def _write(self, record: dict) -> None:
        self._begin()
        self._db.execute(self._insert, self._row(record))
        self._pending += 1
        if self._pending >= self.batch_size or time.monotonic() - self._opened >= self.commit_seconds:
            self.flush()

    def put(self, record: dict) -> None:
        """Add ``record`` (replacing the record of its key); committed with its batch.

        Args:
            record: a JSON-able dict with the store's key field.
        """
        with self._lock:
            self._write(record)

    def put_many(self, records: Iterable[dict]) -> None:
        """:meth:`put` each record, then commit."""
        batch = []
        for record in records:
            batch.append(self._row(record))
            if len(batch) >= self.batch_size:
                self._write_rows(batch)
                batch = []
        self._write_rows(batch)

    def _write_rows(self, rows: list[tuple]) -> None:
        with self._lock:
            self._begin()
            self._db.executemany(self._insert, rows)
            self.flush()

    def delete(self, keys: Iterable[str]) -> int:
        """Remove the records of ``keys`` (committed at once); returns how many there were."""
        removed = 0
        with self._lock:
            for chunk in _chunked(list(keys), _IN_CHUNK):
                self._begin()
                cursor = self._db.execute(f"DELETE FROM records WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                removed += cursor.rowcount
            self.flush()
        return removed

    def flush(self) -> None:
        """Commit the open batch (a no-op when none is open)."""
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._pending = 0

    def close(self) -> None:
        """Commit and close; the store cannot be used after."""
        with self._lock:
            self.flush()
            self._db.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading ----------------------------------------------------------------------------------------------
    def _where(self, conditions: dict) -> tuple[str, list]:
        clauses, params = [], []
        for name, value in conditions.items():
            if name not in self.columns and name != "key":
                raise ValueError(f"record store {self.path}: no column {name!r} (columns: {', '.join(self.columns)})")
            if value is None:
                clauses.append(f'"{name}" IS NULL')
            elif isinstance(value, (list, tuple, set, frozenset)):
                values = list(value)
                clauses.append(f'"{name}" IN ({",".join("?" * len(values))})' if values else "0")
                params.extend(values)
            else:
                clauses.append(f'"{name}" = ?')
                params.append(value)
        return " AND ".join(clauses) or "1", params

    def get(self, key: str) -> dict | None:
        """The record of ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT record FROM records WHERE key = ?", (str(key),)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """The records of those ``keys`` that have one, by key."""
        found = {}
        for chunk in _chunked([str(k) for k in keys], _IN_CHUNK):
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, record FROM records WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            found.update((key, json.loads(record)) for key, record in rows)
        return found

    def present(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` that have a record (their records are not read)."""
        found = set()
        for chunk in _chunked([str(k) for k in keys], _IN_CHUNK):
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key FROM records WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            found.update(key for (key,) in rows)
        return found

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM records WHERE key = ?", (str(key),)).fetchone() is not None

    def __len__(self) -> int:
        return self.count()

    def first(self, **where) -> dict | None:
        """The earliest record (insertion order) whose columns have these values, or None.

        Example:
            >>> store.first(source_url="https://a.org/1.jpg")  # doctest: +SKIP
        """
        sql, params = self._where(where)
        with self._lock:
            row = self._db.execute(f"SELECT record FROM records WHERE {sql} ORDER BY rowid LIMIT 1", params).fetchone()
        return None if row is None else json.loads(row[0])

    def chunks(self, chunk_size: int = 10_000, **where) -> Iterator[list[dict]]:
        """The records (insertion order) whose columns have these values, ``chunk_size`` at a time.

        A value may be a list (any of them) or None (the field is missing). Each chunk is a fresh query, so the
        store may be written between chunks (a record rewritten meanwhile may come again, later, or not at all).

        Example:
            >>> for chunk in store.chunks(outcome=["timeout", "dns_error"], chunk_size=5000):  # doctest: +SKIP
            ...     retry(chunk)

        Args:
            chunk_size: records per chunk.
            where: column = value conditions, all of them met.
        """
        for rows in self._scan("record", chunk_size, where):
            yield [json.loads(record) for record in rows]

    def iter(self, chunk_size: int = 10_000, **where) -> Iterator[dict]:
        """The records of :meth:`chunks` one at a time."""
        for chunk in self.chunks(chunk_size, **where):
            yield from chunk

    def keys(self, chunk_size: int = 50_000, **where) -> Iterator[str]:
        """The keys (insertion order) of the records whose columns have these values, read in chunks."""
        for rows in self._scan("key", chunk_size, where):
            yield from rows

    def _scan(self, column: str, chunk_size: int, where: dict) -> Iterator[list]:
        """``column`` of the matching records in insertion order, one query per chunk (keyed on the rowid)."""
        sql, params = self._where(where)
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT rowid, {column} FROM records WHERE rowid > ? AND {sql} ORDER BY rowid LIMIT ?",
                    [last, *params, chunk_size],
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [value for _, value in rows]

    def count(self, **where) -> int:
        """How many records have these column values (all records without conditions)."""
        sql, params = self._where(where)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM records WHERE {sql}", params).fetchone()[0]

    def count_by(self, column: str) -> dict:
        """Records per value of ``column`` (None: the field is missing).

        Example:
            >>> store.count_by("outcome")  # doctest: +SKIP
            {'ok': 812, 'http_error': 40, 'duplicate': 25}
        """
        self._where({column: 0})  # the column check
        with self._lock:
            rows = self._db.execute(f'SELECT "{column}", COUNT(*) FROM records GROUP BY "{column}"').fetchall()
        return dict(rows)


def _chunked(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
