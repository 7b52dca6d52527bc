"""Target long-tail sets, long-tail subsampling, the merged target + auxiliary label space and the per-epoch sampler.

Label space: target classes ``0..L-1`` (in the order of the target ClassLabel), then auxiliary classes
``L..L+K-1`` (in the order of the auxiliary ClassLabel). Neighbor pairs are ``(target class, L + aux class)``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from .configs import ConfigError, DataArguments
from .sources import load_source

logger = logging.getLogger(__name__)

AUX_COLUMNS = ("image", "label", "neighbor_of")


# --------------------------------------------------------------------------------------------------------------------
# Target sets
# --------------------------------------------------------------------------------------------------------------------


def long_tail_profile(num_classes: int, max_per_class: int, imbalance_factor: float) -> list[int]:
    """Images per class of the exponential long-tail profile (CIFAR-LT): ``n_max * (1/IF)^(i/(C-1))``.

    Example:
        >>> long_tail_profile(3, 500, 100)
        [500, 50, 5]
    """
    if imbalance_factor < 1:
        raise ConfigError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return [max_per_class]
    return [
        max(1, int(max_per_class * imbalance_factor ** (-i / (num_classes - 1)) + 1e-6)) for i in range(num_classes)
    ]


def class_counts(dataset: Dataset, num_classes: int | None = None, label_column: str = "label") -> np.ndarray:
    """Number of rows per class of ``dataset``'s label column."""
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    if num_classes is None:
        num_classes = dataset.features[label_column].num_classes
    return np.bincount(labels, minlength=num_classes)


def make_long_tailed(
    dataset: Dataset,
    imbalance_factor: float,
    max_per_class: int | None = None,
    seed: int = 0,
    label_column: str = "label",
) -> Dataset:
    """Subsample a (balanced) dataset to an exponential long-tail profile, seeded.

    Class ``i`` keeps ``n_max * (1/IF)^(i/(C-1))`` images (a seeded random subset), class 0 being the head: the
    CIFAR-LT protocol, which makes Tiny-ImageNet-LT from Tiny-ImageNet-200.

    Example:
        >>> lt = make_long_tailed(train, imbalance_factor=100, seed=0)  # 500 ... 5 images per class

    Args:
        dataset: dataset with a ClassLabel column.
        imbalance_factor: ratio of the largest to the smallest class.
        max_per_class: images of the head class; the largest class size when None.
        seed: seed of the per-class subsets.
        label_column: the label column.
    """
    keep, _ = _long_tail_rows(dataset, imbalance_factor, max_per_class, seed, label_column)
    return dataset.select(keep)


def _long_tail_rows(dataset, imbalance_factor, max_per_class=None, seed=0, label_column="label"):
    """(rows kept by the long-tail profile, the other rows of each class in a seeded order), per class in order."""
    num_classes = dataset.features[label_column].num_classes
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    available = np.bincount(labels, minlength=num_classes)
    n_max = int(max_per_class or available.max())
    wanted = long_tail_profile(num_classes, n_max, imbalance_factor)
    rng = np.random.default_rng(seed)
    keep, rest = [], []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < wanted[c]:
            logger.warning("class %d has %d images, fewer than the %d the profile asks for", c, len(rows), wanted[c])
        order = rng.permutation(rows)
        keep.append(np.sort(order[: wanted[c]]))
        rest.append(order[wanted[c] :])
    return np.concatenate(keep), rest


def development_split(
    dataset: Dataset,
    imbalance_factor: float,
    per_class: int,
    max_per_class: int | None = None,
    seed: int = 0,
    label_column: str = "label",
) -> Dataset:
    """A development split: up to ``per_class`` images of every class that :func:`make_long_tailed` (same
    arguments) did not keep. Settings are chosen on it, so the evaluation split stays for the final table.

    The first head classes may have fewer images left over (on a balanced set the head class keeps them all); they get
    what is left, and a warning says which. The Many / Medium / Few groups stay those of the training counts.

    Example:
        >>> dev = development_split(train, imbalance_factor=100, per_class=50)  # disjoint from the LT train set

    Raises:
        ConfigError: when no image at all is left over.
    """
    _, rest = _long_tail_rows(dataset, imbalance_factor, max_per_class, seed, label_column)
    short = [c for c, rows in enumerate(rest) if len(rows) < per_class]
    if short:
        names = dataset.features[label_column].names
        logger.warning(
            "development split: %d class(es) have fewer than %d training images left over by the long-tail subsample "
            "(%s); they are evaluated on what is left",
            len(short), per_class, ", ".join(f"{names[c]}: {len(rest[c])}" for c in short[:5]),
        )  # fmt: skip
    rows = np.concatenate([r[:per_class] for r in rest])
    if not len(rows):
        raise ConfigError("heldout_eval_per_class: the long-tail subsample kept every image; no development split")
    return dataset.select(np.sort(rows))


