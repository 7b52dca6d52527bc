"""The rank stage (issue 11): neighbors chosen by how confusable they look, on a tiny local pool of generated images.

The embedder is a deterministic colour embedder (the mean RGB of an image), so the geometry is known: red targets are
close to red candidates whatever their names say. One test runs the real ImageEmbedder on a tiny random DINOv2.
"""

import json
import os

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from neighbor_lt.configs import ConfigError
from neighbor_lt.curate import STAGES, CurateContext, load_config
from neighbor_lt.neighbors import rank
from neighbor_lt.neighbors.manifest import load_manifest
from neighbor_lt.neighbors.stage import run as run_neighbors
from neighbor_lt.retrieval import render_dataset_card
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.retrieval.stages import run_build, run_filter, run_retrieve

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30), "navy": (20, 20, 120)}
TARGETS = {"fire engine": "red", "ocean liner": "blue"}
POOL = {"school bus": "blue", "ambulance": "red", "tow truck": "green", "yacht": "navy", "canoe": "green"}
# name order: the name backend's ranking; "school bus" first for the fire engine although it looks like the liner
MAPPING = {"fire engine": ["school bus", "ambulance", "tow truck"], "ocean liner": ["unicorn", "canoe", "yacht"]}


def png(colour: str, seed: int) -> bytes:
    """A 32x32 noise texture around a colour: distinct perceptual hashes, a known mean colour."""
    import io

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-40, 41, (32, 32, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class ColourEmbedder:
    """Mean RGB, unit length: a red image is near a red prototype. Counts the images it embeds."""

    calls = 0
    key = "colour|mean"

    def embed(self, images, total=None, desc="embed"):
        rows = [np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0) for im in images]
        ColourEmbedder.calls += len(rows)
        rows = np.stack(rows) - 110.0  # centred, so colours point different ways
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def colour_embedder(monkeypatch):
    ColourEmbedder.calls = 0
    monkeypatch.setattr(rank, "load_embedder", lambda args: ColourEmbedder())
    return ColourEmbedder


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    rows = {"image": [], "caption": []}
    for i, (name, colour) in enumerate(POOL.items()):
        for j in range(6):
            rows["image"].append({"bytes": png(colour, 100 * i + j), "path": None})
            rows["caption"].append(name)
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    Dataset.from_dict(rows, features=Features({"image": Image(), "caption": Value("string")})).to_parquet(path)
    return str(path)


def make_target() -> DatasetDict:
    features = Features({"image": Image(), "label": ClassLabel(names=list(TARGETS))})
    rows = {"image": [], "label": []}
    for label, colour in enumerate(TARGETS.values()):
        rows["image"] += [{"bytes": png(colour, 1000 + 10 * label + j), "path": None} for j in range(5)]
        rows["label"] += [label] * 5
    return DatasetDict({"train": Dataset.from_dict(rows, features=features)})


def context_for(tmp_path, pool_file, target=None) -> CurateContext:
    retrieve = {"backend": "pool", "backend_kwargs": {"data_files": pool_file}, "max_results_per_query": 50}
    return CurateContext(str(tmp_path), target=target or make_target(), sections={"retrieve": retrieve})


def neighbors_section(factor=3, **extra):
    return {"backend": "static", "mapping": MAPPING, "k": 1, "ratios": [1, 1, 1], "use_wordnet": False,
            "candidate_factor": factor, **extra}  # fmt: skip


RANK = {"model_name_or_path": "colour", "probe_images": 4}
NAME_RANKED = {"fire engine": ["school bus"], "ocean liner": ["unicorn"]}  # the first name of each mapping


def kept(manifest) -> dict:
    return {e["name"]: e["kept"] for e in manifest["targets"]}


