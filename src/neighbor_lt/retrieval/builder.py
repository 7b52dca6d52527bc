"""Write the auxiliary set: Parquet (or WebDataset tar) shards that ``datasets.load_dataset(folder)`` opens, plus its
card.

The build streams: the filter's decisions are read in batches, the per-class cap keeps at most ``2 x cap`` candidates
per class in memory (:class:`ClassSelector`), and the shards are written one row group at a time, each image's bytes
read from its stored file only when its row group is written. Memory grows with the number of classes times the cap
and with a few bytes per kept image, not with the rows' contents.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

#: ``build.format``: Parquet shards (``data/train-*.parquet``) or WebDataset tar shards (``data/train-*.tar``).
FORMATS = ("parquet", "webdataset")
SELECTIONS = ("random", "rank", "similarity")
#: The columns of a row besides the image and the label (the JSON member of a WebDataset sample).
TEXT_COLUMNS = ("neighbor_of", "source_url", "page_url", "caption", "query", "sha256", "similarity")
_STATE = "build_state.json"  # in the folder being written: what it is being written from, for a resumed build


def _strings():
    from datasets import Value

    try:
        from datasets import List

        return List(Value("string"))
    except ImportError:  # datasets < 4
        from datasets import Sequence

        return Sequence(Value("string"))


def aux_features(class_names: list[str]):
    """The agreed schema of the auxiliary dataset."""
    from datasets import ClassLabel, Features, Image, Value

    return Features(
        {
            "image": Image(),
            "label": ClassLabel(names=list(class_names)),
            "neighbor_of": _strings(),
            "source_url": Value("string"),
            "page_url": Value("string"),
            "caption": Value("string"),
            "query": Value("string"),
            "sha256": Value("string"),
            "similarity": Value("float32"),
        }
    )


def webdataset_features(class_names: list[str]):
    """The schema ``datasets``' ``webdataset`` builder reads from a WebDataset-format set (declared in its card): one
    sample per image, ``{key}.jpg`` (image), ``{key}.cls`` (label) and ``{key}.json`` (the other columns)."""
    from datasets import Features

    features = aux_features(class_names)
    return Features(
        {"jpg": features["image"], "cls": features["label"], "json": {k: features[k] for k in TEXT_COLUMNS}}
    )


def aux_from_webdataset(dataset):
    """A WebDataset-format auxiliary set (columns ``jpg``, ``cls``, ``json``) with the columns of :func:`aux_features`.

    Example:
        >>> aux = aux_from_webdataset(load_dataset("out/aux_dataset", split="train"))  # doctest: +SKIP
        >>> aux.column_names  # doctest: +SKIP
        ['image', 'label', 'neighbor_of', 'source_url', 'page_url', 'caption', 'query', 'sha256', 'similarity']
    """
    renames = {"jpg": "image", "cls": "label", **{f"json.{k}": k for k in dataset.features["json"]}}
    return dataset.flatten().rename_columns(renames)


# ---- the filter's decisions ---------------------------------------------------------------------------------
def decision_files(output_dir: str) -> list[str]:
    """The filter's decisions: ``filter/decisions.parquet``, a file or a folder of Parquet shards.

    Raises:
        FileNotFoundError: there is none (the filter stage has not run); the build stage reports it as its error.
    """
    path = os.path.join(output_dir, "filter", "decisions.parquet")
    files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "*.parquet")))
    if not files:
        raise FileNotFoundError(f"build: {path} not found: run the filter stage first")
    return files


def kept_decisions(
    output_dir: str, columns: list[str], batch_size: int = 8192, only: np.ndarray | None = None
) -> Iterator[dict[str, list]]:
    """The kept images of the filter's decisions (the one reader of ``filter/decisions.parquet``), in batches: column
    -> values (``neighbor_of`` a list, a missing similarity None), plus ``ordinal``, each row's position among all
    decisions, the same on every call.

    Example:
        >>> next(kept_decisions("outputs/curate", ["aux_name", "sha256"]))  # doctest: +SKIP
        {'aux_name': ['koi', ...], 'sha256': ['9f2c...', ...], 'ordinal': [0, 2, ...]}

    Args:
        output_dir: the curation folder.
        columns: the columns to read.
        batch_size: rows read at a time.
        only: sorted ordinals: only these rows (the others are never turned into Python objects).
    """
    import pyarrow.parquet as pq

    offset = 0
    for path in decision_files(output_dir):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=[*columns, "keep"]):
            keep = batch.column("keep").fill_null(False).to_numpy(zero_copy_only=False)
            if only is not None:
                ordinals = np.arange(offset, offset + batch.num_rows)
                at = np.minimum(np.searchsorted(only, ordinals), max(len(only) - 1, 0))
                keep = keep & (only[at] == ordinals) if len(only) else np.zeros_like(keep)
            keep = np.flatnonzero(keep)
            rows = {name: batch.column(name).take(keep).to_pylist() for name in columns}
            if "neighbor_of" in rows:
                rows["neighbor_of"] = [json.loads(v) if v else [] for v in rows["neighbor_of"]]
            if "similarity" in rows:
                rows["similarity"] = [None if v is None or math.isnan(v) else v for v in rows["similarity"]]
            rows["ordinal"] = (offset + keep).tolist()
            offset += batch.num_rows
            yield rows


def decisions_digest(output_dir: str) -> str:
    """A hash of the decision files' bytes: what a built set, or a half-written one, was built from."""
    digest = hashlib.sha256()
    for path in decision_files(output_dir):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def decision_counts(output_dir: str) -> tuple[int, Counter]:
    """How many images the filter decided on, and how many for each reason."""
    import pyarrow.parquet as pq

    decided, reasons = 0, Counter()
    for path in decision_files(output_dir):
        for batch in pq.ParquetFile(path).iter_batches(columns=["reason"]):
            decided += batch.num_rows
            reasons.update(batch.column("reason").to_pylist())
    return decided, reasons


