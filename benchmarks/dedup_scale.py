"""Near-duplicate and leak checks at scale: the product's multi-index against the brute-force scan.

Times, on synthetic 64-bit perceptual hashes (uniform random, a share of them planted near copies of earlier ones):

- download dedup: ``DedupIndex.claim`` for every image (``phash_distance`` > 0), and per query at the full kept set,
  its ``HammingIndex`` against the scan of every kept hash (``min_hamming``, the numpy scan, faster than the
  per-hash Python loop it replaced);
- leak check: ``leak_phash_distances`` (a ``HammingTable`` over the evaluation hashes) for every candidate, against
  the scan of every evaluation hash (on a sample of candidates at the brute-force sizes, scaled up).

The machine is shared: the load average is recorded, and the ratios within one run are the figures to compare.

Example:
    python benchmarks/dedup_scale.py --sizes 100000 1000000 --brute_sizes 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from neighbor_lt.results_md import add_results_arguments, record_benchmark
from neighbor_lt.retrieval.download import DedupIndex
from neighbor_lt.retrieval.filters import leak_phash_distances
from neighbor_lt.retrieval.hamming import HammingIndex, min_hamming

RESULTS = str(Path(__file__).with_name("RESULTS.md"))


def synthetic_hashes(n: int, near_share: float, radius: int, seed: int) -> np.ndarray:
    """``n`` uint64 hashes; ``near_share`` of them are an earlier hash with 0..radius bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    near = np.flatnonzero(rng.random(n) < near_share)
    near = near[near > 0]
    sources = (rng.random(len(near)) * near).astype(np.int64)  # an earlier hash each
    flips = np.zeros(len(near), np.uint64)
    for _ in range(radius):
        flip = rng.random(len(near)) < 0.5
        flips[flip] |= np.uint64(1) << rng.integers(0, 64, size=int(flip.sum())).astype(np.uint64)
    hashes[near] = hashes[sources] ^ flips  # sources may be near copies themselves: clusters, as real photos
    return hashes


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _cpu_timed(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def stored_hashes(path: str) -> list[tuple[str, str, str]]:
    """``(key, sha256, phash)`` of every fetched image of a run's ``downloads.sqlite``, in download order."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT key, json_extract(record, '$.sha256'), json_extract(record, '$.phash') FROM records "
            "WHERE json_extract(record, '$.phash') IS NOT NULL ORDER BY rowid"
        ).fetchall()
    return rows


def bench_replay(path: str, radius: int) -> dict:
    """``DedupIndex.claim`` over the perceptual hashes a curate run fetched (real pictures' hashes cluster)."""
    rows = stored_hashes(path)
    index = DedupIndex(phash_distance=radius)
    seconds, firsts = _cpu_timed(lambda: [index.claim(k, s, p) for k, s, p in rows])
    return {"source": path, "n": len(rows), "claim_cpu_us": 1e6 * seconds / max(1, len(rows)),
            "duplicates": sum(f is not None for f in firsts)}  # fmt: skip


def bench_dedup(n: int, radius: int, brute: bool, seed: int, probes: int) -> dict:
    hashes = synthetic_hashes(n, 0.1, radius, seed)
    hexes = [f"{int(h):016x}" for h in hashes]
    index = DedupIndex(phash_distance=radius)
    seconds, firsts = _cpu_timed(lambda: [index.claim(f"k{i}", f"sha{i}", h) for i, h in enumerate(hexes)])
    result = {"n": n, "claim_all_s": seconds, "claim_cpu_us": 1e6 * seconds / n,
              "duplicates": sum(f is not None for f in firsts)}  # fmt: skip
    kept = np.array(sorted({int(h, 16) for h, f in zip(hexes, firsts) if f is None}), dtype=np.uint64)
    probe = synthetic_hashes(probes, 0.0, radius, seed + 1)
    table = HammingIndex(radius)
    for value in kept.tolist():
        table.add(value)
    index_s, _ = _timed(lambda: [table.first_within(int(v)) for v in probe])
    result.update(kept=len(kept), index_query_us=1e6 * index_s / probes)
    if brute:
        scan_s, _ = _timed(lambda: min_hamming(probe, kept))
        result["scan_query_us"] = 1e6 * scan_s / probes
    return result


def bench_leak(n: int, eval_size: int, radius: int, brute: bool, seed: int, sample: int) -> dict:
    evals = synthetic_hashes(eval_size, 0.0, radius, seed + 2)
    rng = np.random.default_rng(seed + 3)
    candidates = synthetic_hashes(n, 0.0, radius, seed + 4)
    planted = rng.random(n) < 0.01  # 1% of candidates copy an evaluation image (0 bits flipped: exact leaks)
    candidates[planted] = evals[rng.integers(0, eval_size, int(planted.sum()))]
    items = [{"phash": f"{int(h):016x}"} for h in candidates]
    seconds, distances = _timed(lambda: leak_phash_distances(items, evals, radius))
    result = {"n": n, "eval": eval_size, "index_s": seconds, "leaks": sum(d is not None for d in distances)}
    if brute:
        take = min(sample, n)
        scan_s, _ = _timed(lambda: min_hamming(candidates[:take], evals))
        result["scan_s"] = scan_s * n / take
        result["scan_sample"] = take
    return result


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, numpy {np.__version__}, Python {platform.python_version()}"


def _report(dedup: list[dict], leak: list[dict], args, loads: tuple, replays: list[dict] = ()) -> str:
    lines = [
        f"Synthetic 64-bit hashes (uniform; dedup: 10% planted near copies within {args.radius} bits; leak: 1% "
        f"exact copies of evaluation hashes), radius {args.radius} (phash_distance / leak_phash_distance). "
        f"Load average before / after: {loads[0]:.1f} / {loads[1]:.1f}. Peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB.",
        "",
        "| download dedup | claims | kept | all claims, index (CPU s) | CPU us per claim | per query at the kept "
        "set: index (us) | scan (us) | scan / index |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in dedup:
        scan = r.get("scan_query_us")
        ratio = f"{scan / r['index_query_us']:,.0f}x" if scan else "-"
        lines.append(
            f"| DedupIndex.claim | {r['n']:,} | {r['kept']:,} | {r['claim_all_s']:.1f} | {r['claim_cpu_us']:.1f} | "
            f"{r['index_query_us']:.1f} | {f'{scan:,.0f}' if scan else '-'} | {ratio} |"
        )
    if replays:
        lines += [
            "",
            "| replayed run (downloads.sqlite) | claims | duplicates | CPU us per claim |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {r['source']} | {r['n']:,} | {r['duplicates']:,} | {r['claim_cpu_us']:.1f} |" for r in replays]
    lines += [
        "",
        "| leak check | candidates | evaluation hashes | index (s) | scan (s) | scan / index | leaks found |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in leak:
        scan = r.get("scan_s")
        scan_cell = f"{scan:.1f} (from {r['scan_sample']:,})" if scan else "-"
        ratio = f"{scan / r['index_s']:,.0f}x" if scan else "-"
        lines.append(
            f"| leak_phash_distances | {r['n']:,} | {r['eval']:,} | {r['index_s']:.2f} | {scan_cell} | {ratio} | "
            f"{r['leaks']:,} |"
        )
    lines += [
        "",
        "Uniform hashes are the index's good case (few candidates per band); real perceptual hashes cluster "
        "(flat or similar pictures), which adds candidates, never misses (the pigeonhole bound is exact).",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--brute_sizes", type=int, nargs="*", default=[100_000], help="sizes also timed by scan")
    parser.add_argument("--radius", type=int, default=4)
    parser.add_argument("--eval_size", type=int, default=70_000, help="evaluation hashes (ImageNet-LT val + test)")
    parser.add_argument("--probes", type=int, default=2000, help="queries timed per dedup size")
    parser.add_argument("--scan_sample", type=int, default=20_000, help="candidates scanned for the leak scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--replay",
        nargs="*",
        default=[],
        help="downloads.sqlite files of curate runs (curate_scale.py --keep) whose hashes are replayed",
    )
    add_results_arguments(parser)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    dedup, leak = [], []
    for n in args.sizes:
        brute = n in args.brute_sizes
        dedup.append(bench_dedup(n, args.radius, brute, args.seed, args.probes))
        print(dedup[-1], flush=True)
        leak.append(bench_leak(n, args.eval_size, args.radius, brute, args.seed, args.scan_sample))
        print(leak[-1], flush=True)
    replays = [bench_replay(path, args.radius) for path in args.replay]
    for r in replays:
        print(r, flush=True)
    report = _report(dedup, leak, args, (load_before, os.getloadavg()[0]), replays)
    print(report)
    title = "Near-duplicate and leak checks: multi-index vs scan"
    record_benchmark(args, RESULTS, title, "benchmarks/dedup_scale.py", _machine(), report, argv)


if __name__ == "__main__":
    main()
