"""Ingest an img2dataset output folder: its images become candidates that carry their bytes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ..search import Candidate


def iter_img2dataset(folder: str) -> Iterable[Candidate]:
    """Candidates (with their bytes) from an img2dataset output folder, any of its output formats.

    Hand ``retrieve/urls.parquet`` to img2dataset (``--input_format parquet --url_col url --caption_col caption
    --save_additional_columns '["aux_name","neighbor_of","page_url","rank"]'``, with its Spark or Ray distributor at web
    scale), then point ``retrieve.img2dataset_dir`` at its output: the images go through the same validation, dedup,
    filters and builder. Only rows with ``status == "success"`` are read.

    Example:
        >>> candidates = list(iter_img2dataset("i2d_out"))  # doctest: +SKIP
    """
    import glob
    import tarfile

    import pyarrow.parquet as pq

    def make(meta: dict, data: bytes) -> Candidate:
        neighbor_of = meta.get("neighbor_of") or []
        if isinstance(neighbor_of, str):
            neighbor_of = json.loads(neighbor_of) if neighbor_of.startswith("[") else [neighbor_of]
        name = meta.get("aux_name") or meta.get("caption") or ""
        return Candidate(
            name, meta.get("url") or "", meta.get("page_url") or "", meta.get("caption") or "",
            int(meta.get("rank") or 0), data, name, list(neighbor_of),
        )  # fmt: skip

    for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        shard = pq.ParquetFile(path)
        if "jpg" not in shard.schema_arrow.names:
            continue  # the metadata table of the "files" / "webdataset" formats
        for batch in shard.iter_batches(batch_size=256):  # a shard holds up to number_sample_per_shard images
            for row in batch.to_pylist():
                if row.get("status", "success") == "success" and row.get("jpg"):
                    yield make(row, row.pop("jpg"))
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.json"))):
        with open(path) as f:
            meta = json.load(f)
        image_path = path[: -len(".json")] + ".jpg"
        if meta.get("status", "success") == "success" and os.path.exists(image_path):
            with open(image_path, "rb") as f:
                yield make(meta, f.read())
    for path in sorted(glob.glob(os.path.join(folder, "*.tar"))):
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if name.endswith(".json") and name[:-5] + ".jpg" in members:
                    meta = json.load(tar.extractfile(member))
                    if meta.get("status", "success") == "success":
                        yield make(meta, tar.extractfile(members[name[:-5] + ".jpg"]).read())