def test_a_visually_closer_candidate_wins_over_a_name_closer_one(tmp_path, pool_file, colour_embedder):
    context = context_for(tmp_path, pool_file)
    run_neighbors(neighbors_section(), context)
    name_ranked = load_manifest(tmp_path / "neighbors" / "neighbors.json")
    assert kept(name_ranked) == NAME_RANKED  # the names' choice, blind to what the pool holds
    candidates = load_manifest(tmp_path / "neighbors" / "candidates.json")
    assert [e["kept"] for e in candidates["targets"]] == list(MAPPING.values())
    assert [e["num_neighbors"] for e in candidates["targets"]] == [1, 1]

    manifest = rank.run(RANK, context)
    assert kept(manifest) == {"fire engine": ["ambulance"], "ocean liner": ["yacht"]}  # the images' choice
    assert load_manifest(tmp_path / "neighbors" / "neighbors.json")["auxiliary"] == manifest["auxiliary"]

    # the manifest: every pair, kept and dropped, with its name-level source and visual scores
    ranking = manifest["targets"][0]["ranking"]
    assert ranking["status"] == "ranked" and ranking["reason"] is None and ranking["score"] == "prototype"
    rows = {r["name"]: r for r in ranking["candidates"]}
    assert [r["name_rank"] for r in ranking["candidates"]] == [1, 2, 3]
    assert all(r["backend"] == "static" and r["probe_images"] == 4 for r in rows.values())  # counted and capped
    assert rows["ambulance"]["kept"] and rows["ambulance"]["visual_rank"] == 1 and rows["ambulance"]["confusion"] == 1
    assert rows["school bus"]["prototype"] < rows["ambulance"]["prototype"] and rows["school bus"]["confusion"] == 0
    assert not rows["school bus"]["kept"] and rows["school bus"]["reason"] == "beyond the 1 kept by visual score"
    assert set(rows["ambulance"]) >= {"wnid", "distance", "name_similarity", "prototype", "confusion", "score"}
    liner = {r["name"]: r for r in manifest["targets"][1]["ranking"]["candidates"]}
    assert liner["unicorn"]["probe_images"] == 0 and liner["unicorn"]["score"] is None  # a pool without the class
    assert liner["unicorn"]["reason"].startswith("no probe images: no search result")
    aux = {a["name"]: a for a in manifest["auxiliary"]}
    assert set(aux) == {"ambulance", "yacht"} and aux["ambulance"]["neighbor_of"] == ["fire engine"]
    assert aux["ambulance"]["prototype"] == [rows["ambulance"]["prototype"]] and aux["ambulance"]["confusion"] == [1]
    assert manifest["targets"][0]["scores"][0]["name"] == "ambulance" and manifest["targets"][0]["got"] == 1
    header = manifest["ranking"]
    assert header["status"] == "ran" and header["candidate_factor"] == 3 and header["targets_ranked"] == 2
    assert header["candidates_without_probes"] == ["unicorn"] and header["pairs"] == 6 and header["pairs_kept"] == 2

    # the confusability report
    report = (tmp_path / "rank" / "report.csv").read_text().splitlines()
    assert len(report) == 7 and report[0].startswith("target,target_query,group,status,candidate,name_rank")
    markdown = (tmp_path / "rank" / "report.md").read_text()
    assert "## fire engine" in markdown and "| ambulance | 2 |" in markdown
    assert (tmp_path / "rank" / "report.png").stat().st_size > 1000

    # the retrieve stage reuses the probes (no second fetch) and its records carry the final neighbor_of
    summary = run_retrieve(context.sections["retrieve"], context)
    records = read_downloads(tmp_path / "retrieve")
    assert {r["aux_name"] for r in records} == {"ambulance", "yacht"} and summary["ok"] == 12
    assert sum(bool(r.get("reused")) for r in records) == 8  # 4 probes of each kept class, 2 more fetched
    assert {tuple(r["neighbor_of"]) for r in records} == {("fire engine",), ("ocean liner",)}

    # the dataset card shows the ranking
    run_filter({"model_name_or_path": None, "leak_check": False}, context)
    run_build({"max_images_per_class": 10}, context)
    card = (tmp_path / "aux_dataset" / "README.md").read_text()
    assert "## Neighbors ranked by how they look" in card and "Strongest kept pairs" in card
    assert "| fire engine | ambulance |" in card and "| kept | 2 |" in card and "| dropped | 3 |" in card


def test_the_card_says_nothing_of_a_ranking_that_did_not_run():
    card = str(render_dataset_card("me/aux", num_images=1, num_classes=1, class_counts=[]))
    assert "ranked by how they look" not in card and "Strongest" not in card


