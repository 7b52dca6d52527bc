"""Curation at scale: retrieve -> filter -> build on N synthetic candidates served by a loopback image server.

Usage:
    nice -n 10 python benchmarks/curate_scale.py --sizes 100000 1000000 --machine_note "shared with 1 training job"

Each size is a whole curation run through the product's command line (``neighbor_lt.curate.main``, what
``neighbor-lt curate`` runs), one stage per child process, on inputs a user at scale would have:

- a neighbor manifest (written with ``neighbors.manifest.save_manifest``) of ``--classes`` auxiliary classes, each a
  WordNet noun lemma and a neighbor of one of the 200 Tiny-ImageNet classes (the target set: Tiny-ImageNet-LT, 200
  classes, 100 to 1 training images, the 10,000 validation images as the evaluation set of the leak check);
- LAION-like caption metadata (one Parquet file, N rows, N / classes per class): the ``captions`` search backend
  finds every class in one pass; every URL points at the loopback server;
- the server (aiohttp, its own process, 127.0.0.1 only) answers ``/img/<i>.jpg`` with a distinct 64x64 JPEG made on
  the fly: a mosaic of four Tiny-ImageNet training images chosen by a hash of i (perceptual hashes differ),
  except for planted cases: ``--dup_rate`` of the URLs serve the bytes of URL i-1 (SHA-256 duplicate), as many serve
  URL i-1 re-encoded at a lower quality (a perceptual-hash near-duplicate) and ``--leak_rate`` serve a target
  validation image (a leak the filter must drop);
- the filter embeds with a tiny random DINOv2 built from a config and saved to a folder, and checks leaks by
  perceptual hash (distance 4) and embedding; the downloader's near-duplicate distance is ``phash_distance`` 4.

Per stage: wall time (the ``curate.main`` call inside the child; the child's whole life, imports included, is
``process_s``), peak resident memory of the stage's process tree (RSS of the child and its download / filter
processes summed, sampled every 0.25 s; shared pages count once per process, so it is an upper bound) and of its
largest single process (``ru_maxrss``), images per second (retrieve: candidates; filter: images scored; build: images
written), and the time of the near-duplicate and leak checks where the stages record one (``timings_s`` in their
summaries); where they do not, the product's ``DedupIndex`` and ``leak_phash_distances`` are replayed on the run's own
hashes and labelled so. The load average is recorded before and after every stage.

Results: one entry per size in benchmarks/results/curate_scale.json (a size's entry is replaced when it is rerun, so a
long run can go one size per invocation), and a section in benchmarks/RESULTS.md per invocation with every size the
JSON holds and whether the targets are met: time at the largest size at most 12x the time at a size 10x smaller, for
every stage; peak RSS at the largest size under 3 GB; near-duplicate and leak checks under 10% of their stage's time.
Run folders live under benchmarks/.cache/curate_scale/ (a fresh one per size; ``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from neighbor_lt.neighbors.manifest import MANIFEST_NAME
from neighbor_lt.results_md import add_results_arguments, record_benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "tiny-imagenet-200")
CACHE = os.path.join(HERE, ".cache", "curate_scale")
RESULTS = os.path.join(HERE, "RESULTS.md")
JSON_PATH = os.path.join(HERE, "results", "curate_scale.json")
HOST = "127.0.0.1"  # the only address the server binds to and the stages fetch from
STAGES = ("retrieve", "filter", "build")
FILLER = "a the of photo image picture stock free new best close up view my our in on with and hd".split()
BASE_IMAGES, SIDE = 4000, 64


# ---- inputs ------------------------------------------------------------------------------------------------------
def aux_names(count: int, seed: int) -> list[str]:
    """``count`` one-word WordNet noun lemmas (no filler word): each caption names exactly one class."""
    from captions import wordnet_lemmas  # benchmarks/captions.py: the script's folder is on sys.path

    words = sorted({w for w in wordnet_lemmas() if " " not in w and 5 <= len(w) <= 12 and w not in FILLER})
    rng = np.random.default_rng(seed)
    return sorted(words[i] for i in rng.choice(len(words), size=count, replace=False))


def class_names() -> list[str]:
    """The Tiny-ImageNet class names (WordNet ids), the target classes."""
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(os.path.join(DATA, "valid-00000-of-00001.parquet")).metadata[b"huggingface"])
    return meta["info"]["features"]["label"]["names"]


def write_manifest(path: str, names: list[str], targets: list[str], seed: int) -> None:
    """A neighbor manifest: each auxiliary class a neighbor of one (sometimes two) target classes."""
    from neighbor_lt.neighbors.manifest import MANIFEST_VERSION, save_manifest

    rng = np.random.default_rng(seed)
    aux = []
    for name in names:
        parents = rng.choice(len(targets), size=1 + int(rng.random() < 0.2), replace=False)
        aux.append({"name": name, "neighbor_of": [targets[p] for p in parents]})
    manifest = {
        "version": MANIFEST_VERSION, "backend": "static", "created": None, "settings": {"benchmark": "curate_scale"},
        "targets": [{"index": i, "name": t, "query": t, "status": "ok"} for i, t in enumerate(targets)],
        "auxiliary": aux, "summary": {},
    }  # fmt: skip
    save_manifest(manifest, path)


def write_captions(path: str, n: int, names: list[str], port: int, seed: int) -> None:
    """N caption rows (url, caption, similarity, width, height), row i of class ``names[i % len(names)]``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng([seed, n])
    rows = np.arange(n)
    words = pa.array(FILLER)
    parts = [words.take(pa.array(rng.integers(0, len(FILLER), n))) for _ in range(2)]
    parts.insert(1, pa.array(names).take(pa.array(rows % len(names))))
    urls = pc.binary_join_element_wise(f"http://{HOST}:{port}/img/", pa.array(rows).cast(pa.string()), ".jpg", "")
    table = pa.table(
        {
            "url": urls,
            "caption": pc.binary_join_element_wise(*parts, " "),
            "similarity": pa.array(rng.random(n, dtype=np.float32) * 0.4),
            "width": pa.array(np.full(n, SIDE, np.int32)),
            "height": pa.array(np.full(n, SIDE, np.int32)),
        }
    )
    pq.write_table(table, path, row_group_size=128 * 1024)


