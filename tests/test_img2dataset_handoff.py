"""Beyond one machine: our retrieve stage's ``urls.parquet`` through img2dataset's own ``download()`` (its
multiprocessing distributor; its Spark one in a slow test) against a loopback image server, then back through
``retrieve.img2dataset_dir``, the same filter and build, and ``load_dataset`` on the result."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from datasets import load_dataset
from retrieval_fixtures.server import ImageServer

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval.stages import run_build, run_filter, run_retrieve

AUXILIARY = {"goldfish": ("tench", range(0, 14)), "axolotl": ("tench", range(14, 22)), "koi": ("carp", range(22, 32))}
BROKEN = [("/corrupt.jpg", "goldfish (broken)"), ("/status/404", "axolotl (gone)"), ("/noai.jpg", "koi (opted out)")]


@pytest.fixture(scope="module")
def i2d_server(jpegs):
    results = {
        name: [(f"/img/{i}.jpg", f"/page/{i}", f"{name.title()} number {i}") for i in indices]
        for name, (_, indices) in AUXILIARY.items()
    }
    for path, caption in BROKEN:
        results[caption.split()[0]].append((path, "/page/x", caption))
    server = ImageServer(jpegs, search_results=results).start()
    yield server
    server.stop()


def search_urls(server, folder: Path) -> Path:
    """The README's first step: our retrieve stage with ``search_only``, which writes ``retrieve/urls.parquet``."""
    manifest = {
        "version": 1,
        "backend": "static",
        "targets": [{"index": 0, "name": "tench"}, {"index": 1, "name": "carp"}],
        "auxiliary": [{"name": name, "neighbor_of": [target]} for name, (target, _) in AUXILIARY.items()],
    }
    (folder / "neighbors").mkdir(parents=True)
    (folder / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    section = {
        "backend": "brave",
        "backend_kwargs": {"api_key": "test-key", "endpoint": server.url("/res/v1/images/search")},
        "search_only": True,
    }
    assert run_retrieve(section, CurateContext(str(folder))) == {"candidates": 32 + len(BROKEN)}
    return folder / "retrieve" / "urls.parquet"


def img2dataset_download(urls: Path, output: Path, distributor: str, output_format: str) -> None:
    """img2dataset as the README hands it the URL list (the same arguments at web scale, with more processes)."""
    from img2dataset import download

    download(
        url_list=str(urls), output_folder=str(output), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["aux_name", "neighbor_of", "page_url", "rank"], output_format=output_format,
        distributor=distributor, processes_count=2, thread_count=4, number_sample_per_shard=8, resize_mode="no",
        disable_all_reencoding=True, timeout=5, retries=0, enable_wandb=False, user_agent_token="neighbor-lt",
        disallowed_header_directives=["noai", "noimageai", "noindex", "noimageindex"],
    )  # fmt: skip


def ingest_filter_build(folder: Path, i2d: Path) -> dict:
    """The README's last step: the img2dataset output back through our retrieve (validation, dedup), filter, build."""
    context = CurateContext(str(folder))
    downloads = run_retrieve({"img2dataset_dir": str(i2d)}, context)
    # the 404 and the X-Robots-Tag opt-out never reached img2dataset's output; the corrupt bytes did
    assert downloads["ok"] == 32 and downloads["total"] == 33
    assert downloads["not_image"] == 1
    filtered = run_filter({"model_name_or_path": None, "leak_check": False}, context)
    assert filtered["kept"] == 32
    return run_build({"max_images_per_class": 12, "rows_per_shard": 10, "format": "webdataset"}, context)


def check_dataset(folder: Path, summary: dict, jpegs: list[bytes]) -> None:
    from neighbor_lt.data import load_aux_dataset

    aux = load_aux_dataset(str(folder / "aux_dataset"))  # the train recipe's aux_dataset: key
    raw = load_dataset(str(folder / "aux_dataset"), split="train")
    assert raw.features["cls"].names == aux.features["label"].names == list(AUXILIARY)
    assert summary["per_class"] == {"goldfish": 12, "axolotl": 8, "koi": 10} and len(aux) == 30
    for row in aux:
        name = aux.features["label"].names[row["label"]]
        index = int(row["source_url"].rsplit("/", 1)[1].split(".")[0])
        assert index in AUXILIARY[name][1] and row["neighbor_of"] == [AUXILIARY[name][0]]
        assert row["caption"] == f"{name.title()} number {index}" and row["page_url"].endswith(f"/page/{index}")
        assert row["sha256"] == hashlib.sha256(jpegs[index]).hexdigest() and row["image"].size == (64, 64)


def test_img2dataset_multiprocessing_handoff_end_to_end(i2d_server, jpegs, tmp_path):
    urls = search_urls(i2d_server, tmp_path)
    frame = pd.read_parquet(urls)
    assert list(frame.columns[:4]) == ["url", "caption", "aux_name", "neighbor_of"] and len(frame) == 35
    i2d = tmp_path / "i2d"
    img2dataset_download(urls, i2d, "multiprocessing", "webdataset")
    shards = sorted(p.name for p in i2d.glob("*.tar"))
    assert len(shards) == 5  # 35 URLs at 8 a shard, spread over the 2 processes
    stats = [json.loads(p.read_text()) for p in i2d.glob("*_stats.json")]
    assert sum(s["successes"] for s in stats) == 33 and sum(s["count"] for s in stats) == 35
    assert sum(s["status_dict"].get("Use of image disallowed by X-Robots-Tag directive", 0) for s in stats) == 1
    summary = ingest_filter_build(tmp_path, i2d)
    check_dataset(tmp_path, summary, jpegs)


SPARK_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_img2dataset_handoff import img2dataset_download
img2dataset_download(Path(sys.argv[2]), Path(sys.argv[3]), "pyspark", "parquet")
"""


@pytest.mark.slow
def test_img2dataset_spark_handoff_end_to_end(i2d_server, jpegs, tmp_path):
    pytest.importorskip("pyspark", reason="pyspark is in the distributed extra: pip install -e '.[distributed]'")
    if shutil.which("java") is None:
        pytest.skip("img2dataset's Spark distributor needs a Java runtime: apt-get install default-jre-headless")
    urls = search_urls(i2d_server, tmp_path)
    i2d = tmp_path / "i2d"
    # its own process: a local Spark session (2 cores, as img2dataset starts it) and its JVM end with it
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", SPARK_CHILD, str(Path(__file__).parent), str(urls), str(i2d)],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(i2d.glob("*.parquet"))) == 5
    summary = ingest_filter_build(tmp_path, i2d)
    check_dataset(tmp_path, summary, jpegs)