def test_a_resumed_run_does_no_new_work(tmp_path, pool_file, colour_embedder):
    context = context_for(tmp_path, pool_file)
    run_neighbors(neighbors_section(), context)
    first = rank.run(RANK, context)
    embedded = colour_embedder.calls
    assert embedded == 10 + 20  # 10 target images, 4 probes of each of the 5 candidates in the pool
    lines = read_downloads(tmp_path / "rank" / "probes")
    stamp = os.stat(tmp_path / "neighbors" / "neighbors.json").st_mtime_ns
    again = rank.run(RANK, context)
    assert colour_embedder.calls == embedded  # nothing embedded, prototypes and probe embeddings from the cache
    assert read_downloads(tmp_path / "rank" / "probes") == lines  # nothing fetched
    assert os.stat(tmp_path / "neighbors" / "neighbors.json").st_mtime_ns == stamp and kept(again) == kept(first)

    # another score or floor costs nothing either; a floor drops a candidate even if its target ends up short
    floor = rank.run({**RANK, "score": "confusion", "min_score": 0.5}, context)
    assert colour_embedder.calls == embedded
    assert kept(floor) == {"fire engine": ["ambulance"], "ocean liner": ["yacht"]}
    strict = rank.run({**RANK, "min_score": 0.9999}, context)
    assert kept(strict)["fire engine"] == [] or kept(strict)["ocean liner"] == []
    dropped = [
        r for e in strict["targets"] for r in e["ranking"]["candidates"] if "below min_score" in str(r["reason"])
    ]
    assert dropped and strict["summary"]["short"] >= 1


def test_an_embedder_that_cannot_load_keeps_the_name_ranked_neighbors(tmp_path, pool_file):
    context = context_for(tmp_path, pool_file)
    run_neighbors(neighbors_section(), context)
    manifest = rank.run({**RANK, "model_name_or_path": str(tmp_path / "no-such-model")}, context)  # real loader
    assert kept(manifest) == NAME_RANKED
    assert manifest["ranking"]["status"] == "not_run" and "could not be loaded" in manifest["ranking"]["reason"]
    entry = manifest["targets"][0]["ranking"]
    assert entry["status"] == "name_ranked" and "no-such-model" in entry["reason"]
    assert all(r["score"] is None for r in entry["candidates"]) and entry["candidates"][0]["kept"]
    assert "did not run" in (tmp_path / "rank" / "report.md").read_text()
    # the probes were fetched before the model failed: a rerun with a working model fetches nothing again
    lines = read_downloads(tmp_path / "rank" / "probes")
    rank.load_embedder, real = (lambda args: ColourEmbedder()), rank.load_embedder
    try:
        assert kept(rank.run(RANK, context))["fire engine"] == ["ambulance"]
    finally:
        rank.load_embedder = real
    assert read_downloads(tmp_path / "rank" / "probes") == lines


def test_a_pool_without_the_candidates_or_a_target_without_images(tmp_path, pool_file, colour_embedder):
    # no candidate class in the pool: every target keeps its name-ranked neighbors, the manifest says why
    empty = tmp_path / "empty.parquet"
    image = {"bytes": png("red", 7), "path": None}
    features = Features({"image": Image(), "caption": Value("string")})
    Dataset.from_dict({"image": [image], "caption": ["teapot"]}, features=features).to_parquet(empty)
    context = context_for(tmp_path / "a", str(empty))
    run_neighbors(neighbors_section(), context)
    manifest = rank.run(RANK, context)
    assert manifest["ranking"]["status"] == "not_run" and "no candidate" in manifest["ranking"]["reason"]
    assert kept(manifest) == NAME_RANKED

    # a target without training images has no prototype: it alone keeps its name-ranked neighbors
    target = make_target()
    target["train"] = target["train"].filter(lambda row: row["label"] == 0)
    context = context_for(tmp_path / "b", pool_file, target)
    run_neighbors(neighbors_section(ratios=[1, 1, 1]), context)
    manifest = rank.run(RANK, context)
    statuses = {e["name"]: e["ranking"]["status"] for e in manifest["targets"]}
    assert statuses == {"fire engine": "ranked", "ocean liner": "name_ranked"}
    assert "no training image" in manifest["targets"][1]["ranking"]["reason"]


