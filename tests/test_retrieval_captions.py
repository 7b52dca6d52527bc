"""The ``captions`` backend: whole-word matching of every name in one DuckDB pass over image-text metadata shards,
synonyms, ranking, filters, provenance, errors; and the chain captions -> retrieve -> filter -> build -> load."""

import gc
import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval import get_search_backend
from neighbor_lt.retrieval.captions import CaptionSearch
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.retrieval.records_store import RecordStore
from neighbor_lt.retrieval.search import Candidate, name_in_text
from neighbor_lt.retrieval.searches import open_searches
from neighbor_lt.retrieval.stages import StageError, run_build, run_filter, run_retrieve

LOOPBACK = {"allowed_networks": ["127.0.0.1/32"], "requests_per_second_per_host": 0, "num_workers": 4}


def write_shard(path, captions, urls=None, **columns):
    urls = urls or [f"http://img.test/{os.path.basename(path)}/{i}.jpg" for i in range(len(captions))]
    pq.write_table(pa.table({"url": urls, "caption": captions, **columns}), path)
    return str(path)


@pytest.fixture
def shard(tmp_path):
    captions = [
        "A cat on a mat",  # 0
        "Vintage catalog of lamps",  # 1: "cat" inside a word; "lamps" a plural
        "CAT-FOOD, 2kg bag",  # 2: 'cat' as a word after normalisation
        "Two cats playing",  # 3: a plural, folded by the leak guard's normalizer
        "concatenate",  # 4
        "A Great-White Shark off Cape Town!",  # 5: both 'great white shark' and 'white shark'
        "white sharks in the bay",  # 6
        "Café au lait with a CAT",  # 7: accents folded
        None,  # 8: no caption
        "nishikigoi pond",  # 9: a synonym of koi
    ]
    return write_shard(tmp_path / "part-0.parquet", captions, similarity=[0.1 * i for i in range(len(captions))])


def test_whole_words_every_name_in_one_pass(shard):
    backend = get_search_backend("captions", data_files=shard)
    hits = backend.search_many(
        {"cat": ["cat"], "great white shark": ["great white shark"], "white shark": ["white shark"], "lamp": ["lamp"]}
    )
    rows = {q: [int(h.page_url.rsplit("#row=", 1)[1]) for h in found] for q, found in hits.items()}
    assert rows == {"cat": [0, 2, 3, 7], "great white shark": [5], "white shark": [5, 6], "lamp": [1]}
    assert backend.stats["pairs"] == 8  # four terms and their plurals, matched in one query over the shard
    assert [h.query for h in hits["cat"]] == ["cat", "cat", "cats", "cat"]  # the term each caption matched
    for found in hits.values():
        assert all(name_in_text(h.query, h.caption) for h in found)  # what the caption filter will check
        assert [h.rank for h in found] == list(range(len(found)))
    first = hits["cat"][0]
    assert (first.image_url, first.caption, first.page_url) == (
        "http://img.test/part-0.parquet/0.jpg", "A cat on a mat", f"{shard}#row=0",
    )  # fmt: skip
    assert backend.search("cat") == hits["cat"]  # answered from the pass, no new one
    singular = get_search_backend("captions", data_files=shard, plurals=False)
    assert [h.caption for h in singular.search("cat")] == [
        "A cat on a mat",
        "CAT-FOOD, 2kg bag",
        "Café au lait with a CAT",
    ]
    assert [h.caption for h in backend.search("concatenate")] == ["concatenate"]  # a query not in the pass: its own


def test_synonyms_from_the_manifest_and_wordnet(tmp_path, shard):
    backend = get_search_backend("captions", data_files=shard)
    backend.prefetch({"koi": {"name": "koi", "synonyms": ["Nishikigoi"]}}, max_results=10)
    [hit] = backend.search("koi")
    assert (hit.query, hit.caption) == ("nishikigoi", "nishikigoi pond")  # the term the caption matched
    goldfish = write_shard(tmp_path / "gold.parquet", ["Carassius auratus in a bowl", "a goldfish", "gold fish"])
    backend = get_search_backend("captions", data_files=goldfish)
    backend.prefetch({"goldfish": {"name": "goldfish", "wnid": "n01443537"}}, max_results=10)
    assert [h.caption for h in backend.search("goldfish")] == ["Carassius auratus in a bowl", "a goldfish"]
    plain = get_search_backend("captions", data_files=goldfish, synonyms=False)
    plain.prefetch({"goldfish": {"name": "goldfish", "wnid": "n01443537"}}, max_results=10)
    assert [h.caption for h in plain.search("goldfish")] == ["a goldfish"]