def select_classes(splits: DatasetDict, num_classes: int, seed: int = 0, label_column: str = "label") -> DatasetDict:
    """Keep a seeded random subset of ``num_classes`` classes in every split, relabelled ``0..num_classes-1``."""
    names = splits["train"].features[label_column].names
    if num_classes > len(names):
        raise ConfigError(f"num_classes={num_classes} but the dataset has only {len(names)} classes")
    chosen = np.sort(np.random.default_rng(seed).choice(len(names), size=num_classes, replace=False))
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[chosen] = np.arange(num_classes)
    new_label = ClassLabel(names=[names[i] for i in chosen])
    out = {}
    for split, ds in splits.items():
        labels = remap[np.asarray(ds[label_column], dtype=np.int64)]
        ds = ds.select(np.flatnonzero(labels >= 0))
        new = labels[labels >= 0]
        ds = ds.remove_columns(label_column).add_column(label_column, new.tolist())
        out[split] = ds.cast_column(label_column, new_label)
    return DatasetDict(out)


def load_lt_split_file(
    list_file: str, image_root: str, class_names: Sequence[str] | None = None, num_classes: int | None = None
) -> Dataset:
    """Load a long-tail split file (``relative/path.jpg label`` per line, as ImageNet-LT, Places-LT, iNat 2018).

    Example:
        >>> ds = load_lt_split_file("ImageNet_LT_train.txt", "/data/imagenet")

    Args:
        list_file: the split file.
        image_root: folder the paths are relative to.
        class_names: names in label order; ``"0".."C-1"`` when None.
        num_classes: number of classes when ``class_names`` is None; the largest label + 1 otherwise.
    """
    paths, labels = [], []
    with open(list_file) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ConfigError(f"{list_file}:{line_no}: expected 'relative/path.jpg label', got {line!r}")
            paths.append(os.path.join(image_root, parts[0]))
            labels.append(int(parts[1]))
    if not paths:
        raise ConfigError(f"{list_file} lists no images")
    if class_names is None:
        num = num_classes or max(labels) + 1
        class_names = [str(i) for i in range(num)]
    bad = [lab for lab in labels if lab < 0 or lab >= len(class_names)]
    if bad:
        raise ConfigError(f"{list_file}: label {bad[0]} is outside 0..{len(class_names) - 1}")
    # Every row, up front: one missing file found at the first batch, or hours in, costs the run. stat is I/O-bound,
    # so threads overlap it (a network file system answers many at once).
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[i : i + 2048] for i in range(0, len(paths), 2048)]
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        missing = [p for found in pool.map(lambda ps: [p for p in ps if not os.path.isfile(p)], chunks) for p in found]
    if missing:
        shown = "\n  ".join(missing[:5])
        raise ConfigError(
            f"{list_file}: image not found for {len(missing)} of {len(paths)} rows under lt_image_root={image_root!r}, "
            f"e.g.\n  {shown}\n(is lt_image_root right? are all the benchmark's images downloaded?)"
        )
    features = Features({"image": Image(), "label": ClassLabel(names=list(class_names))})
    return Dataset.from_dict({"image": paths, "label": labels}, features=features)


_WNID_LINE = re.compile(r"^(n\d{8})\s+(.+)$")  # ImageNet's LOC_synset_mapping.txt: "n01440764 tench, Tinca tinca"


