"""Write the auxiliary set: Parquet shards that ``datasets.load_dataset(folder)`` opens, plus its card."""

from __future__ import annotations

import glob
import logging
import math
import os
import random
import shutil

logger = logging.getLogger(__name__)


def aux_features(class_names: list[str]):
    """The agreed schema of the auxiliary dataset."""
    from datasets import ClassLabel, Features, Image, Value

    try:
        from datasets import List

        strings = List(Value("string"))
    except ImportError:  # datasets < 4
        from datasets import Sequence

        strings = Sequence(Value("string"))
    return Features(
        {
            "image": Image(),
            "label": ClassLabel(names=list(class_names)),
            "neighbor_of": strings,
            "source_url": Value("string"),
            "page_url": Value("string"),
            "caption": Value("string"),
            "query": Value("string"),
            "sha256": Value("string"),
            "similarity": Value("float32"),
        }
    )


def select_per_class(
    items: list[dict], max_per_class: int, selection: str = "random", seed: int = 0, min_per_class: int = 1
) -> dict[str, list[dict]]:
    """Group kept items by auxiliary class, drop exact duplicates, and cap each class.

    Example:
        >>> groups = select_per_class([{"aux_name": "a", "sha256": "1", "rank": 0}], max_per_class=50)
        >>> {k: len(v) for k, v in groups.items()}
        {'a': 1}

    Args:
        items: dicts with at least ``aux_name``, ``sha256`` and ``rank`` (and ``similarity`` for that selection).
        max_per_class: cap of images per class.
        selection: which images survive the cap: "random" (seeded), "rank" (search order) or "similarity"
            (closest to the prototype first).
        seed: seed of the random selection.
        min_per_class: classes with fewer images are left out.
    """
    if selection not in ("random", "rank", "similarity"):
        raise ValueError(f"selection must be random, rank or similarity, not {selection!r}")
    groups: dict[str, list[dict]] = {}
    seen = set()
    for item in sorted(items, key=lambda x: (x["aux_name"], x.get("rank", 0), x["sha256"])):
        if item["sha256"] in seen:
            continue
        seen.add(item["sha256"])
        groups.setdefault(item["aux_name"], []).append(item)
    out = {}
    for name, group in groups.items():
        if selection == "random":
            random.Random(f"{seed}:{name}").shuffle(group)
        elif selection == "similarity":
            group.sort(key=lambda x: -(x.get("similarity") if x.get("similarity") is not None else -2.0))
        if len(group) >= min_per_class:
            out[name] = sorted(group[:max_per_class], key=lambda x: (x.get("rank", 0), x["sha256"]))
    return out


def write_aux_dataset(
    groups: dict[str, list[dict]], image_root: str, output_dir: str, card=None, rows_per_shard: int = 5000
) -> int:
    """Write ``groups`` (class name -> items) as ``output_dir/data/train-XXXXX-of-YYYYY.parquet`` plus README.md.

    The folder is written beside the old one and swapped in only once it is complete, non-empty and its shards read
    back with the expected row count, so an interrupted or failed build leaves the previous dataset intact.

    Columns: ``query`` is the search query that found the image; ``sha256`` is the SHA-256 of the image bytes as the
    downloader received them (for an img2dataset ingest: of the bytes img2dataset stored, which are the downloaded
    bytes only with ``disable_all_reencoding=True``; for a local pool: of the pool's bytes).

    Example:
        >>> n = write_aux_dataset(groups, "out/retrieve", "out/aux_dataset", card)  # doctest: +SKIP
        >>> datasets.load_dataset("out/aux_dataset", split="train")  # doctest: +SKIP

    Args:
        groups: output of :func:`select_per_class`; the class order is the ClassLabel order.
        image_root: folder the items' ``path`` is relative to.
        output_dir: the dataset folder.
        card: a ``DatasetCard`` saved as README.md (optional).
        rows_per_shard: rows per Parquet shard.

    Returns:
        The number of images written.

    Raises:
        ValueError: ``groups`` holds no image (nothing is written or replaced).
    """
    import pyarrow.parquet as pq
    from datasets import Dataset

    names = list(groups)
    features = aux_features(names)
    rows = [(label, item) for label, name in enumerate(names) for item in groups[name]]
    if not rows:
        raise ValueError(f"no image to write: {output_dir} is left as it is")
    tmp = output_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "data"))
    num_shards = max(1, math.ceil(len(rows) / rows_per_shard))
    for shard in range(num_shards):
        chunk = rows[shard * rows_per_shard : (shard + 1) * rows_per_shard]
        columns = {key: [] for key in features}
        for label, item in chunk:
            with open(os.path.join(image_root, item["path"]), "rb") as f:
                columns["image"].append({"bytes": f.read(), "path": f"{item['sha256']}.jpg"})
            similarity = item.get("similarity")
            columns["label"].append(label)
            columns["neighbor_of"].append(list(item.get("neighbor_of") or []))
            columns["similarity"].append(float("nan") if similarity is None else float(similarity))
            for key in ("source_url", "page_url", "caption", "query", "sha256"):
                columns[key].append(str(item.get(key) or ""))
        path = os.path.join(tmp, "data", f"train-{shard:05d}-of-{num_shards:05d}.parquet")
        Dataset.from_dict(columns, features=features).to_parquet(path)
    written = sum(pq.read_metadata(p).num_rows for p in glob.glob(os.path.join(tmp, "data", "*.parquet")))
    if written != len(rows):
        raise ValueError(f"{tmp}: {written} row(s) read back, {len(rows)} written; {output_dir} is left as it is")
    if card is not None:
        card.save(os.path.join(tmp, "README.md"))
    old = output_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(output_dir):
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %d images in %d classes to %s (%d shard(s))", len(rows), len(names), output_dir, num_shards)
    return len(rows)
