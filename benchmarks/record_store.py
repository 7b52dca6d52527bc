"""The retrieve stage's records at scale: the record store's write and read rates, and the downloader's memory on
resume as the record count grows.

For each size N, in fresh processes: N synthetic download records (80% ``ok`` with hashes, 20% ``http_error``) are
written into ``downloads.sqlite`` with ``RecordStore.put_many`` and read back in chunks (``iter_downloads``); then
``Downloader.run`` is given the same N candidates as a generator (all already recorded: the resume path reads the
store in chunks, indexes the ``ok`` hashes for dedup, checks each chunk of candidates against the store and counts
the summary) and its peak RSS is taken. What may grow with N is the dedup index (SHA-256 and perceptual hash of every
stored image, a few hundred bytes each); the records themselves are never all in memory.

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


def measure(n: int) -> dict:
    folder = tempfile.mkdtemp(prefix="record_store_")
    try:
        row = {"records": n}
        for step in ("build", "resume"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", step, str(n), folder], capture_output=True, text=True, check=True
            )
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        assert row["total"] == n, row
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.child:
        step, n, folder = args.child
        print(json.dumps((child_build if step == "build" else child_resume)(int(n), folder)))
        return
    rows = [measure(n) for n in args.sizes]
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
    report = "\n".join(lines)
    print(report)
    machine = machine_line(load=os.getloadavg()[0], torch_version=False)
    record_benchmark(args, RESULTS, "Record store and resume memory", "benchmarks/record_store.py", machine, report)


if __name__ == "__main__":
    main()