def _read_class_names(path: str | None) -> list[str] | None:
    """Class names in label order from ``lt_class_names`` (see the README's "Class names" for each benchmark).

    Formats: a ``.json`` list of names, a list of ``{"id", "name"}`` objects (iNaturalist 2018's
    ``categories.json``) or an ``{id: name}`` mapping; a text file with one name per line in label order, or
    ``name label`` / ``label name`` lines (Places365's ``categories_places365.txt``: ``/a/airfield 0``), or ImageNet's
    ``wnid name, synonym, ...`` lines (``LOC_synset_mapping.txt``, label order = line order). Scene paths become
    readable (``/a/apartment_building/outdoor`` -> ``apartment building outdoor``); a name used twice (ImageNet has
    two *crane* and two *maillot* synsets) gets its WordNet id or label added.

    Raises:
        ConfigError: a missing file, a gap or a repeat in explicit labels, or numbers instead of names.
    """
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"lt_class_names file not found: {path}")
    by_label: dict[int, str] = {}
    extra: dict[int, str] = {}  # a disambiguator per label (its wnid) for repeated names
    if path.endswith(".json"):
        import json

        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        if isinstance(values, dict):
            values = [{"id": k, "name": v} for k, v in values.items()]
        for i, value in enumerate(values):
            if isinstance(value, dict):
                by_label[int(value.get("id", i))] = str(value["name"])
            else:
                by_label[i] = str(value)
    else:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        split = [line.rsplit(maxsplit=1) for line in lines]
        head_split = [line.split(maxsplit=1) for line in lines]
        if lines and all(len(p) == 2 and p[1].isdigit() for p in split):  # "name label"
            by_label = {int(label): name for name, label in split}
        elif lines and all(len(p) == 2 and p[0].isdigit() for p in head_split):  # "label name"
            by_label = {int(label): name for label, name in head_split}
        else:
            for i, line in enumerate(lines):
                match = _WNID_LINE.match(line)
                by_label[i] = match.group(2).split(",")[0].strip() if match else line
                if match:
                    extra[i] = match.group(1)
    labels = sorted(by_label)
    if labels != list(range(len(labels))):
        gap = next(i for i, label in enumerate(labels) if label != i)
        raise ConfigError(f"{path}: labels must be 0..{len(labels) - 1} once each; label {gap} is missing")
    names = []
    for i in labels:
        name = by_label[i]
        if name.startswith("/") and "/" in name[1:]:  # Places: /a/airfield, /a/apartment_building/outdoor
            name = " ".join(name.split("/")[2:]).replace("_", " ")
        names.append(name)
    if all(n.lstrip("-").isdigit() for n in names):
        raise ConfigError(f"{path} holds numbers, not class names: {_CLASS_NAMES_HELP}")
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({extra.get(i, i)})" if counts[n] > 1 else n for i, n in enumerate(names)]


_CLASS_NAMES_HELP = (
    "set lt_class_names to a file of names in label order (one per line, 'name label' lines, or a JSON list); "
    "the README's 'Class names' section says where ImageNet-LT, Places-LT and iNaturalist 2018 publish theirs"
)


def _standardize_columns(ds: Dataset, image_column: str, label_column: str, where: str) -> Dataset:
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise ConfigError(f"{where} has no column(s) {missing}; columns are {ds.column_names}")
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if label_column != "label":
        if "label" in ds.column_names:
            ds = ds.remove_columns("label")
        ds = ds.rename_column(label_column, "label")
    if not isinstance(ds.features["image"], Image):
        ds = ds.cast_column("image", Image())
    return ds


def _ensure_class_label(ds: DatasetDict) -> DatasetDict:
    feature = ds["train"].features["label"]
    if isinstance(feature, ClassLabel):
        return ds
    values = sorted({v for split in ds.values() for v in split["label"]})
    if all(isinstance(v, (int, np.integer)) for v in values):
        if min(values) < 0:
            raise ConfigError(f"label {min(values)} is negative")
        names = [str(i) for i in range(max(values) + 1)]
        return DatasetDict({k: v.cast_column("label", ClassLabel(names=names)) for k, v in ds.items()})
    names = [str(v) for v in values]
    return DatasetDict({k: v.cast_column("label", ClassLabel(names=names)) for k, v in ds.items()})


def _check_label_range(ds: DatasetDict, label_column: str) -> None:
    """Every label a class of the ClassLabel: a label past the names would fail at the first batch (an index or
    shape error), a negative one in numpy."""
    for split, part in ds.items():
        names = part.features["label"].names
        labels = np.asarray(part.data.column("label").to_numpy(zero_copy_only=False))
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            bad = labels[(labels < 0) | (labels >= len(names))]
            raise ConfigError(
                f"split {split!r}: column {label_column!r} holds label(s) {sorted(set(bad.tolist()))[:5]} outside "
                f"0..{len(names) - 1} (its {len(names)} class names); fix the labels or the class names"
            )