def test_ranking_by_score_dedup_and_several_shards(tmp_path):
    a = write_shard(
        tmp_path / "a.parquet", ["dog one", "dog two", "dog three"], ["http://x/1", "http://x/2", "http://x/3"],
        clip=[0.2, 0.9, None],
    )  # fmt: skip
    b = write_shard(
        tmp_path / "b.parquet", ["a dog", "dog again", "no match"], ["http://x/2", "http://x/4", "http://x/5"],
        clip=[0.95, 0.5, 0.99],
    )  # fmt: skip
    ranked = get_search_backend("captions", data_files=str(tmp_path / "*.parquet"), score_column="clip")
    hits = ranked.search("dog", max_results=10)
    # http://x/2 is listed twice: its best row (b.parquet row 0, 0.95) wins; no score comes last
    assert [(h.image_url, h.page_url) for h in hits] == [
        ("http://x/2", f"{b}#row=0"), ("http://x/4", f"{b}#row=1"), ("http://x/1", f"{a}#row=0"),
        ("http://x/3", f"{a}#row=2"),
    ]  # fmt: skip
    assert [h.image_url for h in ranked.search_many({"dog": ["dog"]}, max_results=2)["dog"]] == [
        "http://x/2",
        "http://x/4",
    ]
    batched = get_search_backend("captions", data_files=[a, b], score_column="clip", shards_per_batch=1)
    assert batched.search("dog", max_results=10) == hits  # merged across batches: the same best rows, deduplicated
    assert [h.image_url for h in batched.search_many({"dog": ["dog"]}, max_results=2)["dog"]] == [
        "http://x/2",
        "http://x/4",
    ]
    unranked = get_search_backend("captions", data_files=[a, b])  # no score: shard, then row order
    assert [h.page_url for h in unranked.search("dog")] == [f"{a}#row=0", f"{a}#row=1", f"{a}#row=2", f"{b}#row=1"]


def test_size_and_nsfw_filters(tmp_path):
    path = write_shard(
        tmp_path / "s.parquet", ["fox"] * 5, width=[512, 100, 512, None, 512], height=[512, 512, 512, 512, 512],
        punsafe=[0.01, 0.0, 0.9, 0.0, None], NSFW=["UNLIKELY", "UNLIKELY", "UNLIKELY", "NSFW", "UNSURE"],
    )  # fmt: skip
    sized = dict(data_files=path, width_column="width", height_column="height", min_width=256, min_height=256)
    rows = lambda backend: [int(h.page_url.rsplit("=", 1)[1]) for h in backend.search("fox")]  # noqa: E731
    assert rows(get_search_backend("captions", **sized)) == [0, 2, 3, 4]  # unknown width kept
    assert rows(get_search_backend("captions", **sized, nsfw_column="punsafe", max_nsfw=0.1)) == [0, 3, 4]
    assert rows(get_search_backend("captions", data_files=path, nsfw_column="NSFW")) == [0, 1, 2]
    assert rows(get_search_backend("captions", data_files=path, nsfw_column="NSFW", nsfw_keep=["unlikely", "unsure"])) == [
        0, 1, 2, 4,
    ]  # fmt: skip


def test_bad_configuration_is_one_clear_line(tmp_path):
    laion = write_shard(tmp_path / "laion.parquet", ["a fox"], similarity=[0.3])
    pq.write_table(pa.table({"URL": ["http://x/1"], "TEXT": ["a fox"]}), tmp_path / "old.parquet")
    with pytest.raises(ValueError) as error:
        CaptionSearch(str(tmp_path / "*.parquet"))
    message = str(error.value)
    assert "url_column 'url' is not a column of" in message and "old.parquet" in message
    assert "its columns: URL, TEXT" in message and "\n" not in message
    with pytest.raises(ValueError, match="score_column 'clip_score' is not a column of .*its columns: url, caption"):
        CaptionSearch(laion, score_column="clip_score")
    with pytest.raises(ValueError, match="matches no Parquet file"):
        CaptionSearch(str(tmp_path / "nothing-*.parquet"))
    with pytest.raises(ValueError, match="min_width / min_height need width_column"):
        CaptionSearch(laion, min_width=100)
    assert [h.caption for h in CaptionSearch(str(tmp_path / "old.parquet"), "URL", "TEXT").search("fox")] == ["a fox"]


