"""The target set of the filter tests: three Tiny-ImageNet classes and one planted leak from the pool."""

from __future__ import annotations

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

TARGETS = {2: "n01641577", 9: "n01774750", 26: "n02099601"}  # bullfrog, tarantula, golden retriever
LEAK_WNID = "n01644900"  # tailed frog: a pool class, one of whose images is planted in the target's validation split


def leaky_target(rows: dict, train: int, validation: int) -> tuple[DatasetDict, bytes]:
    """The 3 :data:`TARGETS` classes of the Tiny-ImageNet validation ``rows`` (``train`` / ``validation`` images each),
    plus one image of the 'tailed frog' pool class planted in validation (label 0): the leak check must drop it from
    the auxiliary set. Returns the set and the planted image's bytes."""
    features = Features({"image": Image(), "label": ClassLabel(names=list(TARGETS.values()))})
    splits = {"train": {"image": [], "label": []}, "validation": {"image": [], "label": []}}
    for new, old in enumerate(TARGETS):
        where = [i for i, label in enumerate(rows["label"]) if label == old]
        for split, chosen in (("train", where[:train]), ("validation", where[train : train + validation])):
            splits[split]["image"] += [rows["image"][i] for i in chosen]
            splits[split]["label"] += [new] * len(chosen)
    leak = rows["wnid"].index(LEAK_WNID)
    splits["validation"]["image"].append(rows["image"][leak])
    splits["validation"]["label"].append(0)
    return DatasetDict({k: Dataset.from_dict(v, features=features) for k, v in splits.items()}), rows["image"][leak][
        "bytes"
    ]
