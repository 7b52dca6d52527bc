"""The neighbors stage groups target classes by the target's many_threshold / few_threshold, as the card does."""

import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features

from neighbor_lt.configs import DataArguments
from neighbor_lt.curate import CurateContext
from neighbor_lt.neighbors.manifest import load_manifest
from neighbor_lt.neighbors.stage import group_ratios, run


def test_group_ratios_take_the_thresholds():
    counts = [60, 30, 4]
    assert group_ratios("auto", counts) == {"many": 1, "medium": 1, "few": 1}  # paper: no Many class at all
    assert group_ratios("auto", counts, thresholds=(50, 10)) == {"many": 1, "medium": 2, "few": 15}


def test_the_stage_uses_the_target_thresholds(tmp_path):
    names, counts = ["cat", "dog", "bird"], [60, 30, 4]
    labels = [i for i, c in enumerate(counts) for _ in range(c)]
    train = Dataset.from_dict({"label": labels}, features=Features({"label": ClassLabel(names=names)}))
    mapping = tmp_path / "map.yaml"
    mapping.write_text(yaml.safe_dump({"cat": ["lynx", "ocelot"], "dog": ["wolf", "fox"], "bird": ["bat", "moth"]}))
    target_args = DataArguments(dataset_name="unused", many_threshold=50, few_threshold=10)
    context = CurateContext(str(tmp_path), target_args, target=DatasetDict(train=train))
    run({"backend": "static", "mapping": str(mapping), "k": 1, "ratios": [1, 1, 2], "use_wordnet": False}, context)
    loaded = load_manifest(str(tmp_path / "neighbors" / "neighbors.json"))
    groups = {t["name"]: t["group"] for t in loaded["targets"]}
    assert groups == {"cat": "many", "dog": "medium", "bird": "few"}  # at 100 / 20 cat would be medium
    bird = next(t for t in loaded["targets"] if t["name"] == "bird")
    assert len(bird["kept"]) == 2  # few's ratio 2
