"""Download throughput: our downloader against img2dataset on one URL list, served by a loopback server.

Usage:
    python benchmarks/download.py                       # 5,000 JPEGs, 20 ms latency, 2% HTTP 500, 32 in flight
    python benchmarks/download.py --rounds 3 --concurrency 64 --machine_note "shared with 2 training jobs"

The server is an aiohttp application in its own process, bound to 127.0.0.1 only. It serves real Tiny-ImageNet
JPEGs (64x64, ~2 KB each) from the shared Parquet data at ``/img/<i>.jpg``, sleeps ``--latency`` before every
answer, and answers HTTP 500 to a seeded ``--error-rate`` share of requests: request ``n`` of a path fails when
``sha256(seed:path:n) < error_rate``, so every run (its counters are reset before each run) sees the same failures
whatever the arrival order, and a retry draws afresh. ``/robots.txt`` allows everything.

Both downloaders get the same URL list, the same number of requests in flight (``--concurrency``: our
``num_workers`` and ``max_connections_per_host``, shared out over its download processes, by default one per core;
img2dataset's ``thread_count`` in one worker process) and the same retries (``--retries``). Ours keeps every guard on (address guard allowing only 127.0.0.1/32, size limits, decode
check, decompression-bomb guard, robots.txt, X-Robots-Tag, SHA-256 and perceptual-hash dedup); only its per-host
request-rate limit is off (``requests_per_second_per_host=0``) and its retry backoff is ``--backoff-base`` instead
of the polite 1 s default, since img2dataset has neither. img2dataset runs as our hand-off docs configure it
(``resize_mode="no"``, ``disable_all_reencoding=True``) with its X-Robots-Tag check on, ``max_image_area`` and
``min_image_size`` set like our guards, EXIF extraction off (we do not read EXIF).

The runs alternate (ours, ours in one process, img2dataset, ...); each starts from an empty output folder and the figures are
medians over ``--rounds``. Wall time counts from the call to its return (img2dataset's includes starting its
worker process, ours starting its download processes). "ours (one process)" is our downloader with
``num_processes=1``, all its threads in the calling process. A raw aiohttp client that only fetches bytes gives the server's ceiling on this machine, to show
the server is not the bottleneck. Results are appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from neighbor_lt.results_md import add_results_arguments, machine_line, record_benchmark

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which would check PyPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "tiny-imagenet-200")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
HOST = "127.0.0.1"  # the only address this benchmark binds to or contacts


def load_jpegs(n: int) -> list[bytes]:
    """``n`` JPEGs spread over the shared training shards (every k-th row, in order)."""
    import pyarrow.parquet as pq

    paths = sorted(os.path.join(DATA, f) for f in os.listdir(DATA) if f.startswith("train-"))
    per_shard = -(-n // len(paths))
    out = []
    for path in paths:
        column = pq.read_table(path, columns=["image"]).column("image")
        step = max(1, len(column) // per_shard)
        out += [column[i].as_py()["bytes"] for i in range(0, len(column), step)][:per_shard]
    return out[:n]


# ---- the server (its own process) -------------------------------------------------------------------------------
def serve(args) -> None:
    """aiohttp server on 127.0.0.1: writes its port to ``args.serve`` and runs until killed."""
    import asyncio

    from aiohttp import web

    jpegs = load_jpegs(args.num_images)
    threshold = int(args.error_rate * 2**64)
    counts: dict[str, int] = {}
    stats = {"requests": 0, "errors": 0, "images": 0}

    def fails(path: str) -> bool:
        n = counts[path] = counts.get(path, 0) + 1
        digest = hashlib.sha256(f"{args.seed}:{path}:{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < threshold

    async def image(request):
        stats["requests"] += 1
        await asyncio.sleep(args.latency)
        if fails(request.path):
            stats["errors"] += 1
            return web.Response(status=500, text="injected error")
        index = int(request.match_info["index"])
        if index >= len(jpegs):
            return web.Response(status=404)
        stats["images"] += 1
        return web.Response(body=jpegs[index], content_type="image/jpeg")

    async def robots(request):
        stats["requests"] += 1
        return web.Response(text="User-agent: *\nAllow: /\n")

    async def reset(request):
        counts.clear()
        body = json.dumps(stats)
        stats.update(requests=0, errors=0, images=0)
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.add_routes(
        [web.get(r"/img/{index:\d+}.jpg", image), web.get("/robots.txt", robots), web.get("/__reset", reset)]
    )

    run_app(app, args.serve)


def run_app(app, port_file: str) -> None:
    """Serve the aiohttp ``app`` on 127.0.0.1, on a free port written to ``port_file``, until killed."""
    import asyncio

    from aiohttp import web

    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(port_file + ".tmp", port_file)
        await asyncio.Event().wait()

    try:
        import uvloop  # noqa: F401  # faster when installed; plain asyncio otherwise

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def start_server(args, workdir):
    port_file = os.path.join(workdir, "port")
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", port_file, "--num-images", str(args.num_images),
           "--latency", str(args.latency), "--error-rate", str(args.error_rate), "--seed", str(args.seed)]  # fmt: skip
    return start_process(cmd, port_file)


def start_process(cmd: list[str], port_file: str, timeout: float = 120) -> tuple[subprocess.Popen, int]:
    """Start a server process (:func:`run_app`) and wait for the port it writes to ``port_file``."""
    process = subprocess.Popen(cmd)
    deadline = time.monotonic() + timeout
    while not os.path.exists(port_file):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the benchmark server did not start")
        time.sleep(0.1)
    with open(port_file) as f:
        return process, int(f.read())


def reset_server(port: int) -> dict:
    """Clear the server's per-path counters (same injected failures every run); returns the last run's stats."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/__reset", timeout=10) as r:
        return json.loads(r.read())