def test_rank_settings_and_the_default_stages(tmp_path):
    assert list(STAGES) == ["neighbors", "rank", "retrieve", "filter", "build"] and STAGES["rank"].optional
    base = {"output_dir": str(tmp_path), "neighbors": neighbors_section()}
    assert "rank" not in load_config(None, values=base).stages  # off unless the file has a rank: section
    config = load_config(None, ["--rank.probe_images", "8"], values={**base, "rank": {"model_name_or_path": "m"}})
    assert config.stages == list(STAGES) and config.arguments("rank").probe_images == 8
    assert config.context().arguments("retrieve").backend == "pool"  # the probes use the retrieve settings
    for bad, message in (({}, "model_name_or_path is required"), ({"model_name_or_path": "m", "score": "x"}, "score"),
                         ({"model_name_or_path": "m", "probe_images": 0}, "probe_images")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_config(None, values={**base, "rank": bad})
    with pytest.raises(ConfigError, match="candidate_factor"):
        load_config(None, values={**base, "neighbors": neighbors_section(factor=0)})


def test_rank_with_a_tiny_dinov2(tmp_path, pool_file, tiny_dinov2):
    model = tiny_dinov2
    context = context_for(tmp_path, pool_file)
    run_neighbors(neighbors_section(), context)
    manifest = rank.run({**RANK, "model_name_or_path": str(model), "score": "confusion"}, context)
    assert manifest["ranking"]["status"] == "ran" and manifest["ranking"]["pairs_scored"] == 5
    assert all(len(e["kept"]) == 1 for e in manifest["targets"])
    assert json.loads(json.dumps(manifest)) == load_manifest(tmp_path / "neighbors" / "neighbors.json")


def test_the_per_auxiliary_cap_applies_to_the_visual_choice():
    def entry(index, name, count, names):
        scores = [{"name": n, "wnid": None, "similarity": None, "distance": None} for n in names]
        return {"index": index, "name": name, "query": name, "count": count, "group": "few", "num_requested": 2,
                "num_neighbors": 1, "status": "ok", "proposed": names, "kept": names, "dropped": [], "got": 2,
                "top_up": None, "backend": "static", "scores": scores}  # fmt: skip

    def aux(name, targets):
        return {"name": name, "neighbor_of": targets, "wnid": None, "similarity": [None] * len(targets),
                "distance": [None] * len(targets), "sense_corrected": False, "suspect": None}  # fmt: skip

    candidates = {
        "version": 1, "backend": "static", "settings": {"max_targets_per_aux": 1},
        "targets": [entry(0, "rare", 5, ["x", "y"]), entry(1, "common", 50, ["x", "z"])],
        "auxiliary": [aux("x", ["rare", "common"]), aux("y", ["rare"]), aux("z", ["common"])],
    }  # fmt: skip
    visual = {
        "x": {"prototype": np.array([0.9, 0.95]), "confusion": np.array([0.5, 0.5])},
        "y": {"prototype": np.array([0.5, 0.0]), "confusion": np.array([0.5, 0.0])},
        "z": {"prototype": np.array([0.0, 0.4]), "confusion": np.array([0.0, 0.5])},
    }
    args = rank.RankArguments(model_name_or_path="m")
    present = {"rare": True, "common": True}
    manifest = rank.choose(candidates, args, visual, present, None, {"x": 4, "y": 4, "z": 4}, {}, {})
    assert kept(manifest) == {"rare": ["x"], "common": ["z"]}  # x serves one target: the rarer one
    capped = {r["name"]: r for r in manifest["targets"][1]["ranking"]["candidates"]}["x"]
    assert capped["reason"] == "cap: auxiliary class already serves 1 targets" and capped["visual_rank"] == 1
    assert [a["neighbor_of"] for a in manifest["auxiliary"]] == [["rare"], ["common"]]
    assert manifest["summary"]["kept"] == 2 and manifest["summary"]["max_targets_per_aux_class"] == 1


def test_web_probes_are_searched_and_fetched_once(tmp_path, tiny_imagenet_dir, colour_embedder):
    """Against the Brave image search API and an image host on 127.0.0.1: the retrieve stage reuses the rank stage's
    searches and probe images, so every search is sent once and every image fetched once."""
    from retrieval_fixtures.server import ImageServer, load_jpegs

    names = ["school bus", "ambulance", "tow truck", "canoe", "yacht"]
    results = {n: [(f"/img/{6 * c + i}.jpg", f"/page/{i}", f"{n} {i}") for i in range(6)] for c, n in enumerate(names)}
    server = ImageServer(load_jpegs(tiny_imagenet_dir, 40), search_results=results).start()
    try:
        retrieve = {
            "backend": "brave", "images_per_class": 6,
            "backend_kwargs": {"api_key": "test-key", "endpoint": server.url("/res/v1/images/search")},
            "download": {"allowed_networks": ["127.0.0.1/32"], "requests_per_second_per_host": 0, "num_workers": 2},
        }  # fmt: skip
        context = CurateContext(str(tmp_path), target=make_target(), sections={"retrieve": retrieve})
        run_neighbors(neighbors_section(), context)
        manifest = rank.run(RANK, context)
        assert manifest["ranking"]["status"] == "ran" and manifest["ranking"]["candidates_without_probes"] == [
            "unicorn"
        ]
        searches = server.requests["/res/v1/images/search"]
        assert searches == 6  # one per candidate, unicorn included
        assert sum(n for p, n in server.requests.items() if p.startswith("/img/")) == 5 * 4  # the probes only
        summary = run_retrieve(retrieve, context)
    finally:
        server.stop()
    assert server.requests["/res/v1/images/search"] == searches  # the retrieve stage searched nothing again
    fetched = {p: n for p, n in server.requests.items() if p.startswith("/img/")}
    assert max(fetched.values()) == 1 and len(fetched) == 5 * 4 + 2 * 2  # the 2 kept classes' other 2 images
    records = read_downloads(tmp_path / "retrieve")
    assert summary["ok"] == 12 and sum(bool(r.get("reused")) for r in records) == 8
    assert {r["aux_name"] for r in records} == set(kept(manifest)["fire engine"] + kept(manifest)["ocean liner"])


def test_the_filter_follows_the_current_manifest(tmp_path, pool_file, colour_embedder):
    """Retrieved before the ranking (the name-ranked 'school bus'), then ranked: the dataset holds the new choice."""
    import pandas as pd

    context = context_for(tmp_path, pool_file)
    run_neighbors(neighbors_section(), context)
    run_retrieve(context.sections["retrieve"], context)
    assert {r["aux_name"] for r in read_downloads(tmp_path / "retrieve")} == {"school bus"}
    rank.run(RANK, context)
    run_retrieve(context.sections["retrieve"], context)
    summary = run_filter({"model_name_or_path": None, "leak_check": False}, context)
    decisions = pd.read_parquet(tmp_path / "filter" / "decisions.parquet")
    assert set(decisions["aux_name"]) == {"ambulance", "yacht"} and summary["images"] == 12
    assert set(decisions["neighbor_of"]) == {'["fire engine"]', '["ocean liner"]'}


def test_filter_scores_are_redone_when_an_image_changes_targets(tmp_path, pool_file, tiny_dinov2):
    import pandas as pd

    from neighbor_lt.neighbors.manifest import save_manifest

    context = context_for(tmp_path, pool_file)
    run_neighbors(neighbors_section(), context)
    run_retrieve(context.sections["retrieve"], context)
    section = {"model_name_or_path": tiny_dinov2, "leak_check": False, "gamma_low": None, "gamma_high": None}
    run_filter(section, context)
    assert set(pd.read_parquet(tmp_path / "filter" / "decisions.parquet")["parent"]) == {"fire engine"}
    path = tmp_path / "neighbors" / "neighbors.json"
    manifest = load_manifest(path)
    manifest["auxiliary"][0]["neighbor_of"] = ["ocean liner"]  # school bus re-paired
    save_manifest(manifest, str(path))
    run_filter(section, context)
    decisions = pd.read_parquet(tmp_path / "filter" / "decisions.parquet")
    assert set(decisions["parent"]) == {"ocean liner"} and set(decisions["neighbor_of"]) == {'["ocean liner"]'}


def test_the_command_line_runs_rank_when_the_yaml_has_its_section(tmp_path, pool_file, tiny_dinov2):
    import yaml

    from neighbor_lt.curate import main

    make_target()["train"].to_parquet(tmp_path / "train.parquet")
    config = {
        "output_dir": str(tmp_path / "out"),
        "target": {"dataset_name": "parquet", "train_files": [str(tmp_path / "train.parquet")]},
        "neighbors": neighbors_section(),
        "rank": {"model_name_or_path": tiny_dinov2, "probe_images": 3},
        "retrieve": {"backend": "pool", "backend_kwargs": {"data_files": pool_file}, "max_results_per_query": 5},
        "filter": {"leak_check": False},
        "build": {"max_images_per_class": 5},
    }
    path = tmp_path / "curate.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path), "--stages", "rank"]) == 1  # no candidates yet: one line, exit 1
    assert main(["--config", str(path)]) == 0
    manifest = load_manifest(tmp_path / "out" / "neighbors" / "neighbors.json")
    assert manifest["ranking"]["status"] == "ran" and manifest["ranking"]["probe_images"] == 3
    assert yaml.safe_load((tmp_path / "out" / "curate_config.yaml").read_text())["rank"]["probe_images"] == 3
    card = (tmp_path / "out" / "aux_dataset" / "README.md").read_text()
    assert "## Neighbors ranked by how they look" in card
    records = read_downloads(tmp_path / "out" / "retrieve")
    assert len(records) == 10 and sum(bool(r.get("reused")) for r in records) == 6