def test_captions_retrieve_filter_build_load(server, tmp_path, monkeypatch):
    """Metadata whose URLs point at the loopback image server -> retrieve (one pass for every name, downloads) ->
    filter (caption) -> build -> load_dataset, with each image's shard and row recorded."""
    shards = tmp_path / "metadata"
    shards.mkdir()
    first = write_shard(
        shards / "part-00000.parquet",
        ["Teddy bear on a bed", "a koi pond at dusk", "Nishikigoi (Japanese carp) in a pond", "teddy-bear picnic",
         "grey squirrel", "catalog of teddy bears"],
        [server.url(f"/img/{i}.jpg") for i in range(6)], similarity=[0.31, 0.25, 0.33, 0.30, 0.2, 0.4],
    )  # fmt: skip
    second = write_shard(
        shards / "part-00001.parquet",
        ["KOI, Tokyo", "my teddy bear", "a broken teddy bear link", "koi"],
        [server.url("/img/6.jpg"), server.url("/img/7.jpg"), server.url("/status/404"), server.url("/img/1.jpg")],
        similarity=[0.28, 0.27, 0.35, 0.1],
    )  # fmt: skip
    manifest = {
        "version": 1,
        "backend": "static",
        "targets": [
            {"index": 0, "name": "goldfish", "query": "goldfish"},
            {"index": 1, "name": "toy", "query": "toy"},
        ],
        "auxiliary": [
            {"name": "koi", "neighbor_of": ["goldfish"], "synonyms": ["nishikigoi"]},
            {"name": "teddy bear", "neighbor_of": ["toy"]},
            {"name": "unicorn", "neighbor_of": ["toy"]},
        ],
    }
    (tmp_path / "neighbors").mkdir()
    (tmp_path / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    context = CurateContext(str(tmp_path))
    section = {
        "backend": "captions",
        "backend_kwargs": {"data_files": str(shards / "*.parquet"), "score_column": "similarity"},
        "max_results_per_query": 20,
        "download": LOOPBACK,
    }
    passes, real_sql = [], CaptionSearch._sql
    monkeypatch.setattr(CaptionSearch, "_sql", lambda self, k: passes.append(k) or real_sql(self, k))
    summary = run_retrieve(section, context)
    assert passes == [20]  # one pass over the shards for all three names
    assert summary["total"] == 8 and summary["ok"] == 7 and summary["http_error"] == 1
    assert run_retrieve(section, context)["total"] == 8 and passes == [20]  # resumed from searches.sqlite
    records = read_downloads(tmp_path / "retrieve")
    urls = pd.read_parquet(tmp_path / "retrieve" / "urls.parquet")  # the img2dataset hand-off keeps the provenance
    assert set(urls["page_url"]) == {r["page_url"] for r in records}
    by_url = {r["source_url"]: r for r in records if r["aux_name"] == "koi"}
    assert by_url[server.url("/img/2.jpg")]["query"] == "nishikigoi"  # found by its synonym
    assert by_url[server.url("/img/1.jpg")]["page_url"] == f"{first}#row=1"  # listed twice: the better row kept
    assert [r["rank"] for r in sorted(by_url.values(), key=lambda r: r["rank"])] == [0, 1, 2]

    assert run_filter({"model_name_or_path": None, "leak_check": False}, context)["kept"] == 7  # synonyms pass too
    summary = run_build({"max_images_per_class": 10, "selection": "rank"}, context)
    aux = load_dataset(str(tmp_path / "aux_dataset"), split="train")
    names = aux.features["label"].names
    assert names == ["koi", "teddy bear"] and summary["images"] == len(aux) == 7
    assert sorted(names[label] for label in aux["label"]) == ["koi"] * 3 + ["teddy bear"] * 4  # 'teddy bears' too
    readme = (tmp_path / "aux_dataset" / "README.md").read_text()
    assert "search backend `captions` (" + str(shards / "*.parquet") + ")" in readme  # the card names the metadata
    tables = {first: pq.read_table(first).to_pylist(), second: pq.read_table(second).to_pylist()}
    for row in aux:
        shard, number = row["page_url"].rsplit("#row=", 1)
        source = tables[shard][int(number)]  # the recorded shard and row hold this image's URL and caption
        assert source["url"] == row["source_url"] and source["caption"] == row["caption"]
        assert name_in_text(row["query"], row["caption"]) and row["image"].size == (64, 64)
        assert row["neighbor_of"] == (["goldfish"] if names[row["label"]] == "koi" else ["toy"])


def test_a_failed_pass_stops_the_stage_without_a_pass_per_name(tmp_path, monkeypatch):
    path = write_shard(tmp_path / "m.parquet", ["a koi"])
    (tmp_path / "neighbors").mkdir()
    manifest = {"version": 1, "targets": [], "auxiliary": [{"name": n, "neighbor_of": ["x"]} for n in ("koi", "carp")]}
    (tmp_path / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    section = {"backend": "captions", "backend_kwargs": {"data_files": path}}
    passes = []

    def broken(self, k):
        passes.append(k)
        return "SELECT * FROM no_such_table"

    monkeypatch.setattr(CaptionSearch, "_sql", broken)
    with pytest.raises(StageError, match="search \\(captions\\): CatalogException"):
        run_retrieve(section, CurateContext(str(tmp_path)))
    assert len(passes) == 1


def _live_candidates() -> int:
    """Candidate objects alive in this process (what holding a pass's hits would show)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Candidate)


NAMES = ["apple", "birch", "cedar", "daisy", "maple", "olive", "tulip", "willow"]


def test_the_stage_holds_one_query_of_the_pass_at_a_time(tmp_path, monkeypatch):
    """The retrieve stage's search loop is handed the prefetched pass query by query: while it stores a query's
    search, Python holds that query's candidates and the next query's, not every hit of the pass; and what it stores
    is what the one-shot ``search_many`` finds (same candidates, order and ranks)."""
    captions = [f"a {name} number {i}" for i in range(6) for name in NAMES if name != "daisy"]  # daisy: no hit
    path = write_shard(tmp_path / "m.parquet", captions, similarity=[(i * 7 % 10) / 10 for i in range(len(captions))])
    (tmp_path / "neighbors").mkdir()
    manifest = {"version": 1, "targets": [], "auxiliary": [{"name": n, "neighbor_of": ["x"]} for n in NAMES]}
    (tmp_path / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    section = {
        "backend": "captions", "backend_kwargs": {"data_files": path, "score_column": "similarity"},
        "max_results_per_query": 5, "search_only": True,
    }  # fmt: skip
    live, real_put, before = [], RecordStore.put, _live_candidates()

    def put(self, record):
        if "aux_name" in record:  # a search stored by the loop
            live.append(_live_candidates() - before)
        return real_put(self, record)

    monkeypatch.setattr(RecordStore, "put", put)
    assert run_retrieve(section, CurateContext(str(tmp_path))) == {"candidates": 5 * 7}
    assert len(live) == len(NAMES) and max(live) <= 2 * 5  # the query stored and the one read ahead
    expected = CaptionSearch(path, score_column="similarity").search_many({n: [n] for n in NAMES}, max_results=5)
    with open_searches(str(tmp_path / "retrieve")) as cache:
        assert cache._db.execute("PRAGMA cache_size").fetchone()[0] == -4 * 1024  # KiB: each record is read once
        for name in NAMES:
            record = cache.get(name)
            assert record["status"] == ("empty" if name == "daisy" else "ok")
            stored = [
                (c["query"], c["image_url"], c["page_url"], c["caption"], c["rank"]) for c in record["candidates"]
            ]
            assert stored == [(h.query, h.image_url, h.page_url, h.caption, h.rank) for h in expected[name]]


def test_a_prefetched_pass_answers_in_any_order_and_once(tmp_path, monkeypatch):
    path = write_shard(tmp_path / "m.parquet", [f"{name} {i}" for i in range(3) for name in ("koi", "carp", "pike")])
    passes, real_sql = [], CaptionSearch._sql
    monkeypatch.setattr(CaptionSearch, "_sql", lambda self, k: passes.append(k) or real_sql(self, k))
    expected = CaptionSearch(path).search_many({n: [n] for n in ("koi", "carp", "pike", "eel")}, max_results=10)
    backend, before = CaptionSearch(path), _live_candidates()
    backend.prefetch({n: {"name": n} for n in ("koi", "eel", "carp", "pike")}, max_results=10)
    assert len(passes) == 2 and _live_candidates() - before == 3  # the first query read ahead, not the whole pass
    assert backend.search("pike") == expected["pike"]  # asked first: koi and carp are read past and kept
    assert backend.search("eel") == []  # no hit
    assert backend.search("koi") == expected["koi"] and backend.search("carp") == expected["carp"]
    assert len(passes) == 2  # all from the one pass
    assert backend.search("koi") == expected["koi"] and len(passes) == 3  # handed over once: asked again, a new pass
