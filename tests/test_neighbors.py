"""Neighbor search: leak guard, WordNet backend on real Tiny-ImageNet wnids, static backend, manifest, curate stage."""

import csv
import json
import logging
import random
from pathlib import Path

import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from neighbor_lt.configs import ConfigError, from_dict
from neighbor_lt.curate import CurateContext, load_config
from neighbor_lt.curate import main as curate_main
from neighbor_lt.neighbors import NEIGHBOR_BACKENDS, get_neighbor_backend
from neighbor_lt.neighbors.base import Candidate, NeighborBackend, Proposal, TargetQuery
from neighbor_lt.neighbors.guard import Entry, LeakGuard, load_vocabulary, normalize
from neighbor_lt.neighbors.manifest import assemble, load_manifest, neighbor_map, neighbor_pairs
from neighbor_lt.neighbors.stage import NeighborsArguments, group_ratios, run
from neighbor_lt.neighbors.wordnet import WordNet, WordNetOptions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wordnet():
    return WordNet.load()


@pytest.fixture(scope="module")
def tiny_classes(tiny_imagenet_dir):
    with open(tiny_imagenet_dir / "classes.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _context(tmp_path, names, counts, extra=None):
    labels = [i for i, c in enumerate(counts) for _ in range(c)]
    columns, features = {"label": labels}, {"label": ClassLabel(names=names)}
    for column, values in (extra or {}).items():
        columns[column] = [values[i] for i in labels]
        features[column] = Value("string")
    train = Dataset.from_dict(columns, features=Features(features))
    return CurateContext(str(tmp_path), target=DatasetDict(train=train))


def test_normalize_and_leak_guard(wordnet):
    assert normalize("Teddy-Bears") == normalize("teddy bear") == normalize("  TEDDY_bear ")
    assert normalize("Crème brûlée") == "cremebrulee"
    targets = [Entry("n04399382", ["teddy", "teddy bear"], "n04399382"), Entry("goldfish", ["goldfish"])]
    guard = LeakGuard(targets, wordnet=wordnet)
    assert guard.check("Teddy bears") == "matches target n04399382"
    assert guard.check("Carassius auratus") == "same synset as target goldfish"
    assert guard.check("animal", "n00015388") == "hypernym of target goldfish"
    assert guard.check("koi") is None
    assert LeakGuard(targets).check("Carassius auratus") is None  # without WordNet, names only


def test_group_ratios():
    assert group_ratios([1, 1, 3], [500, 50, 5]) == {"many": 1, "medium": 1, "few": 3}
    assert group_ratios("auto", [500, 400, 50, 10]) == {"many": 1, "medium": 18, "few": 90}
    assert group_ratios("auto", [500, 300]) == {"many": 1, "medium": 1, "few": 1}
    with pytest.raises(ConfigError):
        group_ratios("paper", [1])


def test_wordnet_parse_and_similarity(wordnet, tiny_classes):
    goldfish = wordnet.synset("n01443537")
    assert goldfish.names == ["goldfish", "Carassius auratus"]
    assert wordnet.lookup("Teddy Bears")[0].wnid == "n04399382"
    for row in tiny_classes:  # every Tiny-ImageNet id is a WordNet 3.0 noun whose lemmas are classes.tsv's words
        assert wordnet.synset(row["wnid"]).names[0] == row["words"].split(",")[0].strip()
    sim_close, dist_close = wordnet.similarity("n02085620", "n02099601")  # Chihuahua, golden retriever
    sim_far, dist_far = wordnet.similarity("n02085620", "n04399382")  # Chihuahua, teddy
    assert 0 < sim_far < sim_close < 1 and dist_close < dist_far


def test_wordnet_backend_open_and_vocabulary(wordnet, tiny_classes):
    backend = get_neighbor_backend("wordnet", depth=2, max_candidates=20)
    query = TargetQuery(0, "n02085620", "Chihuahua", wnid="n02085620")
    proposal = backend.propose([query])[0]
    assert proposal.status == "ok" and len(proposal.candidates) == 20
    assert {"Japanese spaniel", "Maltese dog"} <= {c.name for c in proposal.candidates}
    sims = [c.similarity for c in proposal.candidates]
    assert sims == sorted(sims, reverse=True)

    vocab = load_vocabulary(Path(REPO.parent, "shared/data/tiny-imagenet-200/classes.tsv"))
    backend = get_neighbor_backend("wordnet", depth=20, min_similarity=0.7)
    proposal = backend.propose([query], vocabulary=vocab)[0]
    names = [c.name for c in proposal.candidates]
    pool = {row["words"].split(",")[0] for row in tiny_classes}
    assert names and set(names) <= pool and "Chihuahua" not in names
    assert names[0] in {
        "Yorkshire terrier",
        "golden retriever",
        "German shepherd",
        "standard poodle",
        "Labrador retriever",
    }
    assert all(c.similarity >= 0.7 for c in proposal.candidates)

    missing = backend.propose([TargetQuery(1, "zorblax", "zorblax")])[0]
    assert missing.status == "failed" and "not found in WordNet" in missing.error


def test_assemble_cap_dedup_vocabulary_and_names():
    queries = [
        TargetQuery(0, "cat", "cat", count=500, num_requested=2),
        TargetQuery(1, "dog", "dog", count=5, num_requested=3),
    ]
    proposals = [
        Proposal([Candidate("lynx"), Candidate("Lynxes"), Candidate("Dog"), Candidate("ocelot")]),
        Proposal([Candidate("wolf"), Candidate("lynx"), Candidate("fox"), Candidate("ghost")]),
    ]
    vocab = load_vocabulary(["lynx", "ocelot", "wolf", "fox"])
    guard = LeakGuard([Entry("cat", ["cat"]), Entry("dog", ["dog"])])
    manifest = assemble(queries, proposals, guard, vocab, max_targets_per_aux=1, header={"backend": "static"})
    cat, dog = manifest["targets"]
    assert dog["kept"] == ["wolf", "fox"]  # lynx is cat's first choice but dog's second: cat gets it
    assert cat["kept"] == ["lynx", "ocelot"]
    reasons = {d["name"]: d["reason"] for d in cat["dropped"]}
    assert reasons["Lynxes"] == "duplicate" and reasons["Dog"] == "matches target dog"
    assert {"name": "lynx", "reason": "cap: auxiliary class already serves 1 targets"} in dog["dropped"]
    assert {"name": "ghost", "reason": "not in vocabulary"} in dog["dropped"]
    assert neighbor_map(manifest) == {"lynx": ["cat"], "ocelot": ["cat"], "wolf": ["dog"], "fox": ["dog"]}
    assert ("ocelot", "cat") in neighbor_pairs(manifest)
    assert manifest["summary"]["dropped"] == {"cap": 1, "duplicate": 1, "matches target": 1, "not in vocabulary": 1}


def test_static_backend_stage_and_shared_aux(tmp_path):
    mapping = tmp_path / "map.yaml"
    mapping.write_text(yaml.safe_dump({"cat": ["lynx", "Dog", "ocelot"], "dog": ["wolf", "Lynx"]}))
    context = _context(tmp_path, ["cat", "dog", "bird"], [300, 50, 5])
    manifest = run({"backend": "static", "mapping": str(mapping), "k": 2, "use_wordnet": False}, context)
    loaded = load_manifest(str(tmp_path / "neighbors" / "neighbors.json"))
    assert loaded["targets"] == manifest["targets"]
    assert neighbor_map(loaded) == {"lynx": ["cat", "dog"], "ocelot": ["cat"], "wolf": ["dog"]}
    bird = loaded["targets"][2]
    assert bird["status"] == "failed" and "no entry" in bird["error"] and bird["group"] == "few"
    assert loaded["settings"]["group_ratios"] == {"many": 1, "medium": 1, "few": 3}
    with pytest.raises(ConfigError, match="unknown key"):
        run({"backend": "static", "mapping": str(mapping), "kk": 1}, context)


class FakeBackend(NeighborBackend):
    """Proposes a fixed list for every class, to check the registry swaps backends by name."""

    name = "fake"

    def propose(self, queries, vocabulary=None, cache=None):
        return [Proposal([Candidate(f"{q.query} relative")]) for q in queries]


def test_registry_swaps_in_a_fake(tmp_path, monkeypatch):
    monkeypatch.setitem(NEIGHBOR_BACKENDS, "fake", FakeBackend)
    manifest = run({"backend": "fake", "use_wordnet": False}, _context(tmp_path, ["a", "b"], [10, 10]))
    assert neighbor_map(manifest) == {"a relative": ["a"], "b relative": ["b"]}
    with pytest.raises(ValueError, match="unknown neighbor backend"):
        get_neighbor_backend("nope")


def test_wordnet_stage_on_tiny_imagenet_lt(tmp_path, tiny_classes):
    """100 seeded Tiny-ImageNet targets (imbalance 100) with wnid labels; neighbors only from the other 100."""
    chosen = sorted(random.Random(0).sample(range(200), 100))
    names = [tiny_classes[i]["wnid"] for i in chosen]
    counts = [max(1, int(500 * (1 / 100) ** (i / 99))) // 10 + 1 for i in range(100)]  # the profile, scaled down
    words = {i: tiny_classes[c]["words"] for i, c in enumerate(chosen)}
    section = {
        "backend": "wordnet", "vocabulary": str(Path(REPO.parent, "shared/data/tiny-imagenet-200/classes.tsv")),
        "depth": 20, "min_similarity": 0.6, "max_targets_per_aux": 5,
    }  # fmt: skip
    manifest = run(section, _context(tmp_path, names, counts, extra={"words": words}))
    others = {row["wnid"] for row in tiny_classes} - set(names)
    assert all(a["wnid"] in others for a in manifest["auxiliary"])
    assert all(a["name"] not in names and len(a["neighbor_of"]) <= 5 for a in manifest["auxiliary"])
    assert all(s >= 0.6 for a in manifest["auxiliary"] for s in a["similarity"])
    assert manifest["summary"]["with_neighbors"] >= 90
    goldfish = next(t for t in manifest["targets"] if t["name"] == "n01443537") if "n01443537" in names else None
    assert goldfish is None or goldfish["query"] == "goldfish"
    path = tmp_path / "neighbors" / "neighbors.json"
    before = path.read_bytes()
    run(section, _context(tmp_path, names, counts, extra={"words": words}))
    assert path.read_bytes() == before  # deterministic: a rerun keeps the file as it is


@pytest.mark.parametrize("recipe", ["tiny_imagenet_lt", "demo"])
def test_curate_yaml_neighbors_section_is_valid(recipe):
    config = yaml.safe_load((REPO / "recipes" / recipe / "curate.yaml").read_text())
    args = from_dict(NeighborsArguments, config["neighbors"], "neighbors")
    assert args.backend in ("wordnet", "openai", "static") and config["output_dir"] and config["target"]
    assert json.dumps(config["neighbors"])  # plain data only


def test_curate_recipe_neighbors_stage_on_demo(tmp_path, monkeypatch):
    """`recipes/curate.py --stages neighbors` end to end on the committed demo target set."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("curate", REPO / "recipes" / "curate.py")
    curate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curate)
    monkeypatch.chdir(REPO)  # the YAML's paths are relative to the repository root
    curate.main(["--config", "recipes/demo/curate.yaml", "--stages", "neighbors", "--output_dir", str(tmp_path)])
    manifest = load_manifest(str(tmp_path / "neighbors"))
    targets = {t["name"] for t in manifest["targets"]}
    assert len(targets) == 20 and manifest["summary"]["with_neighbors"] >= 15
    assert all(a["name"] not in targets and a["wnid"] for a in manifest["auxiliary"])
    tabby = next(t for t in manifest["targets"] if t["name"] == "tabby")
    assert set(tabby["kept"]) <= {"Persian cat", "Egyptian cat", "tiger cat", "lion", "cougar"} and tabby["kept"]


def test_a_yaml_for_the_llm_runs_with_wordnet_from_the_command_line(tmp_path, monkeypatch, caplog):
    """Each backend owns its options: switched on the command line, the other backend's keys are ignored with a note;
    a key of no backend is still an error, and the saved configuration reruns without a note."""
    config = yaml.safe_load((REPO / "recipes" / "demo" / "curate.yaml").read_text())
    config["neighbors"].update(backend="openai", model="gpt-5.5", reasoning_effort="none", temperature=0.2)
    config["neighbors"]["backend_kwargs"] = {"base_url": "http://127.0.0.1:9/v1"}
    path = tmp_path / "curate.yaml"
    path.write_text(yaml.safe_dump(config))
    caplog.set_level(logging.INFO)
    loaded = load_config(str(path), ["--neighbors.backend", "wordnet"], output_dir=str(tmp_path / "out"),
                         stages=["neighbors"])  # fmt: skip
    args = loaded.arguments("neighbors")
    assert isinstance(args.options, WordNetOptions) and args.options.depth == 20 and args.options.min_similarity == 0.6
    for key in ("model", "reasoning_effort", "temperature"):
        assert f"neighbors.{key} is an option of the openai backend, not of wordnet: ignored" in caplog.text
        assert getattr(args, key) is None
    assert (
        "neighbors.backend_kwargs.base_url is an option of the openai backend, not of wordnet: ignored" in caplog.text
    )
    assert args.backend_kwargs == {}
    monkeypatch.chdir(REPO)  # the YAML's paths are relative to the repository root
    argv = ["--config", str(path), "--neighbors.backend", "wordnet", "--stages", "neighbors", "--output_dir",
            str(tmp_path / "out")]  # fmt: skip
    assert curate_main(argv) == 0  # recipes/curate.py and neighbor-lt curate
    manifest = load_manifest(str(tmp_path / "out" / "neighbors"))
    assert manifest["backend"] == "wordnet" and manifest["summary"]["with_neighbors"] >= 15

    caplog.clear()
    again = load_config(loaded.save()).arguments("neighbors")
    assert again.options == args.options and "ignored" not in caplog.text
    with pytest.raises(ConfigError, match=r"unknown key neighbors\.modle"):
        load_config(str(path), ["--neighbors.modle", "gpt-5.5"])
    with pytest.raises(ConfigError, match=r"unknown option\(s\) dept in neighbors.backend_kwargs \(wordnet\) for "):
        load_config(str(path), ["--neighbors.backend", "wordnet", "--neighbors.backend_kwargs.dept", "2"])
