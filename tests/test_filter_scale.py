"""The filter stage at scale, on real Tiny-ImageNet images and a tiny random DINOv2: the sharded scoring pass in one
and in two processes, kill -9 mid-pass and resume (nothing lost, nothing scored twice, the same decisions), scores of
earlier versions (JSONL) moved into the store once, decisions written in chunks, and the new settings checked."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from retrieval_fixtures.targets import TARGETS, leaky_target

from neighbor_lt.configs import ConfigError
from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval import scoring
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.retrieval.filters import BatchScaling, ImageEmbedder, autocast_dtype, batched
from neighbor_lt.retrieval.records_store import RecordStore
from neighbor_lt.retrieval.scoring import (
    build_references,
    open_scores,
    score_items,
    worker_start_method,
    write_decisions,
)
from neighbor_lt.retrieval.stages import FilterArguments, iter_retrieved, run_filter, run_retrieve

HERE = Path(__file__).resolve().parent
AUXILIARY = [
    {"name": "tailed frog", "neighbor_of": ["n01641577"]},
    {"name": "black widow", "neighbor_of": ["n01774750"]},
    {"name": "scorpion", "neighbor_of": ["n01774750", "n02099601"]},
    {"name": "Labrador retriever", "neighbor_of": ["n02099601"]},
]
SECTION = {"gamma_low": None, "gamma_high": None, "leak_similarity": 0.99999, "batch_size": 8, "shard_size": 16}


@pytest.fixture(scope="module")
def retrieved(tmp_path_factory, tiny_imagenet_dir):
    """A run folder after the retrieve stage (pool backend on the shared validation split: about 200 real images of 4
    auxiliary classes) and the saved target set (3 classes, one validation image planted from the pool: a leak)."""
    valid = str(tiny_imagenet_dir / "valid-00000-of-00001.parquet")
    rows = pq.read_table(valid).to_pydict()
    target, _ = leaky_target(rows, train=8, validation=4)
    root = tmp_path_factory.mktemp("retrieved")
    target.save_to_disk(str(root / "target"))
    run = root / "run"
    manifest = {
        "version": 1,
        "backend": "static",
        "targets": [{"index": i, "name": name} for i, name in enumerate(TARGETS.values())],
        "auxiliary": AUXILIARY,
    }
    (run / "neighbors").mkdir(parents=True)
    (run / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    retrieve = {
        "backend": "pool",
        "backend_kwargs": {"data_files": valid, "caption_column": "words", "id_column": "wnid"},
        "max_results_per_query": 50,
    }
    assert run_retrieve(retrieve, CurateContext(str(run), target=target))["ok"] >= 190
    return run, root / "target", target


def copy_run(retrieved, tmp_path) -> tuple[Path, CurateContext]:
    run, _, target = retrieved
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", CurateContext(str(tmp_path / "run"), target=target)


def filter_in_process(retrieved, run: Path, section: dict, where: str) -> subprocess.CompletedProcess:
    """The filter stage in a process of its own, killed with SIGKILL at ``where`` (tests/filter_kill_run.py)."""
    command = [
        sys.executable,
        str(HERE / "filter_kill_run.py"),
        str(run),
        str(retrieved[1]),
        json.dumps(section),
        where,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(command, capture_output=True, text=True, env=env)


def stored_keys(run: Path) -> list[str]:
    """The keys of the images whose scores are stored."""
    (path,) = run.glob("filter/scores-*.sqlite")
    with RecordStore(str(path), columns=()) as store:
        return list(store.keys())


def decisions(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "filter" / "decisions.parquet").sort_values("key").reset_index(drop=True)


def assert_same_decisions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got["key"].tolist() == expected["key"].tolist()
    assert got["reason"].tolist() == expected["reason"].tolist()
    for column in ("similarity", "leak_similarity"):  # other processes, other thread counts: the last bits may move
        np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(), atol=1e-5)
    assert got["leak_match"].tolist() == expected["leak_match"].tolist()


def test_killed_two_process_pass_resumes_without_loss_or_duplicates(retrieved, tiny_dinov2, tmp_path):
    section = {**SECTION, "model_name_or_path": tiny_dinov2}
    reference, context = copy_run(retrieved, tmp_path / "reference")
    summary = run_filter({**section, "num_proc": 1}, context)  # uninterrupted, one process
    expected = decisions(reference)
    assert summary["leak_phash"] >= 1 and summary["kept"] > 0 and expected["similarity"].notna().all()
    assert set(summary["timings_s"]) == {"references", "embed", "leak_check", "decisions", "total"}

    run, context = copy_run(retrieved, tmp_path / "killed")
    first = filter_in_process(retrieved, run, {**section, "num_proc": 2}, "after:2")  # once its 2nd shard is stored
    assert first.returncode == -9, first.stderr[-2000:]
    assert len(stored_keys(run)) == 32 and not (run / "filter" / "decisions.parquet").exists()
    second = filter_in_process(retrieved, run, {**section, "num_proc": 1}, "torn:1")  # between write and rename
    assert second.returncode == -9, second.stderr[-2000:]
    assert len(stored_keys(run)) == 32
    resumed = run_filter({**section, "num_proc": 1}, context)
    assert resumed["scored"] == len(expected) - 32

    keys = stored_keys(run)
    assert len(keys) == len(set(keys)) == len(expected)  # every image scored exactly once
    assert_same_decisions(decisions(run), expected)
    assert resumed["kept"] == summary["kept"]


@pytest.mark.parametrize("cores, method", [(2, "fork"), (4, "spawn")])
def test_two_processes_store_the_scores_of_one(retrieved, tiny_dinov2, tmp_path, monkeypatch, cores, method):
    """Both processes score shards (a worker forked with this process's model on 2 cores, one spawned with its own
    where each process runs 2 threads) and the store holds what one process stores."""
    run, context = copy_run(retrieved, tmp_path)
    items = [item for chunk in iter_retrieved(context) for item in chunk]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    scored_by, score_batch = tmp_path / "scored_by", scoring.score_batch

    def recorded(batch, refs, retrieve_dir):  # a forked worker runs this too; a spawned one imports the original
        with open(scored_by, "a") as f:
            f.write(f"{os.getpid()}\n")
        return score_batch(batch, refs, retrieve_dir)

    monkeypatch.setattr(scoring, "score_batch", recorded)
    scores = {}
    for procs in (1, 2):
        args = FilterArguments(model_name_or_path=tiny_dinov2, batch_size=8, shard_size=16, num_proc=procs)
        out = str(run / f"filter-{procs}")
        refs = build_references(args, context.target, out)
        with open_scores(out, refs.scorer_id, args.shard_size) as store:
            stats = score_items(batched(items, 16), refs, args, str(run / "retrieve"), store)
            scores[procs] = {r["key"]: r for r in store.iter()}
        assert stats["images"] == len(items) and stats["shards"] == -(-len(items) // 16)
    here = scored_by.read_text().split().count(str(os.getpid()))
    assert worker_start_method(["cpu", "cpu"], threads=cores // 2) == method
    assert here < 2 * stats["shards"]  # the worker scored some shards (forked: counted in the file, spawned: not)
    if method == "fork":
        assert len(set(scored_by.read_text().split())) == 2
    assert scores[1].keys() == scores[2].keys() and len(scores[1]) == len(items)
    for key, one in scores[1].items():
        two = scores[2][key]
        assert {k: v for k, v in one.items() if "similarity" not in k} == {
            k: v for k, v in two.items() if "similarity" not in k
        }
        for column in ("similarity", "leak_similarity"):  # other processes, other thread counts: the last bits move
            assert two[column] == pytest.approx(one[column], abs=1e-5)


def test_worker_start_method():
    assert worker_start_method(["cpu", "cpu", "cpu"], threads=1) == "fork"
    assert worker_start_method(["cpu", "cpu"], threads=2) == "spawn"  # GNU OpenMP hangs in a forked child
    assert worker_start_method(["cuda:0", "cuda:1"], threads=1) == "spawn"
    assert worker_start_method(["cpu", "cuda:1"], threads=1) == "spawn"


def test_jsonl_scores_of_earlier_versions_are_moved_once(retrieved, tiny_dinov2, tmp_path, caplog):
    section = {**SECTION, "model_name_or_path": tiny_dinov2, "num_proc": 1}
    run, context = copy_run(retrieved, tmp_path)
    run_filter(section, context)
    expected = decisions(run)
    (path,) = run.glob("filter/scores-*.sqlite")
    with RecordStore(str(path), columns=()) as store:
        rows = list(store.iter())
    legacy = Path(str(path).removesuffix(".sqlite") + ".jsonl")
    with open(legacy, "w") as f:  # what earlier versions wrote: one JSON line per image
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for leftover in run.glob("filter/scores-*.sqlite*"):
        leftover.unlink()
    with caplog.at_level(logging.INFO, logger="neighbor_lt"):
        assert run_filter(section, context)["scored"] == 0
    assert f"{len(rows)} record(s) migrated into" in caplog.text
    assert not legacy.exists() and Path(f"{legacy}.migrated").exists() and len(stored_keys(run)) == len(rows)
    assert_same_decisions(decisions(run), expected)


def test_decisions_are_the_same_in_chunks(retrieved, tmp_path):
    run, context = copy_run(retrieved, tmp_path)
    run_filter({"model_name_or_path": None, "shard_size": 16}, context)
    whole = decisions(run)
    (path,) = run.glob("filter/scores-*.sqlite")
    scorer = path.name.removeprefix("scores-").removesuffix(".sqlite")
    args = FilterArguments(model_name_or_path=None)
    hashes = np.concatenate([np.load(p)["array"] for p in sorted(run.glob("filter/eval-phash-*.npz"))])
    with open_scores(str(run / "filter"), scorer, 16) as store:
        small = batched((item for chunk in iter_retrieved(context) for item in chunk), 7)
        reasons, _ = write_decisions(small, store, args, str(run / "filter"), hashes)
    pd.testing.assert_frame_equal(decisions(run), whole)
    assert sum(reasons.values()) == len(whole) and reasons["leak_phash"] >= 1


def test_images_of_classes_no_longer_in_the_manifest_are_reported_once(retrieved, tmp_path, caplog):
    """The stage reads the images twice (to score, to decide); the classes it leaves out are one INFO line."""
    run, context = copy_run(retrieved, tmp_path)
    path = run / "neighbors" / "neighbors.json"
    manifest = json.loads(path.read_text())
    manifest["auxiliary"] = [a for a in manifest["auxiliary"] if a["name"] != "tailed frog"]
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="neighbor_lt"):
        summary = run_filter({"model_name_or_path": None, "shard_size": 16}, context)
    lines = [r.getMessage() for r in caplog.records if "no longer in" in r.getMessage()]
    assert len(lines) == 1 and "of 1 class(es)" in lines[0] and "'tailed frog'" in lines[0], lines
    left_out = int(lines[0].split("filter: ")[1].split()[0])
    assert left_out >= 1 and "tailed frog" not in set(decisions(run)["aux_name"])
    ok = [r for r in read_downloads(run / "retrieve") if r["outcome"] == "ok"]
    assert summary["images"] + left_out == len(ok) and left_out == sum(r["aux_name"] == "tailed frog" for r in ok)


@pytest.mark.parametrize(
    "device, cuda_devices, workers, expected, line",
    [
        (None, 1, 2, ["cuda:0", "cuda:0"], "2 scoring processes on 1 CUDA device(s): 2 on cuda:0,"),
        (None, 2, 2, ["cuda:0", "cuda:1"], None),
        (None, 2, 3, ["cuda:0", "cuda:1", "cuda:0"], "on 2 CUDA device(s): 2 on cuda:0, 1 on cuda:1,"),
        ("cuda", 2, 2, ["cuda:0", "cuda:1"], None),
        ("cuda:1", 2, 2, ["cuda:1", "cuda:1"], "2 scoring processes on 1 CUDA device(s): 2 on cuda:1,"),
        ("cpu", 2, 2, ["cpu", "cpu"], None),
        (None, 0, 2, ["cpu", "cpu"], None),  # no GPU: the CPU cores are shared out, nothing to say
    ],
)
def test_worker_devices_say_when_processes_share_a_gpu(
    monkeypatch, caplog, device, cuda_devices, workers, expected, line
):  # fmt: skip
    import torch

    from neighbor_lt.retrieval.scoring import worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    with caplog.at_level(logging.INFO, logger="neighbor_lt"):
        assert worker_devices(device, workers) == expected
    said = [r.getMessage() for r in caplog.records if "scoring processes on" in r.getMessage()]
    assert said == [] if line is None else (len(said) == 1 and line in said[0]), said


def test_num_proc_empty_is_one_per_cuda_device_unless_the_device_is_pinned(monkeypatch):
    import torch

    from neighbor_lt.retrieval.scoring import resolve_num_proc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [resolve_num_proc(None, d) for d in (None, "cuda", "cuda:2", "cpu")] == [4, 4, 1, 1]
    assert resolve_num_proc(3, "cpu") == 3  # as set
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_num_proc(None) == 1


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_proc", 0, "filter.num_proc must be a positive integer or empty (got 0)"),
        ("shard_size", -1, "filter.shard_size must be a positive integer (got -1)"),
        ("precision", "fp8", "filter.precision must be one of auto, fp32, bf16, fp16 (got 'fp8')"),
        ("decode_threads", -2, "filter.decode_threads must be 0 or a positive integer (got -2)"),
    ],
)
def test_bad_pass_settings_are_one_line(key, value, message):
    with pytest.raises(ConfigError) as error:
        FilterArguments(**{key: value})
    assert str(error.value) == message


def test_precision_autocast(tiny_dinov2, jpegs, tmp_path):
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("fp32", "cuda") is None
    paths = []
    for i, data in enumerate(jpegs[:6]):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(data)
    fp32 = ImageEmbedder(tiny_dinov2, batch_size=4, device="cpu", decode_threads=2)
    bf16 = ImageEmbedder(tiny_dinov2, batch_size=4, device="cpu", precision="bf16")
    assert fp32.key != bf16.key and bf16.key.endswith("|bf16") and fp32.precision == "fp32"
    a, b = fp32.embed(map(str, paths)), bf16.embed(map(str, paths))
    assert a.shape == b.shape == (6, 32) and np.all((a * b).sum(axis=1) > 0.98)
    serial = ImageEmbedder(tiny_dinov2, batch_size=4, device="cpu").embed(map(str, paths))
    np.testing.assert_allclose(a, serial, atol=1e-6)  # decoding in threads changes nothing


@pytest.mark.parametrize(
    "name", ["BitImageProcessor", "CLIPImageProcessor", "ConvNextImageProcessor", "ViTImageProcessor"]
)
def test_batch_scaling_gives_the_processors_pixel_values(name, jpegs):
    import io

    import torch
    import transformers
    from PIL import Image

    processor = getattr(transformers, name)()
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs[:6]]
    images += [images[0].resize((500, 300)), images[1].resize((19, 23))]
    scaling = BatchScaling.of(processor)
    assert scaling is not None
    assert torch.equal(scaling(images), processor(images=images, return_tensors="pt")["pixel_values"])


def test_batch_scaling_only_where_it_is_the_same(jpegs):
    from transformers import BitImageProcessor, EfficientNetImageProcessor

    class Shifted(type(BitImageProcessor())):  # normalizes in another way: the probe images show it
        def normalize(self, image, mean, std, **kwargs):
            return super().normalize(image, mean, std, **kwargs) + 1

    assert BatchScaling.of(Shifted()) is None
    assert BatchScaling.of(EfficientNetImageProcessor()) is None  # rescale with an offset: another formula
    assert BatchScaling.of(BitImageProcessor(do_rescale=False, do_normalize=False)) is None  # nothing to take over
    assert BatchScaling.of(BitImageProcessor(do_normalize=False)) is not None


def test_embeddings_are_the_same_with_batch_scaling(tiny_dinov2, jpegs, tmp_path):
    paths = []
    for i, data in enumerate(jpegs[:10]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Path(paths[-1]).write_bytes(data)
    embedder = ImageEmbedder(tiny_dinov2, batch_size=4, device="cpu")
    assert embedder.scaling is not None
    fast = embedder.embed(paths)
    embedder.scaling = None  # the processor's own numpy path
    np.testing.assert_array_equal(fast, embedder.embed(paths))


FAULTS_OF_REUSED_BUFFERS = """
import resource, sys
import numpy as np
from neighbor_lt.retrieval.scoring import batch_memory_kept

def faults():
    for _ in range(2):  # the first one maps the block
        np.ones(40 << 20, np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):  # a pass's batch arrays: 40 MiB, allocated, written, freed
        np.ones(40 << 20, np.uint8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
with batch_memory_kept() as kept:
    during = faults()
print(kept, default, during, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_pass_reuses_its_freed_batch_buffers():
    """While scoring, a freed 40 MiB batch array is reused by the next batch, not unmapped and faulted back in page by
    page (the faults that cost the two-process pass its CPU); after the pass, glibc maps such blocks again."""
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSED_BUFFERS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kept, default, during, after = result.stdout.split()
    if kept == "False":
        pytest.skip("not glibc")
    assert int(default) >= 8 * 20  # at least one fault per 2 MiB (huge) page of each array
    assert int(during) < int(default) / 10
    assert int(after) >= 8 * 20