def make_embedder(path: str) -> str:
    """A tiny random DINOv2 (built from a config) and its image processor, saved to ``path``."""
    if not os.path.exists(os.path.join(path, "config.json")):
        import torch
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        torch.manual_seed(0)
        config = Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8,
        )  # fmt: skip
        Dinov2Model(config).save_pretrained(path)
        BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def curate_yaml(run_dir: str, n: int, args) -> dict:
    """The curation configuration of one size (what a user writes as YAML)."""
    per_class = n // args.classes
    return {
        "output_dir": os.path.join(run_dir, "curate"),
        "stages": list(STAGES),
        "target": {
            "dataset_name": "parquet",
            "train_files": [os.path.join(DATA, "train-*.parquet")],
            "eval_files": [os.path.join(DATA, "valid-*.parquet")],
            "imbalance_factor": 100,
            "lt_max_per_class": 100,
        },
        "retrieve": {
            "backend": "captions",
            "backend_kwargs": {
                "data_files": os.path.join(run_dir, "captions.parquet"),
                "score_column": "similarity",
                "width_column": "width",
                "height_column": "height",
                "synonyms": False,
                "plurals": False,
            },  # fmt: skip
            "neighbor_manifest": os.path.join(run_dir, MANIFEST_NAME),
            "images_per_class": per_class,
            # one host serves every URL here, where the web has many: no per-host rate limit, every worker on it
            "download": {
                "num_workers": args.workers,
                "max_connections_per_host": args.workers,
                "requests_per_second_per_host": 0,
                "allowed_networks": [f"{HOST}/32"],
                "phash_distance": 4,
                "backoff_base": 0.05,
            },  # fmt: skip
        },
        "filter": {
            "model_name_or_path": make_embedder(os.path.join(CACHE, "tiny-dinov2")),
            "device": "cpu",
            "gamma_low": None,
            "gamma_high": None,
            "leak_similarity": 0.99999,  # a random model's embeddings are all alike: only near-copies count
            "leak_phash_distance": 4,
            "num_proc": args.filter_num_proc,
        },
        "build": {"max_images_per_class": per_class, "rows_per_shard": 5000},
    }


# ---- the image server (its own process) ---------------------------------------------------------------------------
def _unit(seed: int, i: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, i): which URLs are planted duplicates or leaks."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2**64