def load_target_dataset(args: DataArguments, require_names: str | None = None) -> DatasetDict:
    """Load the long-tailed target set as a DatasetDict with ``train`` (and ``validation`` when configured).

    Sources: any ``datasets`` source (Hub id, ``parquet`` / ``imagefolder`` with files, a local folder), or the
    long-tail split files (``lt_train_list``). Then, in order: a seeded subset of ``num_classes`` classes, the
    long-tail profile (``imbalance_factor``), truncation. Columns are renamed to ``image`` / ``label`` (ClassLabel).

    Example:
        >>> splits = load_target_dataset(DataArguments(dataset_name="parquet", train_files=["train-*.parquet"]))

    Args:
        args: the ``# Data`` arguments.
        require_names: what needs readable class names (e.g. ``"the openai neighbor backend"``): numeric labels
            (split files without ``lt_class_names``) are then an error instead of a warning.

    Raises:
        ConfigError: a missing column, a label out of range, a class without training images, or numeric class
            names when ``require_names`` is set.
    """
    if args.lt_train_list:
        if not args.lt_image_root:
            raise ConfigError("lt_train_list needs lt_image_root")
        names = _read_class_names(args.lt_class_names)
        splits = {"train": load_lt_split_file(args.lt_train_list, args.lt_image_root, names)}
        if args.lt_eval_list:
            names = splits["train"].features["label"].names
            splits["validation"] = load_lt_split_file(args.lt_eval_list, args.lt_image_root, names)
        ds = DatasetDict(splits)
    elif args.dataset_name or args.train_files:
        data_files = None
        if args.train_files:
            data_files = {"train": _expand(args.train_files)}
            if args.eval_files:
                data_files["validation"] = _expand(args.eval_files)
        builder = args.dataset_name or _builder_for(data_files["train"])
        key = "dataset_name" if args.dataset_name else "train_files"
        loaded = load_source(key, builder, args.dataset_config_name, data_files=data_files)
        train_split = "train" if data_files else args.train_split
        eval_split = "validation" if data_files else args.eval_split
        if train_split not in loaded:
            raise ConfigError(f"split {train_split!r} not in {builder}; splits are {list(loaded)}")
        splits = {"train": loaded[train_split]}
        if eval_split in loaded:
            splits["validation"] = loaded[eval_split]
        ds = DatasetDict(splits)
    else:
        raise ConfigError("no target data: set dataset_name (with train_files / eval_files) or lt_train_list")

    ds = DatasetDict(
        {k: _standardize_columns(v, args.image_column, args.label_column, f"split {k!r}") for k, v in ds.items()}
    )
    ds = _ensure_class_label(ds)
    _check_label_range(ds, args.label_column)
    if "validation" in ds and ds["validation"].features["label"] != ds["train"].features["label"]:
        raise ConfigError("train and evaluation splits have different label names")
    if args.num_classes:
        ds = select_classes(ds, args.num_classes, seed=args.lt_seed)
    if args.heldout_eval_per_class:
        if not args.imbalance_factor:
            raise ConfigError("heldout_eval_per_class needs imbalance_factor (it uses the images the subsample left)")
        ds["validation"] = development_split(
            ds["train"], args.imbalance_factor, args.heldout_eval_per_class, args.lt_max_per_class, args.lt_seed
        )
    if args.imbalance_factor:
        ds["train"] = make_long_tailed(
            ds["train"], args.imbalance_factor, max_per_class=args.lt_max_per_class, seed=args.lt_seed
        )
    if args.max_train_samples:
        ds["train"] = (
            ds["train"].shuffle(seed=args.lt_seed).select(range(min(args.max_train_samples, len(ds["train"]))))
        )
    if args.max_eval_samples and "validation" in ds:
        n = min(args.max_eval_samples, len(ds["validation"]))
        ds["validation"] = ds["validation"].shuffle(seed=args.lt_seed).select(range(n))
    counts = class_counts(ds["train"])
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        names = ds["train"].features["label"].names
        raise ConfigError(
            f"{len(empty)} target class(es) have no training image, e.g. {names[empty[0]]!r}; "
            "drop them from the label set or add images"
        )
    check_class_names(ds["train"].features["label"].names, require_names)
    return ds


