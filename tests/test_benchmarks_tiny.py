"""The Tiny-ImageNet-LT benchmark end to end in its --quick mode (slow: deselected by default, run with -m slow)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_tiny", REPO / "benchmarks" / "tiny_imagenet_lt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_imagenet_lt_quick(tmp_path, tiny_imagenet_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    bench = load_benchmark()
    out, figure = tmp_path / "bench", tmp_path / "chart.png"
    table = bench.main(["--quick", "--output_dir", str(out), "--figure", str(figure)])
    assert set(table) == {"a", "a_steps", "b", "c", "d"}
    for row in table.values():
        assert all(0 <= row[g][0] <= 100 for g in bench.GROUPS)
    assert figure.stat().st_size > 0
    runs = [json.loads(line) for line in (tmp_path / "bench_quick" / "runs.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in runs} == set(table)
    assert all(r["num_aux"] > 0 for r in runs if r["variant"] in ("b", "c", "d"))
    # the control keeps the neighbor graph's shape but none of its auxiliary classes is placed as in the real one
    real = json.loads((tmp_path / "bench_quick" / "aux_neighbors" / "neighbors" / "neighbors.json").read_text())
    control = json.loads((tmp_path / "bench_quick" / "aux_random" / "neighbors" / "neighbors.json").read_text())
    assert [a["neighbor_of"] for a in control["auxiliary"]] == [a["neighbor_of"] for a in real["auxiliary"]]
    # the random images went through the same prototype filter, with the embedder trained in the run
    assert json.loads((tmp_path / "bench_quick" / "aux_random" / "filter" / "config.json").read_text())[
        "model_name_or_path"
    ].endswith("embedder")
