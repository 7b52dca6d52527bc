"""The retrieve stage's records at scale: the record store's write and read rates, and the downloader's memory on
resume as the record count grows.

For each size N, in fresh processes: N synthetic download records (80% ``ok`` with hashes, 20% ``http_error``) are
written into ``downloads.sqlite`` with ``RecordStore.put_many`` and read back in chunks (``iter_downloads``); then
``Downloader.run`` is given the same N candidates as a generator (all already recorded: the resume path reads the
store in chunks, indexes the ``ok`` hashes for dedup, checks each chunk of candidates against the store and counts
the summary) and its peak RSS is taken. What may grow with N is the dedup index (SHA-256 and perceptual hash of every
stored image, a few hundred bytes each); the records themselves are never all in memory.

Then the keyed work of the curate stages, in CPU time per record (what must stay flat as N grows): the
downloader's commit (``put`` one record at a time, after ``first(source_url=...)``, the same-URL check, in curate's
order: class after class, URLs and image paths in no order), and the filter's score store (``put_many`` one shard of
2,048 small records at a time, then ``get_many`` over every key in chunks of 10,000, as the decisions read it).

Example:
    python benchmarks/record_store.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neighbor_lt.results_md import add_results_arguments, machine_line, record_benchmark

RESULTS = str(Path(__file__).with_name("RESULTS.md"))


def _url(i: int) -> str:
    return f"https://h{i % 97}.example.org/img/{i}.jpg"


def _record(i: int) -> dict:
    name = f"class{i % 1000}"
    ok = bool(i % 5)
    return {
        "key": f"{name}\t{_url(i)}", "aux_name": name, "neighbor_of": ["target"], "query": name,
        "source_url": _url(i), "page_url": "", "caption": f"a photo of {name}", "rank": i,
        "outcome": "ok" if ok else "http_error", "status": 200 if ok else 404, "seconds": 0.01,
        **({"sha256": f"{i:064x}", "phash": f"{i * 2654435761 % 2**64:016x}", "width": 64, "height": 64,
            "bytes": 2000, "path": f"images/{i % 256:02x}/{i:064x}.jpg"} if ok else {}),
    }  # fmt: skip


def child_build(n: int, folder: str) -> dict:
    """Write ``n`` records, then read the ``ok`` ones back in chunks."""
    from neighbor_lt.retrieval.download import iter_downloads, open_downloads

    start = time.perf_counter()
    with open_downloads(folder, batch_size=5000) as store:
        store.put_many(_record(i) for i in range(n))
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    read = sum(len(chunk) for chunk in iter_downloads(folder))
    read_s = time.perf_counter() - start
    return {"write_per_s": n / write_s, "read_per_s": read / read_s, "ok": read}


def _keyed_record(i: int, n: int) -> dict:
    """Record ``i`` of ``n`` in curate's order: 1,000 classes one after the other, a URL number and an image path
    (a SHA-256) that follow no order."""
    import hashlib

    name = f"class{i * 1000 // n:04d}"
    url = f"http://127.0.0.1:8000/img/{(i * 7919) % n}.jpg"
    sha = hashlib.sha256(str(i).encode()).hexdigest()
    return {"key": f"{name}\t{url}", "aux_name": name, "neighbor_of": ["target"], "query": name, "source_url": url,
            "caption": f"a photo of {name}", "rank": i, "outcome": "ok", "status": 200, "sha256": sha,
            "phash": sha[:16], "width": 64, "height": 64, "bytes": 2000, "path": f"images/{sha[:2]}/{sha}.jpg"}  # fmt: skip


def child_keyed(n: int, folder: str) -> dict:
    """CPU seconds of the downloader's commits and of the score store's writes and reads, over ``n`` records."""
    from neighbor_lt.retrieval.download import open_downloads
    from neighbor_lt.retrieval.records_store import RecordStore

    folder = os.path.join(folder, "keyed")
    start = time.process_time()
    with open_downloads(folder) as store:
        for i in range(n):
            record = _keyed_record(i, n)
            store.first(source_url=record["source_url"])  # Downloader.url_result, before the fetch
            store.put(record)
    commit_s = time.process_time() - start
    keys = [_keyed_record(i, n)["key"] for i in range(n)]
    start = time.process_time()
    with RecordStore(os.path.join(folder, "scores.sqlite"), columns=(), batch_size=2048) as scores:
        for at in range(0, n, 2048):
            scores.put_many({"key": k, "similarity": 0.5, "parent": "target", "caption_ok": True,
                             "targets": ["target"]} for k in keys[at : at + 2048])  # fmt: skip
        write_s = time.process_time() - start
        start = time.process_time()
        found = sum(len(scores.get_many(keys[at : at + 10_000])) for at in range(0, n, 10_000))
        read_s = time.process_time() - start
    assert found == n, (found, n)
    return {"commit_cpu_us": 1e6 * commit_s / n, "scores_write_cpu_us": 1e6 * write_s / n,
            "scores_read_cpu_us": 1e6 * read_s / n}  # fmt: skip


def child_resume(n: int, folder: str) -> dict:
    """``Downloader.run`` over the ``n`` recorded candidates, streamed: peak RSS and wall time."""
    from neighbor_lt.retrieval import Candidate, DownloadConfig, Downloader

    def candidates():
        for i in range(n):
            yield Candidate(f"class{i % 1000}", _url(i), aux_name=f"class{i % 1000}")

    start = time.perf_counter()
    summary = Downloader(folder, DownloadConfig(num_workers=1)).run(candidates())
    return {
        "resume_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total": summary["total"],
    }


STEPS = ("build", "resume", "keyed")


def measure(n: int, steps=STEPS) -> dict:
    folder = tempfile.mkdtemp(prefix="record_store_")
    try:
        row = {"records": n}
        for step in steps:
            done = subprocess.run(
                [sys.executable, __file__, "--child", step, str(n), folder], capture_output=True, text=True, check=True
            )
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        assert row.get("total", n) == n, row
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="what to measure")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.child:
        step, n, folder = args.child
        steps = {"build": child_build, "resume": child_resume, "keyed": child_keyed}
        print(json.dumps(steps[step](int(n), folder)))
        return
    rows = [measure(n, args.steps) for n in args.sizes]
    lines = []
    if "build" in args.steps and "resume" in args.steps:
        lines += table_resume(rows)
    if "keyed" in args.steps:
        lines += table_keyed(rows)
    report = "\n".join(lines).strip()
    print(report)
    machine = machine_line(load=os.getloadavg()[0], torch_version=False)
    record_benchmark(args, RESULTS, "Record store and resume memory", "benchmarks/record_store.py", machine, report)


def table_resume(rows: list[dict]) -> list[str]:
    lines = [
        "| records | written / s | ok read / s | resume wall (s) | resume peak RSS (MB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['records']:,} | {r['write_per_s']:,.0f} | {r['read_per_s']:,.0f} | {r['resume_s']:.1f} | "
        f"{r['peak_rss_mb']:.0f} |"
        for r in rows
    ]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = (last["peak_rss_mb"] - first["peak_rss_mb"]) * 2**20 / (last["ok"] - first["ok"])
        lines.append(
            f"\nPeak RSS grows {growth:,.0f} bytes per stored (ok) image from {first['records']:,} to "
            f"{last['records']:,} records: the dedup index's hashes; the records are read in chunks."
        )
    return lines


def table_keyed(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "| records | downloader commit: first(source_url) + put (CPU us / record) | score store put_many "
        "(CPU us / record) | score store get_many (CPU us / record) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['records']:,} | {r['commit_cpu_us']:.1f} | {r['scores_write_cpu_us']:.1f} | "
        f"{r['scores_read_cpu_us']:.1f} |"
        for r in rows
    ]
    return lines


if __name__ == "__main__":
    main()
