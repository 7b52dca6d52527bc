"""The offline chain on real Tiny-ImageNet images: pool retrieve -> filter (tiny random DINOv2) -> build -> load."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from retrieval_fixtures.targets import TARGETS, leaky_target

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval import caption_matches, decide, render_dataset_card, select_per_class
from neighbor_lt.retrieval.download import read_downloads
from neighbor_lt.retrieval.stages import StageError, run_build, run_filter, run_retrieve

AUXILIARY = [
    {"name": "tailed frog", "neighbor_of": ["n01641577"], "wnid": "n01644900"},  # matched by id
    {"name": "black widow", "neighbor_of": ["n01774750"]},  # matched by name
    {"name": "scorpion", "neighbor_of": ["n01774750", "n02099601"]},
    {"name": "Labrador retriever", "neighbor_of": ["n02099601"], "wnid": "n02099712"},
    {"name": "bullfrog", "neighbor_of": ["n01774750"]},  # a target class: the pool never returns it
    {"name": "unicorn", "neighbor_of": ["n02099601"]},  # nothing in the pool
]


@pytest.fixture(scope="module")
def valid_rows(tiny_imagenet_dir):
    table = pq.read_table(tiny_imagenet_dir / "valid-00000-of-00001.parquet")
    return table.to_pydict()


def test_caption_filter_and_decisions():
    assert caption_matches("tailed frog", "tailed frog, bell toad")
    assert not caption_matches("frog", "frogman in a suit")
    assert decide({"caption_ok": False}, 0.5, 0.9, 0.95, 4) == (False, "caption")
    assert decide({"caption_ok": True, "leak_phash_distance": 2}, None, None, None, 4) == (False, "leak_phash")
    assert decide({"caption_ok": True, "leak_similarity": 0.99}, None, None, 0.95, 4) == (False, "leak_embedding")
    assert decide({"caption_ok": True, "similarity": 0.2}, 0.5, 0.9, 0.95, 4) == (False, "similarity_low")
    assert decide({"caption_ok": True, "similarity": 0.99}, 0.5, 0.9, 0.95, 4) == (False, "similarity_high")
    assert decide({"caption_ok": True, "similarity": 0.7}, 0.5, 0.9, 0.95, 4) == (True, "kept")


def test_select_per_class_caps_and_dedups():
    items = [{"aux_name": "a", "sha256": str(i), "rank": i, "similarity": i / 10} for i in range(8)]
    items += [{"aux_name": "b", "sha256": "3", "rank": 0}, {"aux_name": "c", "sha256": "x", "rank": 0}]
    groups = select_per_class(items, max_per_class=3, selection="similarity", min_per_class=1)
    assert [i["sha256"] for i in groups["a"]] == ["5", "6", "7"] and "b" not in groups and len(groups["c"]) == 1
    assert select_per_class(items, 3, "random", seed=1) == select_per_class(items, 3, "random", seed=1)
    assert "c" not in select_per_class(items, 3, "rank", min_per_class=2)


def test_pool_filter_build_chain(tmp_path, tiny_imagenet_dir, valid_rows, tiny_dinov2):
    target, leaked_bytes = leaky_target(valid_rows, train=10, validation=5)
    manifest = {
        "version": 1,
        "backend": "static",
        "targets": [{"index": i, "name": name} for i, name in enumerate(TARGETS.values())],
        "auxiliary": AUXILIARY,
    }
    (tmp_path / "neighbors").mkdir()
    (tmp_path / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    context = CurateContext(str(tmp_path), target=target)

    # retrieve from the pool (the shared validation split), excluding every target class
    retrieve = {
        "backend": "pool",
        "backend_kwargs": {
            "data_files": str(tiny_imagenet_dir / "valid-00000-of-00001.parquet"),
            "caption_column": "words",
            "id_column": "wnid",
            "label_column": "label",
        },
        "max_results_per_query": 60,
    }
    summary = run_retrieve(retrieve, context)
    assert summary["total"] == 200 and summary["ok"] + summary["duplicate"] == 200
    records = read_downloads(tmp_path / "retrieve")
    assert {r["aux_name"] for r in records} == {"tailed frog", "black widow", "scorpion", "Labrador retriever"}
    assert all(r["source_url"].startswith("pool://") for r in records)
    assert run_retrieve(retrieve, context)["total"] == 200  # resumed, nothing added

    # filter: caption + leak check only (no model)
    summary = run_filter({"model_name_or_path": None}, context)
    assert summary["leak_phash"] >= 1 and summary["kept"] == summary["images"] - summary["leak_phash"]
    decisions = pd.read_parquet(tmp_path / "filter" / "decisions.parquet")
    leaked_sha = hashlib.sha256(leaked_bytes).hexdigest()
    assert decisions.set_index("sha256").loc[leaked_sha, "reason"] == "leak_phash"
    assert decisions["caption_ok"].all() and decisions["similarity"].isna().all()

    # filter with the tiny DINOv2: prototypes cached, thresholds changed without re-embedding
    # (a random model maps all images close together: its embedding leak threshold must sit near 1)
    section = {"model_name_or_path": tiny_dinov2, "gamma_low": None, "gamma_high": None, "leak_similarity": 0.99999}
    section["batch_size"] = 32
    assert run_filter(section, context)["scored"] == summary["images"]
    decisions = pd.read_parquet(tmp_path / "filter" / "decisions.parquet")
    assert decisions["similarity"].notna().all() and decisions["leak_similarity"].notna().all()
    assert decisions.set_index("sha256").loc[leaked_sha, "reason"] == "leak_phash"
    median = float(decisions.loc[decisions["reason"] == "kept", "similarity"].median())
    summary = run_filter({**section, "gamma_low": median}, context)
    assert summary["similarity_low"] > 0 and summary["kept"] > 0
    assert summary["scored"] == 0  # nothing re-scored
    assert len(list((tmp_path / "filter").glob("prototypes-*.npz"))) == 1

    # build
    summary = run_build({"max_images_per_class": 20, "hub_dataset_id": "me/tiny-aux"}, context)
    aux = load_dataset(str(tmp_path / "aux_dataset"), split="train")
    names = aux.features["label"].names
    assert names == [n for n in ["tailed frog", "black widow", "scorpion", "Labrador retriever"] if n in names]
    assert set(aux.column_names) == {"image", "label", "neighbor_of", "source_url", "page_url", "caption", "query",
                                     "sha256", "similarity"}  # fmt: skip
    assert [aux["query"][i] for i in range(len(aux))] == [names[label] for label in aux["label"]]
    assert aux.features["similarity"].dtype == "float32"
    counts = np.bincount(aux["label"], minlength=len(names))
    assert counts.max() <= 20 and len(aux) == summary["images"] == counts.sum()
    assert len(set(aux["sha256"])) == len(aux) and leaked_sha not in set(aux["sha256"])
    parents = {a["name"]: a["neighbor_of"] for a in AUXILIARY}
    for row in aux.select(range(0, len(aux), 7)):
        assert row["image"].size == (64, 64) and not math.isnan(row["similarity"]) and row["similarity"] >= median
        assert row["neighbor_of"] == parents[names[row["label"]]] and caption_matches(
            names[row["label"]], row["caption"]
        )
    readme = (tmp_path / "aux_dataset" / "README.md").read_text()
    assert "me/tiny-aux" in readme and "Opt-out" in readme and f"| {names[0]} | " in readme
    # a pool source: its own terms, not websites' robots rules; the checks that ran, with their settings
    assert "valid-00000-of-00001.parquet" in readme and "source websites" not in readme and "respected" not in readme
    assert "`query` (the search that found the image)" in readme
    assert (
        f"[{median}, n/a]" in readme and "embedding similarity >= 0.99999 or perceptual-hash distance <= 4" in readme
    )
    assert run_build({"max_images_per_class": 20, "hub_dataset_id": "me/tiny-aux"}, context) == summary  # up to date
    # one setting sizes a run: without build.max_images_per_class, the cap is retrieve.images_per_class
    sized = CurateContext(str(tmp_path), target=target, sections={"retrieve": {**retrieve, "images_per_class": 7}})
    assert max(run_build({"hub_dataset_id": "me/tiny-aux"}, sized)["per_class"].values()) == 7
    assert run_build({"max_images_per_class": 20, "hub_dataset_id": "me/tiny-aux"}, context) == summary

    # a filter that keeps nothing fails loudly, and the build that follows leaves the good dataset as it was
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "aux_dataset").rglob("*") if p.is_file()}
    with pytest.raises(StageError, match="no image passed the filters"):
        run_filter({**section, "gamma_low": 1.5}, context)
    assert not pd.read_parquet(tmp_path / "filter" / "decisions.parquet")["keep"].any()
    with pytest.raises(StageError, match="left untouched"):
        run_build({"max_images_per_class": 20, "hub_dataset_id": "me/tiny-aux"}, context)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "aux_dataset").rglob("*") if p.is_file()}
    assert after == before and len(load_dataset(str(tmp_path / "aux_dataset"), split="train")) == len(aux)
    assert not (tmp_path / "aux_dataset.tmp").exists()

    # what the trainer consumes
    data = pytest.importorskip("neighbor_lt.data")
    if hasattr(data, "load_aux_dataset"):
        loaded = data.load_aux_dataset(str(tmp_path / "aux_dataset"))
        space = data.merge_label_space(target["train"].features["label"].names, loaded)
        assert space.aux_names == names


def test_stages_refuse_to_run_on_nothing(tmp_path):
    context = CurateContext(str(tmp_path))
    with pytest.raises(StageError, match="run the retrieve stage first"):
        run_filter({"model_name_or_path": None, "leak_check": False}, context)
    (tmp_path / "retrieve").mkdir()
    (tmp_path / "retrieve" / "downloads.jsonl").write_text(
        json.dumps({"key": "a\thttp://x", "aux_name": "a", "source_url": "http://x", "outcome": "timeout"}) + "\n"
    )
    with pytest.raises(StageError, match="no retrieved image to filter"):
        run_filter({"model_name_or_path": None, "leak_check": False}, context)
    with pytest.raises(StageError, match="run the filter stage first"):
        run_build({}, context)
    assert not (tmp_path / "aux_dataset").exists()


def test_write_aux_dataset_refuses_an_empty_set(tmp_path):
    from neighbor_lt.retrieval import write_aux_dataset

    (tmp_path / "aux" / "data").mkdir(parents=True)
    (tmp_path / "aux" / "data" / "train-00000-of-00001.parquet").write_bytes(b"previous")
    with pytest.raises(ValueError, match="no image"):
        write_aux_dataset({}, str(tmp_path), str(tmp_path / "aux"))
    assert (tmp_path / "aux" / "data" / "train-00000-of-00001.parquet").read_bytes() == b"previous"


def test_dataset_card_renders_with_defaults():
    card = render_dataset_card(
        "me/aux", num_images=3, num_classes=1, class_counts=[{"name": "koi", "neighbor_of": ["goldfish"], "count": 3}]
    )
    assert card.data.license == "other" and "image-classification" in card.data.task_categories
    assert "| koi | goldfish | 3 |" in card.content and "n/a" in card.content
    assert "configs" not in card.data.to_dict()  # see card.py: a configs block makes datasets serve stale cached rows
    assert "robots.txt respected" in card.content and "source websites" in card.content  # a web source by default


def test_dataset_card_lists_only_the_checks_that_ran():
    card = render_dataset_card(
        "me/aux", prototype_filter=False, leak_check=True, leak_phash_distance=4, gamma_low=0.7, leak_similarity=0.95
    )
    assert "perceptual-hash distance <= 4" in card.content
    assert "gamma_low" not in card.content and "embedding similarity" not in card.content
    assert "leak check" not in render_dataset_card("me/aux", prototype_filter=False, leak_check=False).content


@pytest.mark.parametrize("recipe", ["tiny_imagenet_lt", "demo"])
def test_curate_yaml_sections_validate(recipe):
    import yaml

    from neighbor_lt.configs import from_dict
    from neighbor_lt.retrieval.download import DownloadConfig
    from neighbor_lt.retrieval.stages import BuildArguments, FilterArguments, RetrieveArguments

    path = Path(__file__).resolve().parents[1] / "recipes" / recipe / "curate.yaml"
    config = yaml.safe_load(path.read_text())
    retrieve = from_dict(RetrieveArguments, config["retrieve"], "retrieve")
    from_dict(DownloadConfig, retrieve.download, "retrieve.download")
    from_dict(FilterArguments, config["filter"], "filter")
    from_dict(BuildArguments, config["build"], "build")