# ---- selection --------------------------------------------------------------------------------------------------
class ClassSelector:
    """The per-class cap, fed one image at a time: holds at most ``2 x max_per_class`` candidates per class.

    ``random`` keeps the images with the smallest seeded hash of (seed, class, SHA-256): a seeded random sample that
    does not depend on the order the images come in. ``rank`` keeps the first in search order, ``similarity`` the
    closest to the prototype (no similarity last).

    Example:
        >>> selector = ClassSelector(max_per_class=1, selection="rank")
        >>> selector.add("koi", "ab", rank=3, similarity=None, ref=0); selector.add("koi", "cd", 1, None, 1)
        >>> selector.groups()
        {'koi': [1]}

    Args:
        max_per_class: cap of images per class.
        selection: random, rank or similarity.
        seed: seed of the random selection.
    """

    def __init__(self, max_per_class: int, selection: str = "random", seed: int = 0):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be random, rank or similarity, not {selection!r}")
        self.max_per_class, self.selection, self.seed = max_per_class, selection, seed
        self._held: dict[str, list] = {}
        self._seen: dict[str, int] = {}

    def _priority(self, name: str, sha256: str, rank: int, similarity: float | None):
        if self.selection == "random":
            digest = hashlib.blake2b(f"{self.seed}:{name}:{sha256}".encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big")
        if self.selection == "similarity":
            return -(similarity if similarity is not None else -2.0)
        return 0

    def add(self, name: str, sha256: str, rank: int | None, similarity: float | None, ref: int) -> None:
        """Offer one image of class ``name``; ``ref`` (an int) is what :meth:`groups` gives back for it."""
        rank = int(rank or 0)
        held = self._held.setdefault(name, [])
        held.append((self._priority(name, sha256, rank, similarity), rank, sha256, ref))
        self._seen[name] = self._seen.get(name, 0) + 1
        if len(held) >= 2 * self.max_per_class + 64:  # amortized: sort and cut once the list doubles
            held.sort()
            del held[self.max_per_class :]

    def groups(self, min_per_class: int = 1) -> dict[str, list[int]]:
        """Class -> refs of its kept images in search order (rank, SHA-256); classes offered fewer than
        ``min_per_class`` images are left out."""
        out = {}
        for name, held in self._held.items():
            if self._seen[name] >= min_per_class:
                kept = sorted(held)[: self.max_per_class]
                out[name] = [ref for _, _, _, ref in sorted(kept, key=lambda x: (x[1], x[2]))]
        return out


def duplicate_losers(rows: Iterable[tuple[str, str, int | None, int]]) -> set[int]:
    """The refs of images whose bytes an earlier image holds, in (class name, rank, ref) order.

    Args:
        rows: ``(sha256, class name, rank, ref)`` per image.
    """
    first: dict[str, tuple] = {}
    losers = set()
    for sha256, name, rank, ref in rows:
        order = (name, int(rank or 0), ref)
        held = first.get(sha256)
        if held is not None:
            losers.add(max(held, order)[2])
            order = min(held, order)
        first[sha256] = order
    return losers


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
        selection: which images survive the cap (see :class:`ClassSelector`).
        seed: seed of the random selection.
        min_per_class: classes with fewer images are left out.
    """
    selector = ClassSelector(max_per_class, selection, seed)
    losers = duplicate_losers((x["sha256"], x["aux_name"], x.get("rank"), n) for n, x in enumerate(items))
    for n, item in enumerate(items):
        if n not in losers:
            selector.add(item["aux_name"], item["sha256"], item.get("rank"), item.get("similarity"), n)
    return {name: [items[n] for n in refs] for name, refs in selector.groups(min_per_class).items()}


Batches = Callable[..., Iterator[dict[str, list]]]


def select_streaming(batches: Batches, selector: ClassSelector, min_per_class: int = 1):
    """Cap each class over batches of kept images, read once (three times when there are exact duplicates).

    Args:
        batches: ``batches(columns, only=None)`` yields column -> values dicts with ``ordinal`` (a row's position,
            the same on every call), as :func:`kept_decisions`; every call starts over.
        selector: an empty :class:`ClassSelector`.
        min_per_class: classes with fewer images are left out.

    Returns:
        ``(groups, kept)``: class -> selected ordinals, and how many kept images were read.
    """
    narrow = ["aux_name", "sha256", "rank", "similarity"]
    kept, buckets = 0, []
    for batch in batches(narrow):
        kept += len(batch["ordinal"])
        buckets.append(np.fromiter((hash(s) for s in batch["sha256"]), np.int64, len(batch["sha256"])))
        for row in zip(batch["aux_name"], batch["sha256"], batch["rank"], batch["similarity"], batch["ordinal"]):
            selector.add(*row)
    # exact duplicates: the bytes' hashes held once each (8 bytes an image); a rare event, since the downloader
    # already drops a second copy of the same bytes, resolved by one more pass over the rows that collide
    values, counts = np.unique(np.concatenate(buckets) if buckets else np.zeros(0, np.int64), return_counts=True)
    colliding = set(values[counts > 1].tolist())
    if colliding:
        losers = duplicate_losers(
            row for batch in batches(narrow)
            for row in zip(batch["sha256"], batch["aux_name"], batch["rank"], batch["ordinal"])
            if hash(row[0]) in colliding
        )  # fmt: skip
        if losers:
            logger.info("build: %d exact duplicate image(s) left out (same bytes in another class)", len(losers))
            selector = ClassSelector(selector.max_per_class, selector.selection, selector.seed)
            for batch in batches(narrow):
                for row in zip(
                    batch["aux_name"], batch["sha256"], batch["rank"], batch["similarity"], batch["ordinal"]
                ):
                    if row[-1] not in losers:
                        selector.add(*row)
    return selector.groups(min_per_class), kept


def write_selected(batches: Batches, columns: list[str], groups: dict[str, list[int]], writer) -> Iterator[tuple]:
    """Hand the selected rows of ``batches`` to ``writer`` in reading order; yields ``(class name, neighbor_of)`` per
    row (what :func:`~neighbor_lt.retrieval.card.class_counts` counts), so the counts come from what was written.

    Args:
        batches: as for :func:`select_streaming`; columns: the columns each row carries.
        groups: class -> selected ordinals; its order is the label order (``writer``'s classes).
        writer: an :class:`AuxDatasetWriter`.
    """
    names = list(groups)
    ordinals = np.concatenate([np.asarray(groups[n], np.int64) for n in names])
    labels = np.concatenate([np.full(len(groups[n]), k, np.int64) for k, n in enumerate(names)])
    order = np.argsort(ordinals)
    ordinals, labels = ordinals[order], labels[order]
    for batch in batches(columns, only=ordinals):
        found = np.asarray(batch["ordinal"], np.int64)
        at = np.minimum(np.searchsorted(ordinals, found), len(ordinals) - 1)
        for i in np.flatnonzero(ordinals[at] == found):
            item = {c: batch[c][i] for c in columns}
            writer.add(int(labels[at[i]]), item)
            yield names[labels[at[i]]], item["neighbor_of"]


# ---- writing ----------------------------------------------------------------------------------------------------
class AuxDatasetWriter:
    """Writes the auxiliary set shard by shard into ``<output_dir>.tmp`` and swaps it in once complete.

    Rows go to shard ``i // rows_per_shard`` in the order they are added; each shard is written one row group at a
    time to a hidden partial file and renamed when complete. With a ``fingerprint``, a build killed midway resumes: a
    rerun with the same fingerprint keeps the complete shards (their rows are skipped, their images not read again).
    The previous ``output_dir`` stays as it is until :meth:`commit` has checked every shard; a kill between the two
    renames of the swap is repaired by the next writer.

    Example:
        >>> writer = AuxDatasetWriter("out/aux_dataset", ["koi"], num_rows=1, image_root="out/retrieve")  # doctest: +SKIP
        >>> writer.add(0, {"path": "images/ab/ab.jpg", "sha256": "ab", "neighbor_of": ["goldfish"]})  # doctest: +SKIP
        >>> writer.commit(card)  # doctest: +SKIP

    Args:
        output_dir: the dataset folder.
        class_names: the ClassLabel names, in label order.
        num_rows: the rows that will be added.
        image_root: folder the items' ``path`` is relative to.
        rows_per_shard: rows per shard.
        format: ``parquet`` (``data/train-*.parquet``) or ``webdataset`` (``data/train-*.tar``).
        fingerprint: what the rows are built from; None: never resume.
    """

    def __init__(self, output_dir, class_names, num_rows, image_root, rows_per_shard=5000, format="parquet",
                 fingerprint=None):  # fmt: skip
        from datasets.arrow_writer import get_writer_batch_size_from_features

        if format not in FORMATS:
            raise ValueError(f"build.format must be parquet or webdataset, not {format!r}")
        if num_rows < 1:
            raise ValueError(f"no image to write: {output_dir} is left as it is")
        self.output_dir, self.image_root, self.format = output_dir.rstrip("/"), image_root, format
        self.num_rows, self.rows_per_shard = num_rows, rows_per_shard
        self.num_shards = max(1, math.ceil(num_rows / rows_per_shard))
        self.features = aux_features(class_names)
        self.row_group = min(rows_per_shard, get_writer_batch_size_from_features(self.features) or 100)
        self.tmp = self.output_dir + ".tmp"
        _repair_interrupted_swap(self.output_dir)
        state = {"fingerprint": fingerprint, "format": format, "rows_per_shard": rows_per_shard,
                 "num_rows": num_rows, "classes": list(class_names)}  # fmt: skip
        previous = _read_json(os.path.join(self.tmp, _STATE))
        if fingerprint is None or previous != state:
            shutil.rmtree(self.tmp, ignore_errors=True)
            os.makedirs(os.path.join(self.tmp, "data"))
            _write_json(os.path.join(self.tmp, _STATE), state)
        self.done = {i for i in range(self.num_shards) if os.path.exists(self.shard_path(i))}
        if self.done:
            logger.info("build: resuming %s: %d of %d shard(s) already written", self.tmp, len(self.done),
                        self.num_shards)  # fmt: skip
        self.added, self._rows, self._shard = 0, [], None

    def shard_path(self, shard: int, partial: bool = False) -> str:
        name = f"train-{shard:05d}-of-{self.num_shards:05d}.{'tar' if self.format == 'webdataset' else 'parquet'}"
        return os.path.join(self.tmp, "data", f".{name}.partial" if partial else name)

    def add(self, label: int, item: dict) -> None:
        """Add one row: ``item`` has ``path`` (its image file) and the :data:`TEXT_COLUMNS`."""
        shard = self.added // self.rows_per_shard
        self.added += 1
        if self.added > self.num_rows:
            raise ValueError(f"{self.num_rows} row(s) announced, {self.added} added")
        if shard in self.done:
            return
        self._rows.append((label, item))
        last = self.added % self.rows_per_shard == 0 or self.added == self.num_rows
        if len(self._rows) >= self.row_group or last:
            self._write_rows(shard)
        if last:
            self._close_shard(shard)

    def _write_rows(self, shard: int) -> None:
        if self._shard is None:
            if self.format == "webdataset":
                self._shard = tarfile.open(self.shard_path(shard, partial=True), "w", format=tarfile.PAX_FORMAT)
            else:
                from datasets.arrow_writer import ParquetWriter

                path = self.shard_path(shard, partial=True)
                self._shard = ParquetWriter(features=self.features, path=path, writer_batch_size=self.row_group)
        columns = {key: [] for key in self.features}
        for label, item in self._rows:
            with open(os.path.join(self.image_root, item["path"]), "rb") as f:
                data = f.read()
            row = _text_row(item)
            if self.format == "webdataset":
                key = row["sha256"] or f"{self.added:09d}"
                for ext, payload in (("jpg", data), ("cls", str(label).encode()), ("json", json.dumps(row).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode = len(payload), 0o644
                    self._shard.addfile(info, io.BytesIO(payload))
                continue
            columns["image"].append({"bytes": data, "path": f"{row['sha256']}.jpg"})
            columns["label"].append(label)
            for key in TEXT_COLUMNS:
                value = row[key]
                columns[key].append(float("nan") if key == "similarity" and value is None else value)
        if self.format == "parquet":
            self._shard.write_batch(columns)
        self._rows = []

    def _close_shard(self, shard: int) -> None:
        if self.format == "webdataset":
            self._shard.close()
        else:
            self._shard.finalize()  # closes the file
        self._shard = None
        os.replace(self.shard_path(shard, partial=True), self.shard_path(shard))

    def _rows_written(self, shard: int) -> int:
        if self.format == "webdataset":
            with tarfile.open(self.shard_path(shard)) as tar:
                return sum(1 for member in tar if member.name.endswith(".cls"))
        import pyarrow.parquet as pq

        return pq.read_metadata(self.shard_path(shard)).num_rows

    def commit(self, card=None) -> int:
        """Check every shard, save ``card`` (a ``DatasetCard``) as README.md and swap the folder in.

        Returns:
            The number of rows written.

        Raises:
            ValueError: fewer rows were added than announced, or a shard reads back short; ``output_dir`` is then
                left as it is.
        """
        written = sum(
            self._rows_written(shard) for shard in range(self.num_shards) if os.path.exists(self.shard_path(shard))
        )
        if self.added != self.num_rows or written != self.num_rows:
            raise ValueError(
                f"{self.tmp}: {written} row(s) read back, {self.added} added, {self.num_rows} announced; "
                f"{self.output_dir} is left as it is"
            )
        if card is not None:
            card.save(os.path.join(self.tmp, "README.md"))
        os.remove(os.path.join(self.tmp, _STATE))
        old = self.output_dir + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(self.output_dir):
            os.replace(self.output_dir, old)
        os.replace(self.tmp, self.output_dir)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("wrote %d image(s) to %s (%d %s shard(s))", written, self.output_dir, self.num_shards, self.format)
        return written


def _text_row(item: dict) -> dict:
    """The row's columns besides image and label, as the schema holds them (missing text: "")."""
    similarity = item.get("similarity")
    row = {key: str(item.get(key) or "") for key in TEXT_COLUMNS if key not in ("neighbor_of", "similarity")}
    row["neighbor_of"] = list(item.get("neighbor_of") or [])
    row["similarity"] = None if similarity is None or math.isnan(similarity) else float(similarity)
    return {key: row[key] for key in TEXT_COLUMNS}


def _repair_interrupted_swap(output_dir: str) -> None:
    """A kill between the swap's two renames leaves the previous set as ``.old``: put it back (or drop a stale one)."""
    old = output_dir + ".old"
    if os.path.isdir(old):
        if os.path.exists(output_dir):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, output_dir)
            logger.warning("build: %s restored from %s (an earlier build was stopped while swapping)", output_dir, old)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, value) -> None:
    from ..files import write_json_atomic

    write_json_atomic(path, value)


def write_aux_dataset(
    groups: dict[str, list[dict]], image_root: str, output_dir: str, card=None, rows_per_shard: int = 5000,
    format: str = "parquet",
) -> int:  # fmt: skip
    """Write ``groups`` (class name -> items) as ``output_dir/data/train-XXXXX-of-YYYYY.parquet`` (or ``.tar``) plus
    README.md, through :class:`AuxDatasetWriter`.

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
        rows_per_shard: rows per shard.
        format: ``parquet`` or ``webdataset``.

    Returns:
        The number of images written.

    Raises:
        ValueError: ``groups`` holds no image (nothing is written or replaced).
    """
    num_rows = sum(len(group) for group in groups.values())
    writer = AuxDatasetWriter(output_dir, list(groups), num_rows, image_root, rows_per_shard, format)
    for label, group in enumerate(groups.values()):
        for item in group:
            writer.add(label, item)
    return writer.commit(card)
