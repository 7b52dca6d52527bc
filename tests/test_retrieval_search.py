"""Search backends against loopback APIs in each format, the URL-list backend, the web retrieve stage and the
img2dataset hand-off."""

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from retrieval_fixtures.server import ImageServer, load_jpegs

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval import get_search_backend
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.retrieval.search import Candidate
from neighbor_lt.retrieval.searches import URL_COLUMNS, UrlsWriter, open_searches
from neighbor_lt.retrieval.stages import StageError, run_retrieve

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
        "brave": {"api_key": "test-key", "endpoint": server.url("/res/v1/images/search")},
        "serpapi": {"api_key": "test-key", "endpoint": server.url("/search.json")},
    }[name]


@pytest.mark.parametrize("name", ["google", "brave", "serpapi"])
def test_web_search_apis(server, name):
    backend = get_search_backend(name, **api_kwargs(server, name))
    hits = backend.search("goldfish", max_results=22)  # more than one page for google
    assert [h.image_url for h in hits] == [server.url(f"/img/{i}.jpg") for i in range(22)]
    assert hits[3].page_url == server.url("/page/3") and hits[3].caption == "Goldfish number 3"
    assert [h.rank for h in hits] == list(range(22))
    assert backend.search("no such thing", max_results=5) == []


def test_api_key_from_environment(server, monkeypatch):
    with pytest.raises(ValueError, match="GOOGLE_API_KEY"):
        get_search_backend("google", cx="c", endpoint=server.url("/customsearch/v1"))
    monkeypatch.setenv("BRAVE_API_KEY", "test-key")
    backend = get_search_backend("brave", endpoint=server.url("/res/v1/images/search"))
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
    context = CurateContext(str(tmp_path))
    section = {
        "backend": "google",
        "backend_kwargs": api_kwargs(server, "google"),
        "max_results_per_query": 12,
        "download": LOOPBACK,
    }
    summary = run_retrieve(section, context)
    assert summary["ok"] == 13 and summary["not_image"] == 1 and summary["total"] == 14
    records = read_downloads(tmp_path / "retrieve")
    assert {tuple(r["neighbor_of"]) for r in records} == {("tench",)}
    api_calls = server.requests["/customsearch/v1"]
    assert run_retrieve(section, context)["total"] == 14  # resumed: no new search, no new download
    assert server.requests["/customsearch/v1"] == api_calls
    assert len(read_downloads(tmp_path / "retrieve")) == 14

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
    ingest = run_retrieve({"img2dataset_dir": str(i2d)}, CurateContext(str(other)))
    assert ingest["ok"] == 13 and ingest["not_image"] == 1  # the same validation as our own downloader
    ingested = read_downloads(other / "retrieve")
    assert {r["aux_name"] for r in ingested} == {"goldfish", "axolotl"}
    assert {tuple(r["neighbor_of"]) for r in ingested} == {("tench",)}
    assert {r.get("sha256") for r in ingested if r["outcome"] == "ok"} == {
        r["sha256"] for r in records if r["outcome"] == "ok"
    }


def test_importing_retrieval_switches_off_albumentations_update_check():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    code = "import os, neighbor_lt.retrieval; print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"


def write_manifest(folder, auxiliary, targets=("tench",)):
    (folder / "neighbors").mkdir(parents=True, exist_ok=True)
    manifest = {"version": 1, "backend": "static", "targets": [{"index": i, "name": t} for i, t in enumerate(targets)]}
    (folder / "neighbors" / "neighbors.json").write_text(json.dumps({**manifest, "auxiliary": auxiliary}))


@pytest.mark.parametrize(
    "auxiliary, message",
    [
        (
            [{"name": "goldfish", "neighbor_of": ["tench"]}, {"neighbor_of": ["tench"]}],
            r"auxiliary\[1\] has no 'name'",
        ),
        (
            [{"name": "goldfish", "neighbor_of": ["trout"]}],
            r"'goldfish' is a neighbor of unknown target\(s\) \['trout'\]",
        ),
        ([{"name": "goldfish"}], "'goldfish' has no 'neighbor_of' list"),
    ],
)
def test_a_bad_manifest_fails_before_any_request(server, tmp_path, auxiliary, message):
    write_manifest(tmp_path, auxiliary)
    before = server.requests.copy()
    section = {"backend": "google", "backend_kwargs": api_kwargs(server, "google"), "download": LOOPBACK}
    with pytest.raises(StageError, match=message):
        run_retrieve(section, CurateContext(str(tmp_path)))
    assert server.requests == before


def test_zero_results_are_recorded_and_asked_again_with_retry_failed(server, tmp_path, caplog):
    write_manifest(tmp_path, [{"name": n, "neighbor_of": ["tench"]} for n in ("axolotl", "unicorn")])
    context = CurateContext(str(tmp_path))
    section = {"backend": "serpapi", "backend_kwargs": api_kwargs(server, "serpapi"), "download": LOOPBACK}
    with caplog.at_level("INFO"):
        summary = run_retrieve(section, context)
    assert summary["ok"] == 1 and summary["not_image"] == 1
    with open_searches(str(tmp_path / "retrieve")) as cache:
        searches = {r["aux_name"]: r for r in cache.iter()}
    assert searches["unicorn"]["status"] == "empty" and searches["unicorn"]["candidates"] == []
    assert "1 with zero results ('unicorn')" in caplog.text and "--retry_failed" in caplog.text
    calls = server.requests["/search.json"]
    run_retrieve(section, context)
    assert server.requests["/search.json"] == calls  # cached: a plain rerun asks nothing
    run_retrieve({**section, "retry_failed": True}, context)
    assert server.requests["/search.json"] == calls + 1  # only the empty query is asked again