def check_class_names(names: Sequence[str], require_names: str | None = None) -> None:
    """Numeric class names ('0'..'C-1'): a warning, or a ``ConfigError`` when ``require_names`` says what asks about
    the classes by name (e.g. ``"the openai neighbor backend"``)."""
    if names and all(str(n).lstrip("-").isdigit() for n in names):
        problem = f"the {len(names)} target class names are numbers ({names[0]!r} .. {names[-1]!r})"
        if require_names:
            raise ConfigError(f"{require_names} asks about classes by name, but {problem}: {_CLASS_NAMES_HELP}")
        logger.warning("%s, so a trained model's id2label will be numbers: %s", problem, _CLASS_NAMES_HELP)


def _expand(patterns: Sequence[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not matched or not all(os.path.exists(f) or "://" in f for f in matched):
            raise ConfigError(f"no data file matches {pattern!r}")
        files.extend(matched)
    return files


def _builder_for(files: Sequence[str]) -> str:
    ext = os.path.splitext(files[0])[1].lstrip(".").lower()
    return {"parquet": "parquet", "csv": "csv", "json": "json", "jsonl": "json", "arrow": "arrow"}.get(
        ext, "imagefolder"
    )


# --------------------------------------------------------------------------------------------------------------------
# Auxiliary sets and the merged label space
# --------------------------------------------------------------------------------------------------------------------


def load_aux_dataset(source: str, split: str = "train") -> Dataset:
    """Load an auxiliary set (folder written by the curation recipe, in Parquet or WebDataset shards, Parquet file(s)
    or Hub id) and check its columns."""
    if source.endswith(".parquet") or any(ch in source for ch in "*?["):
        loaded = load_source("aux_dataset", "parquet", data_files={split: _expand([source])})
    else:
        loaded = load_source("aux_dataset", source)
    if split not in loaded:
        raise ConfigError(f"auxiliary dataset {source} has no split {split!r}; splits are {list(loaded)}")
    aux = loaded[split]
    if {"jpg", "cls", "json"} <= set(aux.column_names) and "image" not in aux.column_names:  # build.format: webdataset
        from .retrieval.builder import aux_from_webdataset

        aux = aux_from_webdataset(aux)
    missing = [c for c in AUX_COLUMNS if c not in aux.column_names]
    if missing:
        raise ConfigError(f"auxiliary dataset {source} lacks column(s) {missing}; columns are {aux.column_names}")
    if not isinstance(aux.features["label"], ClassLabel):
        raise ConfigError(f"auxiliary dataset {source}: 'label' must be a ClassLabel over auxiliary class names")
    if len(aux) == 0:
        raise ConfigError(f"aux_dataset {source}: its {split!r} split has no images (did the curation's build stage "
                          "keep any? or pass --aux_dataset '' to train without one)")  # fmt: skip
    return aux


@dataclass
class LabelSpace:
    """The merged label space: target names ``0..L-1``, then auxiliary names ``L..L+K-1``, and the neighbor pairs."""

    target_names: list[str]
    aux_names: list[str] = field(default_factory=list)
    neighbor_of: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        return len(self.target_names)

    @property
    def names(self) -> list[str]:
        return self.target_names + self.aux_names

    @property
    def neighbor_pairs(self) -> torch.Tensor:
        """LongTensor ``[E, 2]`` of (target class, auxiliary class) in merged indices."""
        target_index = {n: i for i, n in enumerate(self.target_names)}
        pairs = [
            (target_index[t], self.num_targets + k)
            for k, name in enumerate(self.aux_names)
            for t in self.neighbor_of.get(name, [])
        ]
        return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def merge_label_space(
    target_names: Sequence[str], aux: Dataset | None = None, neighbor_map: dict[str, list[str]] | None = None
) -> LabelSpace:
    """Merge target and auxiliary classes and collect each auxiliary class's ``neighbor_of`` targets.

    ``neighbor_of`` comes from the auxiliary dataset's column (the union over a class's rows), or from
    ``neighbor_map`` (a neighbor manifest) when given.

    Raises:
        ConfigError: an auxiliary class named like a target class, or ``neighbor_of`` naming an unknown target.
    """
    space = LabelSpace(list(target_names))
    if aux is None:
        return space
    space.aux_names = list(aux.features["label"].names)
    from .neighbors.names import NameIndex  # the leak guard's normalizer: case, spaces, hyphens, plurals

    target_index = NameIndex({n: n for n in target_names})
    clashes = [n for n in space.aux_names if n in target_index]
    if clashes:
        raise ConfigError(
            f"auxiliary class(es) {clashes[:5]} equal target class names; an auxiliary class must be a different "
            "category (the neighbor search's leak guard drops these)"
        )
    if neighbor_map is None:
        table = aux.select_columns(["label", "neighbor_of"]).to_pandas()
        neighbor_map = {}
        for label, values in zip(table["label"], table["neighbor_of"]):
            values = [values] if isinstance(values, str) else list(values)
            bucket = neighbor_map.setdefault(space.aux_names[int(label)], [])
            bucket.extend(v for v in values if v not in bucket)
    known = set(target_names)
    for name, targets in neighbor_map.items():
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise ConfigError(f"auxiliary class {name!r} is a neighbor of unknown target class(es) {unknown[:5]}")
    _check_manifest_names(neighbor_map, space.aux_names)
    space.neighbor_of = {n: list(neighbor_map.get(n, [])) for n in space.aux_names}
    return space


def _check_manifest_names(neighbor_map: dict[str, list[str]], aux_names: Sequence[str]) -> None:
    """A neighbor manifest names auxiliary classes of this auxiliary set: none known is an error (it would train
    plain balanced softmax without a word), some unknown a warning with the count."""
    if not neighbor_map:
        return
    unknown = [n for n in neighbor_map if n not in set(aux_names)]
    if len(unknown) == len(neighbor_map):
        raise ConfigError(
            f"neighbor_manifest names none of the auxiliary set's {len(aux_names)} classes (e.g. {unknown[0]!r}); "
            "use the manifest the auxiliary set was built from"
        )
    if unknown:
        logger.warning("neighbor_manifest: %d of its %d auxiliary classes are not in the auxiliary set, e.g. %r",
                       len(unknown), len(neighbor_map), unknown[0])  # fmt: skip


class MergedImageDataset(torch.utils.data.Dataset):
    """Target rows ``0..N_t-1`` then auxiliary rows, auxiliary labels shifted by ``L``; applies ``transform``."""

    def __init__(self, target: Dataset, aux: Dataset | None, num_targets: int, transform: Callable | None = None):
        # Rows are read through the image column only: the other columns cost a third of a row read.
        self.target = target.select_columns(["image"])
        self.aux = aux.select_columns(["image"]) if aux is not None else None
        self.num_targets, self.transform = num_targets, transform
        self.target_labels = np.asarray(target["label"], dtype=np.int64)
        self.aux_labels = np.asarray(aux["label"], dtype=np.int64) if aux is not None else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.target_labels) + len(self.aux_labels)

    @property
    def labels(self) -> np.ndarray:
        """Merged label of every row."""
        return np.concatenate([self.target_labels, self.aux_labels + self.num_targets])

    def __getitem__(self, index: int) -> dict:
        n_t = len(self.target_labels)
        source, row = ("target", int(index)) if index < n_t else ("auxiliary", int(index - n_t))
        label = int(self.target_labels[row]) if source == "target" else int(self.aux_labels[row]) + self.num_targets
        try:
            image = (self.target if source == "target" else self.aux)[row]["image"]
            pixel_values = self.transform(image) if self.transform else image
        except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on corrupt or truncated bytes
            raise ValueError(f"{source} image at row {row} cannot be decoded ({err}); remove or fix that row") from err
        return {"pixel_values": pixel_values, "labels": label}


class AuxiliaryCappedSampler(torch.utils.data.Sampler[int]):
    """Every target image once per epoch plus at most ``max_aux_per_class`` images per auxiliary class.

    The auxiliary subset is drawn afresh each epoch from ``(seed, epoch)`` and the epoch is shuffled, so every
    process of a multi-process run builds the same epoch; ``accelerate`` then hands each process a disjoint share
    of its batches. The Trainer calls :meth:`set_epoch` before every epoch.

    Example:
        >>> sampler = AuxiliaryCappedSampler(num_target=1000, aux_labels=aux_labels, max_aux_per_class=50, seed=0)

    Args:
        num_target: target rows, indices ``0..num_target-1``.
        aux_labels: auxiliary class of every auxiliary row (rows ``num_target..``).
        max_aux_per_class: cap per auxiliary class per epoch.
        seed: base seed.
    """

    def __init__(self, num_target: int, aux_labels: Sequence[int], max_aux_per_class: int = 50, seed: int = 0):
        if max_aux_per_class < 1:
            raise ConfigError(f"max_aux_per_class must be >= 1, got {max_aux_per_class}")
        self.num_target, self.max_aux_per_class, self.seed, self.epoch = num_target, max_aux_per_class, seed, 0
        aux_labels = np.asarray(aux_labels, dtype=np.int64)
        order = np.argsort(aux_labels, kind="stable")
        bounds = np.flatnonzero(np.diff(aux_labels[order])) + 1
        self.aux_groups = [num_target + g for g in np.split(order, bounds)] if len(order) else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def per_class_draws(self) -> list[int]:
        """Images drawn per auxiliary class (in the order of the sorted auxiliary labels)."""
        return [min(len(g), self.max_aux_per_class) for g in self.aux_groups]

    def __len__(self) -> int:
        return self.num_target + sum(self.per_class_draws())

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The (shuffled) indices of one epoch."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        parts = [np.arange(self.num_target)]
        parts += [
            rng.choice(g, size=self.max_aux_per_class, replace=False) if len(g) > self.max_aux_per_class else g
            for g in self.aux_groups
        ]
        return rng.permutation(np.concatenate(parts))

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())


