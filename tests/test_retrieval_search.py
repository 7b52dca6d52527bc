"""Search backends against loopback APIs in each format, the URL-list backend, the web retrieve stage and the
img2dataset hand-off."""

import json
import os
from types import SimpleNamespace

import pandas as pd
import pytest
from retrieval_fixtures.server import ImageServer, load_jpegs

from neighbor_lt.retrieval import get_search_backend
from neighbor_lt.retrieval.download import read_jsonl
from neighbor_lt.retrieval.stages import run_retrieve

os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # img2dataset imports albumentations, which would check PyPI

RESULTS = {
    "goldfish": [(f"/img/{i}.jpg", f"/page/{i}", f"Goldfish number {i}") for i in range(25)],
    "axolotl": [("/img/30.jpg", "/page/30", "An axolotl"), ("/corrupt.jpg", "/page/c", "axolotl (broken)")],
}
LOOPBACK = {"allowed_networks": ["127.0.0.1/32"], "requests_per_second_per_host": 0, "num_workers": 4}


@pytest.fixture(scope="module")
def server(tiny_imagenet_dir):
    server = ImageServer(load_jpegs(tiny_imagenet_dir, 40), search_results=RESULTS).start()
    yield server
    server.stop()


def api_kwargs(server, name):
    return {
        "google": {"api_key": "test-key", "cx": "test-cx", "endpoint": server.url("/customsearch/v1")},
        "bing": {"api_key": "test-key", "endpoint": server.url("/v7.0/images/search"), "page_size": 10},
        "duckduckgo": {"endpoint": server.url("/ddg")},
    }[name]


@pytest.mark.parametrize("name", ["google", "bing", "duckduckgo"])
def test_web_search_apis(server, name):
    backend = get_search_backend(name, **api_kwargs(server, name))
    hits = backend.search("goldfish", max_results=22)  # more than one page for google and bing
    assert [h.image_url for h in hits] == [server.url(f"/img/{i}.jpg") for i in range(22)]
    assert hits[3].page_url == server.url("/page/3") and hits[3].caption == "Goldfish number 3"
    assert [h.rank for h in hits] == list(range(22))
    assert backend.search("no such thing", max_results=5) == []


def test_api_key_from_environment(server, monkeypatch):
    with pytest.raises(ValueError, match="GOOGLE_API_KEY"):
        get_search_backend("google", cx="c", endpoint=server.url("/customsearch/v1"))
    monkeypatch.setenv("BING_SEARCH_KEY", "test-key")
    backend = get_search_backend("bing", endpoint=server.url("/v7.0/images/search"))
    assert len(backend.search("axolotl")) == 2
    with pytest.raises(ValueError, match="unknown search backend"):
        get_search_backend("altavista")


def test_url_list_backend(tmp_path):
    path = tmp_path / "urls.csv"
    pd.DataFrame(
        {"name": ["Goldfish", "goldfish", "koi"], "url": ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg"],
         "caption": ["a goldfish", "gold fish", "a koi"]}
    ).to_csv(path, index=False)  # fmt: skip
    backend = get_search_backend("urls", path=str(path))
    assert [h.image_url for h in backend.search("goldfish")] == ["http://a/1.jpg", "http://a/2.jpg"]
    no_names = get_search_backend("urls", path=str(path), name_column=None)
    assert [h.image_url for h in no_names.search("koi")] == ["http://a/3.jpg"]


def test_web_retrieve_stage_caches_searches_and_hands_off_to_img2dataset(server, tmp_path):
    manifest = {
        "version": 1,
        "backend": "static",
        "targets": [{"index": 0, "name": "tench", "query": "tench"}],
        "auxiliary": [{"name": "goldfish", "neighbor_of": ["tench"]}, {"name": "axolotl", "neighbor_of": ["tench"]}],
    }
    (tmp_path / "neighbors").mkdir()
    (tmp_path / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    context = SimpleNamespace(output_dir=str(tmp_path), target=None)
    section = {
        "backend": "google",
        "backend_kwargs": api_kwargs(server, "google"),
        "max_results_per_query": 12,
        "download": LOOPBACK,
    }
    summary = run_retrieve(section, context)
    assert summary["ok"] == 13 and summary["not_image"] == 1 and summary["total"] == 14
    records = read_jsonl(tmp_path / "retrieve" / "downloads.jsonl")
    assert {tuple(r["neighbor_of"]) for r in records} == {("tench",)}
    api_calls = server.requests["/customsearch/v1"]
    assert run_retrieve(section, context)["total"] == 14  # resumed: no new search, no new download
    assert server.requests["/customsearch/v1"] == api_calls
    assert len(read_jsonl(tmp_path / "retrieve" / "downloads.jsonl")) == 14

    # the same URL list through img2dataset (what runs on Spark / Ray at web scale), then ingested
    from img2dataset import download

    urls = tmp_path / "retrieve" / "urls.parquet"
    assert len(pd.read_parquet(urls)) == 14
    i2d = tmp_path / "i2d"
    download(
        url_list=str(urls), output_folder=str(i2d), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["aux_name", "neighbor_of", "page_url", "rank"], output_format="files",
        processes_count=1, thread_count=4, resize_mode="no", distributor="multiprocessing", timeout=5, retries=0,
        disallowed_header_directives=[], disable_all_reencoding=True,
    )  # fmt: skip
    other = tmp_path / "ingest"
    (other / "neighbors").mkdir(parents=True)
    (other / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    ingest = run_retrieve({"img2dataset_dir": str(i2d)}, SimpleNamespace(output_dir=str(other), target=None))
    assert ingest["ok"] == 13 and ingest["not_image"] == 1  # the same validation as our own downloader
    ingested = read_jsonl(other / "retrieve" / "downloads.jsonl")
    assert {r["aux_name"] for r in ingested} == {"goldfish", "axolotl"}
    assert {tuple(r["neighbor_of"]) for r in ingested} == {("tench",)}
    assert {r.get("sha256") for r in ingested if r["outcome"] == "ok"} == {
        r["sha256"] for r in records if r["outcome"] == "ok"
    }
