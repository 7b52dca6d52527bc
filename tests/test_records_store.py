"""The record store: a key's last record wins, reads in chunks, shared by threads and processes, kill -9 safe, and a
JSONL log of an earlier version imported once."""

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading

import pytest

from neighbor_lt.retrieval.records_store import RecordStore


def test_last_record_wins_and_reads_come_in_chunks(tmp_path):
    store = RecordStore(str(tmp_path / "sub" / "s.sqlite"), columns=("outcome", "aux_name"), batch_size=7)
    store.put_many({"key": f"k{i}", "outcome": "ok" if i % 3 else "timeout", "aux_name": f"c{i % 2}", "n": i}
                   for i in range(50))  # fmt: skip
    store.put({"key": "k3", "outcome": "ok", "aux_name": "c1", "n": 103})  # retried: replaces its record
    assert len(store) == 50 and store.get("k3")["n"] == 103 and store.get("nope") is None and "k4" in store
    assert store.count_by("outcome") == {"ok": 34, "timeout": 16}
    assert store.count(outcome="ok", aux_name="c0") == 16
    assert store.count(outcome=["ok", "timeout"]) == 50 and store.count(outcome=[]) == 0
    chunks = list(store.chunks(chunk_size=8, outcome="timeout"))
    assert [len(c) for c in chunks] == [8, 8] and all(r["outcome"] == "timeout" for c in chunks for r in c)
    order = [r["n"] for r in store.iter(chunk_size=6)]
    assert order == [i for i in range(50) if i != 3] + [103]  # insertion order, the rewritten key last
    assert list(store.keys(chunk_size=9))[-1] == "k3"
    assert store.first(aux_name="c1")["n"] == 1 and store.first(aux_name="c9") is None
    assert sorted(store.get_many([f"k{i}" for i in range(0, 1200, 2)])) == sorted(f"k{i}" for i in range(0, 50, 2))
    assert store.delete(["k0", "k1", "missing"]) == 2 and len(store) == 48
    with pytest.raises(ValueError, match="no column 'path'"):
        store.count(path="x")
    store.close()
    # a column asked for later is filled from the stored records
    with RecordStore(str(tmp_path / "sub" / "s.sqlite"), columns=("outcome", "n")) as again:
        assert again.count(n=103) == 1 and again.count(outcome=None) == 0


def test_threads_share_one_store_and_see_their_uncommitted_writes(tmp_path):
    store = RecordStore(str(tmp_path / "s.sqlite"), batch_size=10_000, commit_seconds=3600)
    threads = [
        threading.Thread(target=lambda t=t: [store.put({"key": f"{t}-{i}", "outcome": "ok"}) for i in range(200)])
        for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 1600 and store.get("7-199") is not None  # not committed yet, visible to the writer
    other = RecordStore(str(tmp_path / "s.sqlite"))
    assert other.count() == 0  # another connection sees only committed batches
    store.flush()
    assert other.count() == 1600
    store.close()
    other.close()


def _write_keys(path: str, start: int, count: int) -> None:
    with RecordStore(path, batch_size=50) as store:
        for i in range(start, start + count):
            store.put({"key": f"k{i}", "outcome": "ok", "pid": os.getpid()})


def test_processes_write_to_one_store(tmp_path):
    path = str(tmp_path / "s.sqlite")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_keys, args=(path, 1000 * p, 400)) for p in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0, 0]
    with RecordStore(path) as store:
        assert store.count() == 1200 and len({r["pid"] for r in store.iter()}) == 3


WRITER = """
import sys
from neighbor_lt.retrieval.records_store import RecordStore
store = RecordStore(sys.argv[1], batch_size=25, commit_seconds=3600)
for i in range(int(sys.argv[2])):
    store.put({"key": f"k{i}", "outcome": "ok", "pad": "x" * 2000, "i": i})
    if i == 500:
        print("written", flush=True)
        sys.stdin.readline()  # held here until killed
store.close()
"""


def test_kill_9_loses_only_the_open_batch_and_a_rerun_completes(tmp_path):
    path = str(tmp_path / "s.sqlite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", WRITER, path, "2000"]
    child = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    child.wait()
    with RecordStore(path) as store:
        records = list(store.iter())
    assert len(records) == 500  # 20 committed batches of 25; record 500 was in the open batch
    assert all(r["pad"] == "x" * 2000 for r in records) and [r["i"] for r in records] == list(range(500))
    subprocess.run(
        command, env=env, input="\n", text=True, check=True, capture_output=True
    )  # the rerun writes every key
    with RecordStore(path) as store:
        assert store.count() == 2000 and sorted(r["i"] for r in store.iter()) == list(range(2000))


def test_a_jsonl_log_is_migrated_once_and_kept(tmp_path, caplog):
    legacy = tmp_path / "downloads.jsonl"
    lines = [{"key": "a", "outcome": "timeout"}, {"key": "b", "outcome": "ok"}, {"key": "a", "outcome": "ok"}]
    legacy.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"key": "c", "outc')  # a torn last line
    path = str(tmp_path / "downloads.sqlite")
    with caplog.at_level(logging.INFO, logger="neighbor_lt.retrieval.records_store"):
        with RecordStore(path, legacy_jsonl=str(legacy)) as store:
            assert store.count_by("outcome") == {"ok": 2} and [r["key"] for r in store.iter()] == ["b", "a"]
    migrated = [r.getMessage() for r in caplog.records if "migrated into" in r.getMessage()]
    assert len(migrated) == 1 and str(legacy) in migrated[0]
    assert not legacy.exists() and (tmp_path / "downloads.jsonl.migrated").read_text().count("\n") == 3
    caplog.clear()
    with RecordStore(path, legacy_jsonl=str(legacy)) as store:
        assert store.count() == 2
    assert not [r for r in caplog.records if "migrated into" in r.getMessage()]


def test_bad_column_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be a column name"):
        RecordStore(str(tmp_path / "s.sqlite"), columns=("outcome; DROP TABLE records",))


def _open_and_count(path: str, legacy: str, counts) -> None:
    with RecordStore(path, legacy_jsonl=legacy) as store:
        counts.put(store.count())


def test_processes_opening_a_store_at_once_migrate_its_jsonl_once(tmp_path):
    legacy = tmp_path / "downloads.jsonl"
    legacy.write_text("".join(json.dumps({"key": f"k{i}", "outcome": "ok"}) + "\n" for i in range(20_000)))
    context = multiprocessing.get_context("spawn")
    counts = context.Queue()
    args = (str(tmp_path / "downloads.sqlite"), str(legacy), counts)
    workers = [context.Process(target=_open_and_count, args=args) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert [counts.get() for _ in workers] == [20_000] * 3  # none saw a partial import
    assert not legacy.exists() and (tmp_path / "downloads.jsonl.migrated").exists()