def planted(i: int, dup_rate: float, leak_rate: float, seed: int) -> str:
    """What URL i serves: ``image``, ``leak`` (a target validation image), ``duplicate`` (URL i-1's bytes) or
    ``near`` (URL i-1 re-encoded); a copy is planted only after a plain ``image``, so each copy has one original."""
    u = _unit(seed, i)
    if u < leak_rate:
        return "leak"
    if u >= leak_rate + 2 * dup_rate or i == 0 or _unit(seed, i - 1) < leak_rate + 2 * dup_rate:
        return "image"
    return "duplicate" if u < leak_rate + dup_rate else "near"


class Images:
    """Distinct small JPEGs by index: a 2x2 mosaic of Tiny-ImageNet training images (32x32 each), four of
    ``BASE_IMAGES`` chosen by a hash of the index; no two of 20,000 in a row are within 4 bits of perceptual hash."""

    def __init__(self):
        import pyarrow.parquet as pq
        from download import load_jpegs  # benchmarks/download.py
        from PIL import Image

        half = SIDE // 2
        self.tiles = np.stack(
            [
                np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((half, half)))
                for b in load_jpegs(BASE_IMAGES)
            ]
        )
        valid = pq.read_table(os.path.join(DATA, "valid-00000-of-00001.parquet"), columns=["image"])
        self.leaks = [row["bytes"] for row in valid.column("image").to_pylist()]

    def jpeg(self, i: int, quality: int = 90) -> bytes:
        from PIL import Image

        digest = hashlib.blake2b(str(i).encode(), digest_size=16).digest()
        a, b, c, d = (self.tiles[int.from_bytes(digest[k : k + 4], "big") % len(self.tiles)] for k in (0, 4, 8, 12))
        out = io.BytesIO()
        mosaic = np.concatenate([np.concatenate([a, b], 1), np.concatenate([c, d], 1)], 0)
        Image.fromarray(mosaic).save(out, "JPEG", quality=quality)
        return out.getvalue()

    def serve(self, i: int, dup_rate: float, leak_rate: float, seed: int) -> bytes:
        kind = planted(i, dup_rate, leak_rate, seed)
        if kind == "duplicate":
            return self.jpeg(i - 1)
        if kind == "near":
            return self.jpeg(i - 1, quality=70)
        if kind == "leak":
            return self.leaks[int(_unit(seed + 1, i) * len(self.leaks))]
        return self.jpeg(i)


def serve(args) -> None:
    """aiohttp server on 127.0.0.1: writes its port to ``args._serve`` and runs until killed."""
    from aiohttp import web
    from download import run_app

    images = Images()

    async def image(request):
        body = images.serve(int(request.match_info["index"]), args.dup_rate, args.leak_rate, args.seed)
        return web.Response(body=body, content_type="image/jpeg")

    async def robots(request):
        return web.Response(text="User-agent: *\nAllow: /\n")

    app = web.Application()
    app.add_routes([web.get(r"/img/{index:\d+}.jpg", image), web.get("/robots.txt", robots)])

    run_app(app, args._serve)


def start_server(args, run_dir: str) -> tuple[subprocess.Popen, int]:
    from download import start_process

    port_file = os.path.join(run_dir, "port")
    cmd = [sys.executable, os.path.abspath(__file__), "--_serve", port_file, "--seed", str(args.seed),
           "--dup_rate", str(args.dup_rate), "--leak_rate", str(args.leak_rate)]  # fmt: skip
    return start_process(cmd, port_file, timeout=300)  # the server decodes its 4,000 tiles first


# ---- one stage in a child process --------------------------------------------------------------------------------
def run_stage_child(config: str, stage: str, stats: str, profile: str | None = None) -> int:
    """The child: ``curate.main`` for one stage (as ``neighbor-lt curate --stages <stage>``), timed from inside;
    with ``profile``, under cProfile, saved there: the CPU time of this process's main thread (not its threads, nor
    its download or filter processes; on a shared machine, wall time would count the other jobs too)."""
    import resource

    from neighbor_lt import curate

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
    start = time.perf_counter()
    code = curate.main(["--config", config, "--stages", stage])
    wall = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(stats, "w") as f:
        json.dump(
            {"wall_s": wall, "rc": code, "self_maxrss_mb": usage.ru_maxrss / 1024,
             "self_cpu_s": usage.ru_utime + usage.ru_stime},
            f,
        )  # fmt: skip
    return code


