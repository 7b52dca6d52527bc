"""Make the built-in demo data from Tiny-ImageNet-200 (real ImageNet images at 64x64).

Usage:
    python recipes/demo/make_demo_data.py --source ../shared/data/tiny-imagenet-200 --out recipes/demo/data

Writes (a few MB, committed):
    target/train.parquet       20 target classes, long-tailed 150 -> 5 images (exponential profile), seeded
    target/validation.parquet  25 validation images per target class (from Tiny-ImageNet's `valid` split)
    aux/data/train-00000-of-00001.parquet + aux/README.md
                               12 auxiliary neighbor classes x 40 images, each with the target it neighbors
Class names are the first WordNet lemma of each class ("tabby", "golden retriever"); the WordNet id is kept in a
`wnid` column. The neighbor pairs are WordNet siblings (same direct hypernym, or the same genus), listed below so
the demo does not depend on the neighbor-search stage; `recipes/curate.py` builds such sets for real runs.
"""

import argparse
import glob
import os

import numpy as np
from datasets import ClassLabel, Features, Image, List, Value, concatenate_datasets, load_dataset

from neighbor_lt.data import long_tail_profile

# Head to tail. Every target but the last few has a WordNet neighbor among the auxiliary classes.
TARGETS = [
    "goldfish", "brown bear", "king penguin", "teapot", "pizza", "mushroom", "bee", "black widow",
    "golden retriever", "tabby", "lion", "monarch", "chimpanzee", "spiny lobster", "bullfrog", "sports car",
    "school bus", "suspension bridge", "lemon", "bison",
]  # fmt: skip
# auxiliary class -> the target(s) it was queried from
AUX = {
    "tarantula": ["black widow"],
    "Labrador retriever": ["golden retriever"],
    "Egyptian cat": ["tabby"],
    "cougar": ["lion"],
    "sulphur butterfly": ["monarch"],
    "orangutan": ["chimpanzee"],
    "American lobster": ["spiny lobster"],
    "tailed frog": ["bullfrog"],
    "convertible": ["sports car"],
    "trolleybus": ["school bus"],
    "steel arch bridge": ["suspension bridge"],
    "orange": ["lemon"],
}
HEAD, IMBALANCE, VALID_PER_CLASS, AUX_PER_CLASS = 150, 30, 25, 40


def _pick(ds, names_col, names, per_class, seed):
    """Rows of ``ds`` whose first lemma is in ``names``: ``per_class[name]`` of each, seeded."""
    first = np.array([w.split(",")[0].strip() for w in ds[names_col]])
    rng = np.random.default_rng(seed)
    rows = []
    for name in names:
        found = np.flatnonzero(first == name)
        if len(found) < per_class[name]:
            raise SystemExit(f"{name!r}: only {len(found)} images in the source")
        rows.append(np.sort(rng.permutation(found)[: per_class[name]]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/tiny-imagenet-200")
    parser.add_argument("--out", default="recipes/demo/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    src = load_dataset(
        "parquet",
        data_files={
            "train": sorted(glob.glob(f"{args.source}/train-*.parquet")),
            "valid": sorted(glob.glob(f"{args.source}/valid-*.parquet")),
        },
    )
    counts = dict(zip(TARGETS, long_tail_profile(len(TARGETS), HEAD, IMBALANCE)))
    target_label = ClassLabel(names=TARGETS)

    def build(split, rows, names, label_feature, extra=None):
        parts = []
        for label, idx in enumerate(rows):
            part = src[split].select(idx).select_columns(["image", "wnid"])
            part = part.add_column("label", [label] * len(idx))
            if extra is not None:
                part = part.add_column("neighbor_of", [extra[names[label]]] * len(idx))
            parts.append(part)
        out = concatenate_datasets(parts)
        feats = Features({"image": Image(), "label": label_feature, "wnid": Value("string")})
        if extra is not None:
            feats["neighbor_of"] = List(Value("string"))
        return out.cast(feats)

    train = build("train", _pick(src["train"], "words", TARGETS, counts, args.seed), TARGETS, target_label)
    valid_rows = _pick(src["valid"], "words", TARGETS, dict.fromkeys(TARGETS, VALID_PER_CLASS), args.seed)
    valid = build("valid", valid_rows, TARGETS, target_label)
    aux_names = list(AUX)
    aux_rows = _pick(src["train"], "words", aux_names, dict.fromkeys(aux_names, AUX_PER_CLASS), args.seed + 1)
    aux = build("train", aux_rows, aux_names, ClassLabel(names=aux_names), extra=AUX)

    os.makedirs(f"{args.out}/target", exist_ok=True)
    os.makedirs(f"{args.out}/aux/data", exist_ok=True)
    train.to_parquet(f"{args.out}/target/train.parquet")
    valid.to_parquet(f"{args.out}/target/validation.parquet")
    aux.to_parquet(f"{args.out}/aux/data/train-00000-of-00001.parquet")
    with open(f"{args.out}/aux/README.md", "w") as f:
        f.write(AUX_CARD.format(num=len(aux_names), per=AUX_PER_CLASS))
    print(f"target train {len(train)} images, validation {len(valid)}, auxiliary {len(aux)}; counts {counts}")


# No `configs:` block: datasets 5.x caches a local folder by that block's hash alone, so two folders with the
# same block would load each other's cached rows. `data/train-*` is found by the default layout.
AUX_CARD = """---
license: other
task_categories:
- image-classification
---
# neighbor-lt demo auxiliary set

{num} auxiliary neighbor classes x {per} images from Tiny-ImageNet-200 (ImageNet images at 64x64), each labelled
with the demo target class it neighbors (`neighbor_of`). Made by `recipes/demo/make_demo_data.py`.
ImageNet's terms apply (non-commercial research and education).
"""


if __name__ == "__main__":
    main()
