"""The throughput benchmarks run end to end on tiny sizes (slow: deselected by default; `pytest -m slow` runs them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script, *flags):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # no timeout: a loaded machine took the curate_scale run past 600 s (a wall-clock limit fails a slow machine,
    # not the code, and left its image server behind)
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *flags, "--no_append"],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_download_benchmark_runs(tiny_imagenet_dir):
    stdout = run_benchmark("download.py", "--num-images", "60", "--rounds", "1", "--concurrency", "4")
    assert "| ours |" in stdout and "| img2dataset (hand-off settings) |" in stdout
    assert "Target (ours at least img2dataset's images/s, end to end):" in stdout


@pytest.mark.slow
def test_throughput_benchmark_runs():
    stdout = run_benchmark(
        "throughput.py",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--embed-images",
        "64",
        "--batch-size",
        "16",
    )
    for row in ("real input pipeline vs pre-made tensors", "vs plain PyTorch loop", "ImageEmbedder vs raw forward"):
        assert row in stdout


@pytest.mark.slow
def test_captions_benchmark_runs():
    stdout = run_benchmark("captions.py", "--rows", "20000", "--names", "200", "--max_results", "50")
    assert "| 20,000 |" in stdout and "Extrapolation to 2B rows" in stdout


@pytest.mark.slow
def test_dedup_scale_benchmark_runs():
    stdout = run_benchmark(
        "dedup_scale.py", "--sizes", "3000", "6000", "--brute_sizes", "3000", "--eval_size", "2000", "--probes", "200"
    )
    assert "| DedupIndex.claim | 3,000 |" in stdout and "| leak_phash_distances | 6,000 |" in stdout


@pytest.mark.slow
def test_curate_scale_benchmark_runs(tiny_imagenet_dir, tmp_path):
    results = tmp_path / "curate_scale.json"
    stdout = run_benchmark(
        "curate_scale.py", "--sizes", "100", "200", "--classes", "20", "--workers", "4", "--dup_rate", "0.05",
        "--leak_rate", "0.05", "--results_json", str(results),
    )  # fmt: skip
    runs = json.loads(results.read_text())["runs"]
    assert [r["candidates"] for r in runs] == [100, 200]
    for run in runs:
        assert set(run["stages"]) == {"retrieve", "filter", "build"}
        for stage in run["stages"].values():
            assert stage["wall_s"] > 0 and stage["peak_rss_mb"] > 0 and stage["images_per_s"] > 0
        # every planted duplicate and leak was fetched and dropped by the product's checks, nothing else was
        planted = run["planted"]
        assert run["counts"]["retrieve"]["duplicate"] == planted["duplicate"] + planted["near"]
        assert run["counts"]["filter"]["leak_phash"] == planted["leak"] > 0
        assert run["counts"]["build"]["images"] == run["counts"]["filter"]["kept"]
    assert "| 200 | filter |" in stdout and "- peak RSS at 200:" in stdout


@pytest.mark.slow
def test_record_store_benchmark_runs():
    stdout = run_benchmark("record_store.py", "--sizes", "2000", "6000")
    assert "| 6,000 |" in stdout and "bytes per stored (ok) image" in stdout
    assert "downloader commit" in stdout  # the keyed work, CPU per record


@pytest.mark.slow
def test_filter_embed_benchmark_runs(tiny_imagenet_dir):
    stdout = run_benchmark(
        "filter_embed.py", "--images", "96", "--procs", "1", "2", "--shard_size", "16", "--batch_size", "16",
        "--image_size", "32", "--eval_images", "50",
    )  # fmt: skip
    assert "| 1 | " in stdout and "| 2 | " in stdout and "Target (2 processes >= 1.6x one process" in stdout
    runs = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"num_proc"')]
    assert [r["num_proc"] for r in runs] == [1, 2] and all(r["images_per_s"] > 0 for r in runs)