CANARIES = {"env": "canary-env-7f3a9c1e", "inline": "canary-inline-5b2d8e40", "url": "canary-url-91c4f7aa"}


def run_curate(tmp_path, name, retrieve, env_key=None, env_var="GOOGLE_API_KEY"):
    """Run recipes/curate.py --stages retrieve in a subprocess; returns (exit status, stdout + stderr)."""
    import subprocess
    import sys

    import yaml

    config = {"output_dir": str(tmp_path / name), "stages": ["retrieve"], "target": {}, "retrieve": retrieve}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    keys = ("GOOGLE_API_KEY", "GOOGLE_CSE_ID", "BRAVE_API_KEY", "SERPAPI_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in keys}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if env_key:
        env[env_var] = env_key
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "recipes" / "curate.py"), "--config", str(path)],
        env=env, capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def leaks(folder, text, secrets):
    """The canaries found in ``text`` or in any file under ``folder``."""
    found = {s for s in secrets if s in text}
    for path in Path(folder).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found |= {f"{s} in {path.name}" for s in secrets if s.encode() in data}
    return found


def test_api_keys_never_leave_memory_and_all_failed_searches_exit_non_zero(tiny_imagenet_dir, tmp_path):
    server = ImageServer(load_jpegs(tiny_imagenet_dir, 40), search_results=RESULTS, api_key=CANARIES["env"]).start()
    try:
        auxiliary = [
            {"name": n, "neighbor_of": ["tench"]} for n in ["goldfish", "axolotl"] + [f"x{i}" for i in range(8)]
        ]
        write_manifest(tmp_path, auxiliary)
        endpoint = server.url("/customsearch/v1").replace("http://", f"http://user:{CANARIES['url']}@")
        retrieve = {
            "backend": "google",
            "backend_kwargs": {"cx": "test-cx", "endpoint": endpoint},
            "neighbor_manifest": str(tmp_path / "neighbors" / "neighbors.json"),
            "max_results_per_query": 12,
            "download": LOOPBACK,
        }
        # the right key, from the environment: works, and the key is in no stream and no file
        status, output = run_curate(tmp_path, "good", retrieve, env_key=CANARIES["env"])
        assert status == 0, output[-3000:]
        assert "retrieve (google): 14 candidate(s): 13 ok" in output
        assert "8 with zero results" in output
        assert not leaks(tmp_path / "good", output, CANARIES.values())

        # a wrong key inline in the config: the API's own message once, queries stop, exit status 1, no key anywhere
        calls = server.requests["/customsearch/v1"]
        bad = {**retrieve, "backend_kwargs": {**retrieve["backend_kwargs"], "api_key": CANARIES["inline"]}}
        status, output = run_curate(tmp_path, "bad", bad)
        assert status == 1, output[-3000:]
        assert (
            output.count("API key not valid. Please pass a valid API key. (INVALID_ARGUMENT, 400)") == 2
        )  # + last line
        assert "stage retrieve failed: search (google): all 10 search(es) failed (5 not sent)" in output
        assert server.requests["/customsearch/v1"] == calls + 5  # max_consecutive_search_errors, not all 10
        assert "<redacted>" in (tmp_path / "bad" / "retrieve" / "config.json").read_text()
        assert not leaks(tmp_path / "bad", output, CANARIES.values())
    finally:
        server.stop()


def test_urls_parquet_is_written_in_row_groups(tmp_path):
    """urls.parquet holds every hit in order, in row groups of at most ``chunk`` URLs written as the hits come."""
    path = tmp_path / "urls.parquet"
    writer = UrlsWriter(str(path), chunk=3)
    hits = [
        Candidate(f"koi {i % 2}", f"http://x/{i}.jpg", f"shard#row={i}", f"koi {i}", i, aux_name="koi",
                  neighbor_of=["goldfish", "carp"])
        for i in range(7)
    ]  # fmt: skip
    writer.add(hits[:4])
    assert os.path.getsize(writer.tmp) > 0 and writer.columns["url"] == []  # written as it came, not held
    writer.add(hits[4:])
    writer.finish()
    assert not os.path.exists(writer.tmp)
    table = pq.read_table(path)
    assert table.column_names == list(URL_COLUMNS) and str(table.schema.field("rank").type) == "int64"
    assert table.to_pylist() == [
        {"url": h.image_url, "caption": h.caption, "aux_name": "koi", "neighbor_of": '["goldfish", "carp"]',
         "page_url": h.page_url, "rank": h.rank, "query": h.query}
        for h in hits
    ]  # fmt: skip
    assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(2)] == [4, 3]