def _tree_rss_kb(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, in kB (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


def measure_stage(stage: str, config: str, run_dir: str, profile: bool = False) -> dict:
    """Run one stage in a child process; its wall time, CPU time (the stage's process alone and with its download
    or filter processes), peak tree RSS, largest process RSS and load average; with ``profile``, the stage's
    process runs under cProfile (``<run_dir>/<stage>.prof``)."""
    stats_path = os.path.join(run_dir, f"{stage}.stats.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--_stage", stage, "--_config", config, "--_stats", stats_path]
    if profile:
        cmd += ["--_profile", os.path.join(run_dir, f"{stage}.prof")]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(os.path.join(run_dir, f"{stage}.log"), "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak, done = [0], threading.Event()

        def sample():
            while not done.wait(0.25):
                peak[0] = max(peak[0], _tree_rss_kb(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    process_s = time.perf_counter() - start
    if child.returncode != 0:
        tail = open(os.path.join(run_dir, f"{stage}.log")).read()[-3000:]
        raise SystemExit(f"stage {stage} exited {child.returncode}; its log ends:\n{tail}")
    with open(stats_path) as f:
        inner = json.load(f)
    return {
        "wall_s": inner["wall_s"],
        "process_s": process_s,
        "peak_rss_mb": max(peak[0], usage.ru_maxrss) / 1024,
        "max_process_rss_mb": usage.ru_maxrss / 1024,  # the largest process of the tree (the child or a descendant)
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "main_cpu_s": inner.get("self_cpu_s"),  # the stage's process alone (dedup, stores, decisions)
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


# ---- what the stages wrote ---------------------------------------------------------------------------------------
def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def stage_counts(out: str) -> dict:
    """Counts and recorded timings from the stages' summaries."""
    retrieve = _load(os.path.join(out, "retrieve", "download_summary.json"))
    filt = _load(os.path.join(out, "filter", "summary.json"))
    build = _load(os.path.join(out, "build", "summary.json"))
    return {
        "retrieve": {"candidates": retrieve["total"], "ok": retrieve["ok"], "duplicate": retrieve["duplicate"],
                     "timings_s": retrieve.get("timings_s")},
        "filter": {"images": filt["images"], "kept": filt.get("kept", 0), "leak_phash": filt.get("leak_phash", 0),
                   "leak_embedding": filt.get("leak_embedding", 0), "timings_s": filt.get("timings_s")},
        "build": {"images": build["images"], "classes": build["classes"]},
    }  # fmt: skip


def replay_checks(out: str, phash_distance: int, leak_distance: int) -> dict:
    """The product's near-duplicate index and leak check, replayed on the run's own hashes (stages that record no
    timing of their own): ``DedupIndex.claim`` over every fetched image in download order, ``leak_phash_distances``
    over every retrieved image against the evaluation hashes the filter cached."""
    import pandas as pd

    from neighbor_lt.retrieval.download import DedupIndex, read_downloads
    from neighbor_lt.retrieval.filters import leak_phash_distances

    records = [r for r in read_downloads(os.path.join(out, "retrieve")) if r.get("phash")]
    index = DedupIndex(phash_distance)
    start = time.perf_counter()
    for r in records:
        index.claim(r["key"], r["sha256"], r["phash"])
    dedup_s = time.perf_counter() - start
    items = pd.read_parquet(os.path.join(out, "filter", "decisions.parquet"), columns=["phash"]).to_dict("records")
    evals = [
        os.path.join(out, "filter", f) for f in os.listdir(os.path.join(out, "filter")) if f.startswith("eval-phash")
    ]
    hashes = np.concatenate([np.load(p)["array"] for p in evals]) if evals else np.zeros(0, np.uint64)
    start = time.perf_counter()
    leak_phash_distances(items, hashes, leak_distance)
    return {"dedup_s": dedup_s, "dedup_images": len(records), "leak_s": time.perf_counter() - start,
            "leak_images": len(items), "eval_hashes": len(hashes)}  # fmt: skip


# ---- one size ----------------------------------------------------------------------------------------------------
def run_size(n: int, args) -> dict:
    import yaml

    run_dir = os.path.join(CACHE, f"run-{n}")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    names = aux_names(args.classes, args.seed)
    targets = class_names()
    server, port = start_server(args, run_dir)
    try:
        setup = time.perf_counter()
        write_manifest(os.path.join(run_dir, MANIFEST_NAME), names, targets, args.seed)
        write_captions(os.path.join(run_dir, "captions.parquet"), n, names, port, args.seed)
        config = os.path.join(run_dir, "curate.yaml")
        with open(config, "w") as f:
            yaml.safe_dump(curate_yaml(run_dir, n, args), f, sort_keys=False)
        setup = time.perf_counter() - setup
        stages = {}
        for stage in STAGES:
            stages[stage] = measure_stage(stage, config, run_dir, args.profile)
            print(f"{n:,} candidates: {stage}: {json.dumps(stages[stage])}", flush=True)
    finally:
        server.kill()
        server.wait()
    out = os.path.join(run_dir, "curate")
    counts = stage_counts(out)
    for stage, key in (("retrieve", "candidates"), ("filter", "images"), ("build", "images")):
        stages[stage]["images"] = counts[stage][key]
        stages[stage]["images_per_s"] = counts[stage][key] / stages[stage]["wall_s"]
    for stage in ("retrieve", "filter"):
        if counts[stage]["timings_s"]:
            stages[stage]["timings_s"] = counts[stage]["timings_s"]
    planted_kinds = [planted(i, args.dup_rate, args.leak_rate, args.seed) for i in range(n)]
    run = {
        "candidates": n,
        "classes": args.classes,
        "stages": stages,
        "counts": counts,
        "planted": {k: planted_kinds.count(k) for k in ("duplicate", "near", "leak")},
        "replayed_checks": replay_checks(out, 4, 4),
        "settings": {
            "workers": args.workers,
            "filter_num_proc": args.filter_num_proc,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },  # fmt: skip
        "setup_s": setup,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "nice": os.nice(0),
    }
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return run


# ---- results -----------------------------------------------------------------------------------------------------
def machine() -> str:
    """The CPU model (``lscpu``) with the shared machine line, and the torch threads when set."""
    from neighbor_lt.results_md import cpu_model, machine_line

    model = cpu_model()
    threads = f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else ""
    return f"{model}, {machine_line(torch_version=False)}, Python {platform.python_version()}{threads}"


def save_run(path: str, run: dict) -> list[dict]:
    """Put ``run`` in the JSON file (replacing an earlier run of the same size); returns every run, by size."""
    runs = _load(path)["runs"] if os.path.exists(path) else []
    runs = sorted([r for r in runs if r["candidates"] != run["candidates"]] + [run], key=lambda r: r["candidates"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"runs": runs}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return runs


def check_times(stage: dict, run: dict, stage_name: str) -> tuple[float | None, str]:
    """The near-duplicate / leak check time of a stage and where it comes from (recorded or replayed)."""
    timings = stage.get("timings_s") or {}
    key = "dedup" if stage_name == "retrieve" else "leak"
    recorded = [v for k, v in timings.items() if key in k and isinstance(v, int | float)]
    if recorded:
        return sum(recorded), "recorded by the stage"
    replayed = run.get("replayed_checks", {}).get(f"{key}_s")
    return replayed, "replayed (the stage records no timing)"


def targets(runs: list[dict]) -> list[str]:
    """The targets, checked on the largest size against a size 10x smaller (when the JSON holds one)."""
    big = runs[-1]
    small = next((r for r in runs if r["candidates"] * 10 == big["candidates"]), None)
    lines = []
    for name in STAGES:
        if small is None:
            lines.append(f"- {name}: time ratio: no run at {big['candidates'] // 10:,} candidates to compare with")
            continue
        ratio = big["stages"][name]["wall_s"] / small["stages"][name]["wall_s"]
        cpu = big["stages"][name]["cpu_s"] / small["stages"][name]["cpu_s"]
        verdict = "met" if ratio <= 12 else "NOT met"
        lines.append(
            f"- {name}: time at {big['candidates']:,} = {ratio:.1f}x time at {small['candidates']:,} (target <= 12x): "
            f"{verdict} (CPU time {cpu:.1f}x, less sensitive to the load)"
        )
    peak = max(s["peak_rss_mb"] for s in big["stages"].values())
    lines.append(
        f"- peak RSS at {big['candidates']:,}: {peak:,.0f} MB (target < 3,072 MB): {'met' if peak < 3072 else 'NOT met'}"
    )
    for name, what in (("retrieve", "near-duplicate check"), ("filter", "leak check")):
        seconds, source = check_times(big["stages"][name], big, name)
        share = seconds / big["stages"][name]["wall_s"] if seconds is not None else None
        verdict = "unknown" if share is None else ("met" if share < 0.10 else "NOT met")
        lines.append(
            f"- {what} at {big['candidates']:,}: {seconds or 0:.2f} s = {100 * (share or 0):.1f}% of the {name} stage "
            f"(target < 10%), {source}: {verdict}"
        )
    if len(runs) >= 2:  # the memory trend, for sizes not run: linear in the candidates from the two largest runs
        a, b = runs[-2], runs[-1]
        for name in STAGES:
            ra, rb = a["stages"][name]["peak_rss_mb"], b["stages"][name]["peak_rss_mb"]
            slope = (rb - ra) / (b["candidates"] - a["candidates"])
            lines.append(
                f"- {name}: peak RSS grows {1000 * slope:.2f} MB per 1,000 candidates from {a['candidates']:,} to "
                f"{b['candidates']:,}; linear extrapolation to {10 * b['candidates']:,}: "
                f"{rb + slope * 9 * b['candidates']:,.0f} MB (not measured)"
            )
    return lines


def report(runs: list[dict]) -> str:
    lines = [
        f"Synthetic candidates from the `captions` backend ({runs[-1]['classes']:,} auxiliary classes), fetched from a "
        "loopback aiohttp server of distinct 64x64 JPEGs (planted: SHA-256 duplicates, near-duplicates, target "
        "validation leaks), filtered with a tiny random DINOv2 (perceptual-hash and embedding leak check against the "
        "10,000 Tiny-ImageNet validation images), built into Parquet shards. One child process per stage through "
        "`neighbor_lt.curate.main`; peak RSS is the stage's process tree summed (sampled every 0.25 s).",
        "",
        "| candidates | stage | wall (s) | CPU (s) | images/s | peak RSS (MB) | largest process (MB) | load before / after |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        for name in STAGES:
            s = run["stages"][name]
            lines.append(
                f"| {run['candidates']:,} | {name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {s['images_per_s']:,.0f} | "
                f"{s['peak_rss_mb']:,.0f} | {s['max_process_rss_mb']:,.0f} | "
                f"{s['load_before']:.1f} / {s['load_after']:.1f} |"
            )
    lines += ["", "| candidates | ok | duplicate (planted dup + near) | leaks dropped (planted) | kept | built | "
              "dedup replay (s) | leak replay (s) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run in runs:
        c, p, r = run["counts"], run["planted"], run["replayed_checks"]
        lines.append(
            f"| {run['candidates']:,} | {c['retrieve']['ok']:,} | {c['retrieve']['duplicate']:,} "
            f"({p['duplicate']:,} + {p['near']:,}) | {c['filter']['leak_phash'] + c['filter']['leak_embedding']:,} "
            f"({p['leak']:,}) | {c['filter']['kept']:,} | {c['build']['images']:,} | {r['dedup_s']:.2f} | "
            f"{r['leak_s']:.2f} |"
        )
    lines += ["", "Targets (2-core machine):", *targets(runs)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="candidate counts")
    parser.add_argument("--classes", type=int, default=1000, help="auxiliary classes (must divide every size)")
    parser.add_argument("--workers", type=int, default=32, help="download threads (retrieve.download.num_workers)")
    parser.add_argument("--filter_num_proc", type=int, default=None, help="filter.num_proc (empty: the default)")
    parser.add_argument("--dup_rate", type=float, default=0.01, help="share of URLs planted as duplicates (and near)")
    parser.add_argument("--leak_rate", type=float, default=0.001, help="share of URLs serving a validation image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results_json", default=JSON_PATH, help="where the runs are kept (one entry per size)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders under benchmarks/.cache")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each stage's process under cProfile (<run folder>/<stage>.prof; use with --keep)",
    )
    add_results_arguments(parser)
    parser.add_argument("--_serve", help=argparse.SUPPRESS)  # internal: the image server process
    parser.add_argument("--_stage", help=argparse.SUPPRESS)  # internal: one stage in a child process
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    parser.add_argument("--_stats", help=argparse.SUPPRESS)
    parser.add_argument("--_profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._serve:
        return serve(args)
    if args._stage:
        sys.exit(run_stage_child(args._config, args._stage, args._stats, args._profile))
    bad = [n for n in args.sizes if n % args.classes]
    if bad:
        parser.error(f"--sizes {bad} are not multiples of --classes {args.classes}")
    load_before = os.getloadavg()
    runs = []
    for n in args.sizes:
        runs = save_run(args.results_json, run_size(n, args))
    text = report(runs)
    print(text)
    loads = f"load average before {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, after " + (
        " / ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    title = "Curation at scale: retrieve -> filter -> build"
    record_benchmark(
        args, RESULTS, title, "benchmarks/curate_scale.py", f"{machine()}, nice {os.nice(0)}; {loads}", text
    )


if __name__ == "__main__":
    main()
