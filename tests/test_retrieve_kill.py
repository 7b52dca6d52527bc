"""The retrieve stage killed (SIGKILL) twice mid-download by ``recipes/curate.py`` and rerun: every candidate ends with
exactly one record, nothing lost and nothing twice, and the final state is an uninterrupted run's. No wall-clock bound:
each kill waits for records to appear, however slow the machine."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from retrieval_fixtures.downloads import recorded
from retrieval_fixtures.server import ImageServer, load_jpegs

from neighbor_lt.retrieval.download import read_downloads

REPO = Path(__file__).resolve().parents[1]
# 67 candidates: distinct images, the same bytes under another URL, the same URL for another class, failures
RESULTS = {
    "goldfish": [(f"/delay/{i}.jpg", f"/page/{i}", f"goldfish {i}") for i in range(30)],
    "axolotl": [(f"/delay/{i}.jpg", f"/page/{i}", f"axolotl {i}") for i in range(30, 40)]
    + [(f"/dup/{i}.jpg", f"/page/d{i}", f"axolotl copy {i}") for i in range(10)]
    + [("/corrupt.jpg", "/page/c", "axolotl broken"), ("/status/404", "/page/g", "axolotl gone")],
    "koi": [(f"/delay/{i}.jpg", f"/page/k{i}", f"koi {i}") for i in (*range(10), *range(30, 35))],
}
TOTAL = sum(len(hits) for hits in RESULTS.values())


@pytest.fixture(scope="module")
def server(tiny_imagenet_dir):
    server = ImageServer(load_jpegs(tiny_imagenet_dir, 40), delay=0.25, search_results=RESULTS).start()
    yield server
    server.stop()


def curate_command(server, folder: Path) -> tuple[list[str], Path]:
    """``recipes/curate.py --stages retrieve`` over the loopback search API and image server, with a static
    neighbor manifest in ``folder/out``; returns the command and the retrieve folder."""
    out = folder / "out"
    (out / "neighbors").mkdir(parents=True)
    manifest = {
        "version": 1,
        "backend": "static",
        "targets": [{"index": 0, "name": "tench", "query": "tench"}],
        "auxiliary": [{"name": name, "neighbor_of": ["tench"]} for name in RESULTS],
    }
    (out / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    config = yaml.safe_load((REPO / "recipes" / "demo" / "curate.yaml").read_text())
    for key in ("train_files", "eval_files"):
        config["target"][key] = [str(REPO / p) for p in config["target"][key]]
    config["output_dir"] = str(out)
    config["retrieve"] = {
        "backend": "google",
        "backend_kwargs": {"api_key": "test-key", "cx": "test-cx", "endpoint": server.url("/customsearch/v1")},
        "max_results_per_query": 30,
        "download": {"allowed_networks": ["127.0.0.1/32"], "requests_per_second_per_host": 0, "num_workers": 4,
                     "num_processes": 2, "max_retries": 0},
    }  # fmt: skip
    path = folder / "curate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, str(REPO / "recipes" / "curate.py"), "--config", str(path), "--stages", "retrieve"]
    return command, out / "retrieve"


def run(command) -> None:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def kill_after(command, retrieve: Path, records: int) -> int:
    """Start ``command``, SIGKILL it once ``records`` records are committed; returns how many there were then."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and recorded(retrieve) < records:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before the kill"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return recorded(retrieve)


def state(retrieve: Path) -> dict:
    """What a finished run leaves, with which of two equal images is the duplicate left open (threads race)."""
    records = read_downloads(retrieve)
    ok = [r for r in records if r["outcome"] == "ok"]
    return {
        "keys": sorted(r["key"] for r in records),
        "outcomes": Counter(r["outcome"] for r in records),
        "failed": {r["key"]: r["outcome"] for r in records if r["outcome"] not in ("ok", "duplicate")},
        "ok images": sorted(r["sha256"] for r in ok),
        "files": sorted(p.name for p in (retrieve / "images").rglob("*") if p.is_file()),
        "summary": json.loads((retrieve / "download_summary.json").read_text()),
        "urls": pd.read_parquet(retrieve / "urls.parquet").sort_values(["aux_name", "url"]).to_dict("records"),
    }


def test_retrieve_killed_twice_then_rerun_ends_as_an_uninterrupted_run(server, tmp_path):
    command, reference = curate_command(server, tmp_path / "reference")
    run(command)
    expected = state(reference)
    assert len(expected["keys"]) == TOTAL and expected["files"] == [s + ".jpg" for s in expected["ok images"]]
    assert expected["outcomes"] == {"ok": 40, "duplicate": 25, "not_image": 1, "http_error": 1}

    command, retrieve = curate_command(server, tmp_path / "killed")
    first = kill_after(command, retrieve, 10)
    assert 10 <= first < TOTAL
    committed = {r["key"]: r for r in read_downloads(retrieve)}
    second = kill_after(command, retrieve, first + 10)
    assert first + 10 <= second < TOTAL
    kept = {r["key"]: r for r in read_downloads(retrieve)}
    assert all(kept[key] == record for key, record in committed.items())  # committed records stay as they were
    run(command)

    records = read_downloads(retrieve)
    assert len(records) == len({r["key"] for r in records}) == TOTAL  # every candidate exactly one record
    got = state(retrieve)
    assert got == expected
    final = {r["key"]: r for r in records}
    assert all(final[key] == record for key, record in kept.items())  # the rerun redid only what was not recorded
    assert not list(retrieve.glob("*.tmp")) and not list((retrieve / "images").rglob("*.tmp"))


def test_a_run_folder_of_an_earlier_version_is_migrated_once_and_resumed(server, tmp_path, caplog):
    """A retrieve folder with the JSONL logs earlier versions wrote (torn last line included): migrated with one
    INFO line per file, kept as ``*.jsonl.migrated``, and the rerun sends no search and fetches nothing."""
    from neighbor_lt.curate import CurateContext
    from neighbor_lt.retrieval.searches import open_searches
    from neighbor_lt.retrieval.stages import run_retrieve

    command, retrieve = curate_command(server, tmp_path)
    run(command)
    before = state(retrieve)
    with open_searches(str(retrieve)) as cache:
        searches = list(cache.iter())
    records = read_downloads(retrieve)
    old = [{**records[0], "outcome": "timeout"}] + records  # a key's last line wins
    (retrieve / "downloads.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old) + '{"key": "torn')
    (retrieve / "searches.jsonl").write_text("".join(json.dumps(r) + "\n" for r in searches))
    for path in retrieve.glob("*.sqlite*"):
        path.unlink()
    config = yaml.safe_load((tmp_path / "curate.yaml").read_text())
    requests = server.requests.copy()
    with caplog.at_level("INFO"):
        summary = run_retrieve(config["retrieve"], CurateContext(str(tmp_path / "out")))
    assert server.requests == requests  # no search, no download
    assert summary == before["summary"] and state(retrieve) == before
    migrated = [r.getMessage() for r in caplog.records if "migrated into" in r.getMessage()]
    assert len(migrated) == 2 and {m.split(":")[0] for m in migrated} == {
        str(retrieve / "downloads.jsonl"),
        str(retrieve / "searches.jsonl"),
    }
    assert not (retrieve / "downloads.jsonl").exists()
    assert (retrieve / "downloads.jsonl.migrated").read_text().count("\n") == len(old)
    caplog.clear()
    with caplog.at_level("INFO"):
        run_retrieve(config["retrieve"], CurateContext(str(tmp_path / "out")))
    assert not [r for r in caplog.records if "migrated into" in r.getMessage()]
