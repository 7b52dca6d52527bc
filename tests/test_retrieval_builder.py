"""The build stage at scale: streaming selection, Parquet and WebDataset shards, a build killed (SIGKILL) midway and
rerun, and the training data path on both formats."""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset
from PIL import Image

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval.builder import (
    AuxDatasetWriter,
    ClassSelector,
    aux_features,
    kept_decisions,
    select_per_class,
    select_streaming,
)
from neighbor_lt.retrieval.scoring import DECISION_COLUMNS, DECISION_SCHEMA
from neighbor_lt.retrieval.stages import run_build

CLASSES = ["koi", "carp", "minnow"]
TARGETS = {"koi": ["goldfish"], "carp": ["goldfish", "tench"], "minnow": ["tench"]}


def make_run(folder: Path, per_class: int = 30, duplicates: int = 0, seed: int = 0) -> pd.DataFrame:
    """A curation folder after the filter stage: distinct small JPEGs under retrieve/images/ and their decisions
    (every fifth image dropped), the first ``duplicates`` images of koi stored again under carp (same bytes)."""
    rng = np.random.default_rng(seed)
    rows = []
    for name in CLASSES:
        for rank in range(per_class):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
            rows.append((name, rank, buffer.getvalue()))
    rows += [("carp", per_class + k, data) for k, (name, _, data) in enumerate(rows[:duplicates]) if name == "koi"]
    records = []
    for n, (name, rank, data) in enumerate(rows):
        sha = hashlib.sha256(data).hexdigest()
        path = os.path.join("images", sha[:2], f"{sha}-{n}.jpg")
        os.makedirs(folder / "retrieve" / os.path.dirname(path), exist_ok=True)
        (folder / "retrieve" / path).write_bytes(data)
        keep = n % 5 != 4
        records.append(
            {"key": f"{name}\thttp://x/{n}.jpg", "aux_name": name, "query": name, "sha256": sha, "phash": "0" * 16,
             "path": path, "caption": f"a {name}", "rank": rank, "source_url": f"http://x/{n}.jpg",
             "page_url": f"http://x/{n}", "neighbor_of": json.dumps(TARGETS[name]), "caption_ok": True,
             "similarity": float(rng.uniform(0.5, 0.9)) if n % 7 else None, "parent": None, "leak_similarity": None,
             "leak_match": None, "leak_phash_distance": None, "keep": keep, "reason": "kept" if keep else "caption"}
        )  # fmt: skip
    frame = pd.DataFrame(records, columns=DECISION_COLUMNS)
    (folder / "filter").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "filter" / "decisions.parquet", index=False, schema=DECISION_SCHEMA)
    manifest = {"version": 1, "backend": "static", "targets": [{"index": 0, "name": "goldfish"}, {"index": 1, "name": "tench"}],
                "auxiliary": [{"name": n, "neighbor_of": TARGETS[n]} for n in CLASSES]}  # fmt: skip
    (folder / "neighbors").mkdir(exist_ok=True)
    (folder / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    return frame


def expected_selection(frame: pd.DataFrame, cap: int, selection: str, seed: int = 0) -> dict[str, set]:
    """What the in-memory select_per_class keeps of the kept decisions: class -> SHA-256s."""
    items = []
    for row in frame[frame["keep"]].to_dict("records"):
        row["similarity"] = None if row["similarity"] is None or np.isnan(row["similarity"]) else row["similarity"]
        items.append(row)
    return {k: {x["sha256"] for x in v} for k, v in select_per_class(items, cap, selection, seed).items()}


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("selection", ["random", "rank", "similarity"])
def test_streaming_selection_matches_the_in_memory_one(tmp_path, selection):
    frame = make_run(tmp_path, per_class=40, duplicates=6)
    batches = lambda columns, only=None: kept_decisions(str(tmp_path), columns, batch_size=16, only=only)  # noqa: E731
    groups, kept = select_streaming(batches, ClassSelector(5, selection, seed=3))
    assert kept == int(frame["keep"].sum())
    by_ordinal = frame["sha256"].tolist()
    got = {name: {by_ordinal[o] for o in ordinals} for name, ordinals in groups.items()}
    assert got == expected_selection(frame, 5, selection, seed=3)
    # a kept duplicate stays with the class first by name (carp < koi): koi loses its copies
    kept = frame[frame["keep"]]
    shared = set(kept["sha256"][kept["aux_name"] == "koi"]) & set(kept["sha256"][kept["aux_name"] == "carp"])
    assert shared and not got["koi"] & shared
    # the random sample does not depend on the order the images come in
    if selection == "random":
        reverse, losers = ClassSelector(5, "random", seed=3), _losers(frame)
        for n in reversed(range(len(frame))):
            row = frame.iloc[n]
            if row["keep"] and n not in losers:
                reverse.add(row["aux_name"], row["sha256"], row["rank"], None, n)
        assert {k: {by_ordinal[o] for o in v} for k, v in reverse.groups().items()} == got


def _losers(frame):
    from neighbor_lt.retrieval.builder import duplicate_losers

    kept = frame[frame["keep"]]
    return duplicate_losers(zip(kept["sha256"], kept["aux_name"], kept["rank"], kept.index))


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_build_writes_a_set_load_dataset_and_the_trainer_read(tmp_path, fmt):
    from neighbor_lt.data import load_aux_dataset, merge_label_space

    frame = make_run(tmp_path, per_class=30)
    context = CurateContext(str(tmp_path))
    summary = run_build({"max_images_per_class": 20, "rows_per_shard": 7, "format": fmt, "selection": "rank"}, context)
    dataset_dir = tmp_path / "aux_dataset"
    suffix = "tar" if fmt == "webdataset" else "parquet"
    shards = sorted(p.name for p in (dataset_dir / "data").iterdir())
    assert shards == [f"train-{i:05d}-of-{len(shards):05d}.{suffix}" for i in range(len(shards))]
    assert len(shards) == -(-summary["images"] // 7) and summary["format"] == fmt
    assert not (tmp_path / "aux_dataset.tmp").exists() and sorted(os.listdir(dataset_dir)) == ["README.md", "data"]

    raw = load_dataset(str(dataset_dir), split="train")
    aux = load_aux_dataset(str(dataset_dir))  # what the train recipe's aux_dataset: key loads
    if fmt == "parquet":
        assert raw.features == aux_features(CLASSES)
    else:
        assert set(raw.column_names) == {"jpg", "cls", "json"} and raw.features["cls"].names == CLASSES
    assert aux.features == aux_features(CLASSES)
    assert len(aux) == summary["images"] == 3 * 20
    expected = expected_selection(frame, 20, "rank")
    assert {
        name: set(aux.filter(lambda r, k=k: r["label"] == k)["sha256"]) for k, name in enumerate(CLASSES)
    } == expected
    for row in aux.select(range(0, len(aux), 11)):
        source = frame.set_index("sha256").loc[row["sha256"]]
        stored = (tmp_path / "retrieve" / source["path"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row["sha256"] and row["image"].size == (16, 16)
        assert row["neighbor_of"] == TARGETS[CLASSES[row["label"]]] and row["query"] == CLASSES[row["label"]]
        assert row["source_url"] == source["source_url"] and row["caption"] == source["caption"]
        similarity = row["similarity"]
        if source["similarity"] is None or np.isnan(source["similarity"]):  # NaN in Parquet, null in the JSON
            assert similarity is None or np.isnan(similarity)
        else:
            assert similarity == pytest.approx(source["similarity"], rel=1e-6)
    assert merge_label_space(["goldfish", "tench"], aux).neighbor_of == TARGETS

    # the card's load snippet runs as written and gives the trainer's columns
    readme = (dataset_dir / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert str(dataset_dir) in snippet and ("flatten" in snippet) == (fmt == "webdataset")
    scope = {}
    exec(snippet, scope)
    assert scope["aux"].features == aux_features(CLASSES) and len(scope["aux"]) == len(aux)
    assert "| koi | goldfish | 20 |" in readme and "| carp | goldfish, tench | 20 |" in readme
    assert (
        run_build({"max_images_per_class": 20, "rows_per_shard": 7, "format": fmt, "selection": "rank"}, context)
        == summary
    )


def test_webdataset_shards_are_plain_webdataset_tars(tmp_path):
    import tarfile

    make_run(tmp_path, per_class=6)
    run_build({"max_images_per_class": 4, "format": "webdataset"}, CurateContext(str(tmp_path)))
    (shard,) = (tmp_path / "aux_dataset" / "data").iterdir()
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        sample = json.load(tar.extractfile(names[2]))
    assert [n.split(".", 1)[1] for n in names[:3]] == ["jpg", "cls", "json"] and len(names) == 3 * 12
    assert names[0].split(".")[0] == sample["sha256"] and set(sample) >= {"neighbor_of", "source_url", "similarity"}
    streamed = load_dataset(str(tmp_path / "aux_dataset"), split="train", streaming=True)
    assert sum(1 for _ in streamed) == 12
    # the card declares the features: a rebuild of the same folder is read afresh, not from datasets' cache
    assert len(load_dataset(str(tmp_path / "aux_dataset"), split="train")) == 12
    run_build({"max_images_per_class": 2, "format": "webdataset"}, CurateContext(str(tmp_path)))
    assert len(load_dataset(str(tmp_path / "aux_dataset"), split="train")) == 6


def test_bad_build_settings_are_one_line_errors(tmp_path):
    from neighbor_lt.configs import ConfigError

    make_run(tmp_path, per_class=3)
    with pytest.raises(ConfigError, match="build.format must be one of parquet, webdataset, not 'tfrecord'"):
        run_build({"format": "tfrecord"}, CurateContext(str(tmp_path)))
    with pytest.raises(ConfigError, match="build.rows_per_shard"):
        run_build({"rows_per_shard": 0}, CurateContext(str(tmp_path)))


def test_writer_resumes_from_complete_shards_and_repairs_a_swap(tmp_path):
    frame = make_run(tmp_path, per_class=4)
    items = frame[frame["keep"]].to_dict("records")
    root = str(tmp_path / "retrieve")
    out = str(tmp_path / "aux")
    writer = AuxDatasetWriter(out, CLASSES, len(items), root, rows_per_shard=3, fingerprint="f1")
    for item in items[:7]:  # two shards complete, the third half written: then the process "dies"
        writer.add(CLASSES.index(item["aux_name"]), item)
    first = (tmp_path / "aux.tmp" / "data" / writer.shard_path(0).rsplit("/", 1)[1]).stat()
    writer = AuxDatasetWriter(out, CLASSES, len(items), root, rows_per_shard=3, fingerprint="f1")
    assert writer.done == {0, 1}
    for item in items:
        writer.add(CLASSES.index(item["aux_name"]), item)
    assert writer.commit() == len(items)
    again = (tmp_path / "aux" / "data" / os.path.basename(writer.shard_path(0))).stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # kept, not rewritten
    aux = load_dataset(out, split="train")
    assert aux["sha256"] == [x["sha256"] for x in items]
    # another fingerprint starts over; a kill between the swap's two renames leaves only aux.old: put back
    assert AuxDatasetWriter(out, CLASSES, 2, root, rows_per_shard=3, fingerprint="f2").done == set()
    os.replace(out, out + ".old")
    AuxDatasetWriter(out, CLASSES, 2, root, rows_per_shard=3)
    assert load_dataset(out, split="train")["sha256"] == aux["sha256"] and not os.path.exists(out + ".old")


CHILD = """
import logging, os, sys, time
from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval import builder
from neighbor_lt.retrieval.stages import run_build

logging.basicConfig(level=logging.INFO)
folder, point = sys.argv[1], sys.argv[2]
if point != "none":  # stop the build at a known point and wait there for the parent's SIGKILL
    name = "_close_shard" if point == "after_shard" else "_write_rows"
    original, calls = getattr(builder.AuxDatasetWriter, name), []

    def paused(self, shard):
        original(self, shard)
        calls.append(shard)
        if len(calls) == 3:
            open(os.path.join(folder, "paused"), "w").close()
            time.sleep(600)

    setattr(builder.AuxDatasetWriter, name, paused)
print(run_build({"max_images_per_class": 25, "rows_per_shard": 10, "seed": 1}, CurateContext(folder))["images"])
"""


def run_child(folder: Path, point: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), point], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.parametrize("point", ["after_shard", "mid_shard"])
def test_build_killed_midway_leaves_the_previous_set_and_resumes(tmp_path, point):
    make_run(tmp_path, per_class=40)
    context = CurateContext(str(tmp_path))
    run_build({"max_images_per_class": 5, "rows_per_shard": 10}, context)  # the previous, published set
    dataset_dir = tmp_path / "aux_dataset"
    previous = files_of(dataset_dir)

    child = run_child(tmp_path, point)
    while not (tmp_path / "paused").exists():  # the child stops itself at the point; a crash ends the wait
        assert child.poll() is None, child.communicate()[1][-2000:]
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert files_of(dataset_dir) == previous  # untouched until the new set is complete
    written = sorted(p.name for p in (tmp_path / "aux_dataset.tmp" / "data").iterdir())
    complete = [n for n in written if not n.startswith(".")]
    # after_shard: three shards closed; mid_shard: two closed, the third's rows written but the file never closed
    assert len(complete) == (3 if point == "after_shard" else 2)
    assert any(n.endswith(".partial") for n in written) == (point == "mid_shard")
    kept_stat = {n: (tmp_path / "aux_dataset.tmp" / "data" / n).stat().st_mtime_ns for n in complete}

    rerun = run_child(tmp_path, "none")
    out, err = rerun.communicate()
    assert rerun.returncode == 0, err[-2000:]
    assert f"{len(complete)} of 8 shard(s) already written" in err
    aux = load_dataset(str(dataset_dir), split="train")
    assert len(aux) == int(out.strip()) == 3 * 25 and len(set(aux["sha256"])) == len(aux)  # complete, no duplicate
    assert Counter(aux["label"]) == {0: 25, 1: 25, 2: 25}
    for name, mtime in kept_stat.items():  # the complete shards were kept, not written again
        assert (dataset_dir / "data" / name).stat().st_mtime_ns == mtime
    # the same set as a build never interrupted
    clean = tmp_path / "clean"
    clean.mkdir()
    for part in ("retrieve", "filter", "neighbors"):
        os.symlink(tmp_path / part, clean / part)
    run_build({"max_images_per_class": 25, "rows_per_shard": 10, "seed": 1}, CurateContext(str(clean)))
    assert load_dataset(str(clean / "aux_dataset"), split="train")["sha256"] == aux["sha256"]
