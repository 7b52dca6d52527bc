"""The throughput benchmarks run end to end on tiny sizes (slow: deselected by default; `pytest -m slow` runs them)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script, *flags):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *flags, "--no_append"],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
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