def merged_class_counts(target_counts: Sequence[int], aux_labels: Sequence[int], num_aux: int, max_aux_per_class: int):
    """Per-class counts for the loss: target training counts, then the per-epoch draws of each auxiliary class."""
    aux_counts = np.bincount(np.asarray(aux_labels, dtype=np.int64), minlength=num_aux)
    empty = np.flatnonzero(aux_counts == 0)
    if len(empty):
        raise ConfigError(f"{len(empty)} auxiliary class(es) have no image (first: index {empty[0]})")
    return torch.tensor(
        np.concatenate([np.asarray(target_counts), np.minimum(aux_counts, max_aux_per_class)]), dtype=torch.float32
    )


@dataclass
class MergedTrainingSet:
    """What training needs beyond the target set: the merged label space, the counts for the loss and the sampler."""

    space: LabelSpace
    aux: Dataset | None
    target_counts: np.ndarray  # training images per target class (defines Many / Medium / Few)
    aux_labels: np.ndarray  # auxiliary class of every auxiliary row
    class_counts: torch.Tensor  # per merged class: target counts, then per-epoch auxiliary draws
    sampler: AuxiliaryCappedSampler


def merge_training_set(args: DataArguments, target: DatasetDict, seed: int = 0) -> MergedTrainingSet:
    """Load the auxiliary set (and neighbor manifest) of ``args`` and merge it with ``target["train"]``.

    Example:
        >>> merged = merge_training_set(data_args, load_target_dataset(data_args), seed=training_args.seed)
        >>> merged.space.neighbor_pairs, merged.class_counts, merged.sampler

    Raises:
        ConfigError: see :func:`load_aux_dataset`, :func:`merge_label_space` and :func:`merged_class_counts`.
    """
    aux = load_aux_dataset(args.aux_dataset, args.aux_split) if args.aux_dataset else None
    neighbor_map = None
    if args.neighbor_manifest:
        from .neighbors.manifest import neighbor_map as read_neighbor_map

        neighbor_map = read_neighbor_map(args.neighbor_manifest)
    space = merge_label_space(target["train"].features["label"].names, aux, neighbor_map)
    target_counts = class_counts(target["train"])
    aux_labels = np.asarray(aux["label"], dtype=np.int64) if aux is not None else np.zeros(0, dtype=np.int64)
    counts = merged_class_counts(target_counts, aux_labels, len(space.aux_names), args.max_aux_per_class)
    sampler = AuxiliaryCappedSampler(len(target["train"]), aux_labels, args.max_aux_per_class, seed=seed)
    return MergedTrainingSet(space, aux, target_counts, aux_labels, counts, sampler)