# ---- the contenders ---------------------------------------------------------------------------------------------
def run_ours(urls, out, args, processes=None) -> dict:
    from neighbor_lt.retrieval import Candidate, DownloadConfig, Downloader

    config = DownloadConfig(
        num_processes=args.processes if processes is None else processes,
        num_workers=args.concurrency,
        max_connections_per_host=args.concurrency,
        requests_per_second_per_host=0,
        max_retries=args.retries,
        backoff_base=args.backoff_base,
        allowed_networks=[f"{HOST}/32"],
    )
    candidates = [Candidate("bench", url, rank=i) for i, url in enumerate(urls)]
    start, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    downloader = Downloader(out, config)
    summary = downloader.run(candidates, desc="ours")
    downloader.close()
    # the download processes' CPU counts once they are joined, which run() does before it returns
    seconds, cpu = time.perf_counter() - start, time.process_time() + _children_cpu() - cpu
    # a duplicate was fetched and decoded fine; dedup only declined to store it again
    return {"seconds": seconds, "cpu_seconds": cpu, "fetched": summary["ok"] + summary["duplicate"], "stored": summary["ok"],
            "outcomes": {k: v for k, v in summary.items() if v and k != "total"}}  # fmt: skip


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (img2dataset's workers, once it has joined them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_img2dataset(urls, out, args, decode=False) -> dict:
    """``decode=False``: our hand-off settings (bytes kept as served, never decoded, so ``min_image_size`` and
    ``max_image_area`` are not checked); ``decode=True``: OpenCV decodes each image to check them (bytes still kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from img2dataset import download

    url_list = out + "_urls.parquet"
    pq.write_table(pa.table({"url": urls}), url_list)
    start, cpu = time.perf_counter(), _children_cpu()
    download(
        url_list=url_list, output_folder=out, input_format="parquet", url_col="url", output_format="files",
        processes_count=1, thread_count=args.concurrency, number_sample_per_shard=len(urls), retries=args.retries,
        timeout=10, resize_mode="no", disable_all_reencoding=not decode, skip_reencode=True, extract_exif=False,
        min_image_size=16,
        max_image_area=40_000_000, distributor="multiprocessing",
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    fetched, errors, starts, ends = 0, {}, [], []
    for name in os.listdir(out):
        if name.endswith("_stats.json"):
            with open(os.path.join(out, name)) as f:
                stats = json.load(f)
            fetched += stats["successes"]
            starts.append(stats["start_time"])
            ends.append(stats["end_time"])
            for message, count in stats.get("status_dict", {}).items():
                if message != "success":
                    errors[message[:60]] = errors.get(message[:60], 0) + count
    # its own clock: from its worker's first download to the shard written, without starting processes
    shard_seconds = max(ends) - min(starts)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "shard_seconds": shard_seconds,
        "fetched": fetched,
        "stored": fetched,
        "outcomes": errors,
    }


CONTENDERS = {
    "ours": run_ours,
    "ours (one process)": lambda urls, out, args: run_ours(urls, out, args, processes=1),
    "img2dataset (hand-off settings)": run_img2dataset,
    "img2dataset (decoding)": lambda urls, out, args: run_img2dataset(urls, out, args, decode=True),
}


def server_ceiling(urls, args) -> float:
    """Requests/s a bare asyncio client gets from the server (bytes only, no retries, same concurrency)."""
    import asyncio

    import aiohttp

    async def main():
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            queue = list(urls)

            async def worker():
                while queue:
                    async with session.get(queue.pop()) as response:
                        await response.read()

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            return len(urls) / (time.perf_counter() - start)

    return asyncio.run(main())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every image request")
    parser.add_argument("--error-rate", type=float, default=0.02, help="share of requests answered with HTTP 500")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight, for both downloaders")
    parser.add_argument("--retries", type=int, default=3, help="retries after a failed request, for both")
    parser.add_argument("--backoff-base", type=float, default=0.05, help="our first retry's backoff (seconds)")
    parser.add_argument("--processes", type=int, default=0, help="our num_processes (0: its default, per core)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each downloader")
    parser.add_argument("--only", choices=list(CONTENDERS), default=None, help="run one (for profiling)")
    add_results_arguments(parser)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: run the server
    args = parser.parse_args()
    if args.serve:
        return serve(args)

    workdir = tempfile.mkdtemp(prefix="download_bench_")
    server, port = start_server(args, workdir)
    try:
        urls = [f"http://{HOST}:{port}/img/{i}.jpg" for i in range(args.num_images)]
        reset_server(port)
        ceiling = server_ceiling(urls, args)
        print(f"server ceiling: {ceiling:.0f} requests/s", flush=True)
        runs = {name: [] for name in CONTENDERS if not args.only or name == args.only}
        load_before = os.getloadavg()[0]
        for r in range(args.rounds):
            for name in runs:
                reset_server(port)
                out = os.path.join(workdir, f"{name.split()[0]}_{r}_{len(runs[name])}")
                result = CONTENDERS[name](urls, out, args)
                result["server"] = reset_server(port)
                shutil.rmtree(out, ignore_errors=True)
                result["rate"] = result["fetched"] / result["seconds"]
                runs[name].append(result)
                print(json.dumps({"run": name, "round": r, **result}), flush=True)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.only:
        return

    def median(results, key):
        return statistics.median(key(r) for r in results)

    load = os.getloadavg()[0]
    lines = [
        f"{args.num_images:,} Tiny-ImageNet JPEGs from an aiohttp server in its own process on {HOST}, "
        f"{1000 * args.latency:g} ms added latency, {100 * args.error_rate:g}% HTTP 500 (seeded); "
        f"{args.concurrency} requests in flight and {args.retries} retries for each; medians of {args.rounds} "
        f"alternating rounds. Server ceiling (bare aiohttp client, same concurrency): {ceiling:.0f} requests/s.",
        "",
        f"Settings: ours `DownloadConfig(num_processes={args.processes}, num_workers={args.concurrency}, "
        f"max_connections_per_host={args.concurrency}, "
        f"requests_per_second_per_host=0, max_retries={args.retries}, backoff_base={args.backoff_base}, "
        "allowed_networks=['127.0.0.1/32'])`, every other field at its default (size limits, decode check, "
        "decompression-bomb guard, robots.txt, X-Robots-Tag, SHA-256 + perceptual-hash dedup all on); img2dataset "
        f"`processes_count=1, thread_count={args.concurrency}, retries={args.retries}, timeout=10, resize_mode='no', "
        "skip_reencode=True, extract_exif=False, min_image_size=16, max_image_area=40e6`, X-Robots-Tag check on "
        "(its default), with `disable_all_reencoding=True` (hand-off settings: never decodes, so its size checks do "
        "not run) or False (decoding: OpenCV decodes to check them). Every run starts from an empty folder; wall "
        "time excludes the calling process's imports and includes starting worker processes (img2dataset's one, "
        "ours' download processes); CPU counts the workers once they have ended.",
        "",
        "| downloader | images/s (wall) | images/s (img2dataset's own shard clock) | success rate | wall s "
        "| CPU ms / image | requests served | per-round images/s (wall) | outcomes (last run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rates = {}
    for name, results in runs.items():
        rates[name] = median(results, lambda r: r["rate"])
        shard = (
            f"{median(results, lambda r: r['fetched'] / r['shard_seconds']):.0f}"
            if "shard_seconds" in results[0]
            else "-"
        )
        outcomes = ", ".join(f"{k}: {v}" for k, v in results[-1]["outcomes"].items()) or "-"
        per_round = ", ".join(f"{r['rate']:.0f}" for r in results)
        lines.append(
            f"| {name} | {rates[name]:.0f} | {shard} | {100 * median(results, lambda r: r['fetched']) / args.num_images:.2f}% "
            f"| {median(results, lambda r: r['seconds']):.1f} "
            f"| {1000 * median(results, lambda r: r['cpu_seconds'] / args.num_images):.2f} "
            f"| {median(results, lambda r: r['server']['requests']):.0f} "
            f"| {per_round} | {outcomes} |"
        )
    reference = "img2dataset (hand-off settings)"
    ratio = rates["ours"] / rates[reference]
    shard_rate = median(runs[reference], lambda r: r["fetched"] / r["shard_seconds"])
    verdict = "met" if ratio >= 1.0 else "NOT met"
    lines += [
        "",
        f"Target (ours at least img2dataset's images/s, end to end): {verdict} (ours / img2dataset = {ratio:.2f}x; "
        f"against img2dataset's own shard clock, which leaves out its process start-up: "
        f"{rates['ours'] / shard_rate:.2f}x). Load average {load_before:.1f} before, {load:.1f} after.",
    ]
    report = "\n".join(lines)
    print(report)
    machine = machine_line("cpu", load=load, torch_version=False)
    if record_benchmark(args, RESULTS, "Download throughput", "benchmarks/download.py", machine, report):
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
