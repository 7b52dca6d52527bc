"""The ``retrieve``, ``filter`` and ``build`` stages of ``recipes/curate.py``; each is resumable.

Files under ``output_dir``:

- ``retrieve/searches.sqlite``: one record per searched auxiliary class (web and URL backends), so reruns never
  query an API twice; ``retrieve/urls.parquet``: every candidate URL (the hand-off to img2dataset);
  ``retrieve/downloads.sqlite``: one record per candidate with its outcome; ``retrieve/images/``: stored images
  (both record stores, :mod:`~neighbor_lt.retrieval.records_store`, read in chunks; the ``.jsonl`` logs of earlier
  versions are migrated into them once and kept as ``*.jsonl.migrated``);
  ``retrieve/dry_run.json``: with ``dry_run``, the requests and list price the searches would take (nothing sent).
- ``filter/scores-<scorer>.sqlite``: per-image scores, committed shard by shard (a JSONL score file of earlier
  versions is imported once); ``filter/decisions.parquet``: scores plus keep and reason;
  ``filter/prototypes-*.npz`` and ``filter/eval-*.npz``: cached prototypes and evaluation embeddings / hashes;
  ``filter/summary.json``: counts per reason, ``scored`` and the stage's ``timings_s``.
- ``aux_dataset/``: the published dataset (``data/train-*.parquet`` or, with ``build.format: webdataset``,
  ``data/train-*.tar``, + README.md), written in ``aux_dataset.tmp/`` first; ``build/summary.json``.

Each stage logs a one-line summary and raises :class:`StageError` (``recipes/curate.py`` exits 1 with its message)
when it produced nothing usable: every search failed, no image was retrieved, none passed the filters, none was kept
for the dataset (the previous ``aux_dataset/`` is then left untouched). A partial failure says how many failed and
how to retry them (``retry_failed: true`` in the ``retrieve:`` section, or ``recipes/curate.py --retry_failed``).
API keys never reach a file or a log line: ``retrieve/config.json`` is redacted, request logging is kept at WARNING.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..configs import ConfigError, from_dict
from ..curate import CurateContext, StageError, check_backend_options
from ..files import write_json_atomic
from ..neighbors.manifest import ManifestError, default_manifest_path, load_manifest
from ..secrets import install_log_redaction, redact, redact_mapping
from .builder import (
    FORMATS,
    AuxDatasetWriter,
    ClassSelector,
    decision_counts,
    decision_files,
    decisions_digest,
    kept_decisions,
    select_streaming,
    write_selected,
)
from .card import class_counts, count_stages, curation_card
from .download import (
    DOWNLOADS,
    OUTCOMES,
    DownloadConfig,
    Downloader,
    has_downloads,
    iter_downloads,
    iter_img2dataset,
    open_downloads,
)
from .pricing import describe_estimate, estimate_search_cost
from .scoring import check_pass_settings, score_and_decide
from .search import get_search_backend, search_backend_class
from .searches import open_searches, search_all

logger = logging.getLogger(__name__)

#: The rank stage's probe folder under ``<output_dir>/rank``: a retrieve folder (searches.sqlite, downloads.sqlite,
#: images/) whose searches and images the retrieve stage reuses.
PROBE_DIR = "probes"

__all__ = ["BuildArguments", "FilterArguments", "RetrieveArguments", "StageError", "run_build", "run_filter",
           "run_retrieve"]  # fmt: skip
# StageError lives in neighbor_lt.curate; importing it from here still works.


@dataclass
class RetrieveArguments:
    """The ``retrieve:`` section: how candidates are found and fetched."""

    backend: str = field(
        default="pool", metadata={"help": "Search backend: brave, serpapi, google (until 2027-01-01), pool or urls."}
    )
    backend_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Options of the backend (endpoint, api_key_env, data_files, ...)."}
    )
    neighbor_manifest: str | None = field(
        default=None, metadata={"help": "Neighbor manifest; <output_dir>/neighbors/neighbors.json by default."}
    )
    query_template: str = field(default="{name}", metadata={"help": "Search query built from an auxiliary name."})
    images_per_class: int = field(
        default=100,
        metadata={
            "help": "Images per auxiliary class: candidates searched (pages asked) and fetched, and the build stage's "
            "cap unless build.max_images_per_class is set. The paper used ~800."
        },
    )
    max_results_per_query: int | None = field(
        default=None, metadata={"help": "Candidates asked per auxiliary class; empty: images_per_class."}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Only report the requests and the list price the searches would take."}
    )
    exclude_target_classes: bool = field(
        default=True, metadata={"help": "pool: never return rows of a target class (leak guard)."}
    )
    download: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Downloader settings (DownloadConfig keys)."}
    )
    img2dataset_dir: str | None = field(
        default=None, metadata={"help": "Ingest this img2dataset output instead of downloading urls.parquet here."}
    )
    search_only: bool = field(
        default=False, metadata={"help": "Stop after writing retrieve/urls.parquet (for img2dataset)."}
    )
    retry_failed: bool = field(
        default=False,
        metadata={
            "help": "Ask again the searches that returned nothing and fetch again the URLs that failed with a "
            "retryable outcome (timeout, 429 / 5xx, network or DNS error, robots.txt unreachable) or that the address "
            "guard refused (checked again under the current download.allowed_networks); nothing else."
        },
    )
    max_consecutive_search_errors: int = field(
        default=5,
        metadata={"help": "Stop sending queries after this many failed searches in a row (bad key, quota); 0: never."},
    )

    def __post_init__(self):
        """Check the backend, its options (against its constructor) and the downloader keys before any request."""
        try:
            backend = search_backend_class(self.backend)
        except ValueError as e:
            raise ConfigError(f"retrieve.backend: {e}") from None
        check_backend_options(backend, self.backend_kwargs, f"retrieve.backend_kwargs ({self.backend})")
        from_dict(DownloadConfig, self.download, "retrieve.download")
        if self.images_per_class < 1:
            raise ConfigError(f"retrieve.images_per_class must be a positive integer (got {self.images_per_class})")

    @property
    def results_per_query(self) -> int:
        return self.max_results_per_query or self.images_per_class


@dataclass
class FilterArguments:
    """The ``filter:`` section: caption match, prototype window and leak check."""

    caption_filter: bool = field(default=True, metadata={"help": "Drop images whose caption lacks the name."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "AutoModel for embeddings (e.g. facebook/dinov2-base); empty: no embeddings."}
    )
    pooling: str = field(default="cls", metadata={"help": "cls, mean or pooler."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str | None = field(
        default=None,
        metadata={"help": "Torch device; empty: CUDA when available (worker i on GPU i % count), else CPU."},
    )
    num_proc: int | None = field(
        default=None,
        metadata={
            "help": "Scoring processes, each with its own model (the CPU cores are shared out between them; more "
            "than the CUDA devices share them, said in one line); empty: one per CUDA device, 1 without a GPU or "
            "with device set to one."
        },
    )
    shard_size: int = field(
        default=2048,
        metadata={"help": "Images per score shard: the unit of work of a process and of resuming after a kill."},
    )
    decode_threads: int = field(
        default=2, metadata={"help": "Threads per process decoding and preprocessing the next batches; 0: none."}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "Autocast of the embedding pass: auto (bf16 / fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model repository."})
    gamma_low: float | None = field(default=0.7, metadata={"help": "Lowest cosine similarity to the prototype."})
    gamma_high: float | None = field(default=0.98, metadata={"help": "Highest similarity (drops near-copies)."})
    leak_check: bool = field(default=True, metadata={"help": "Drop near duplicates of target evaluation images."})
    leak_splits: list[str] | None = field(
        default=None, metadata={"help": "Target splits checked for leaks; all but train_split by default."}
    )
    leak_similarity: float | None = field(default=0.95, metadata={"help": "Embedding similarity counted as a leak."})
    leak_phash_distance: int = field(default=4, metadata={"help": "Perceptual-hash distance counted as a leak."})
    train_split: str = field(default="train", metadata={"help": "Target split the prototypes come from."})
    image_column: str = field(default="image", metadata={"help": "Image column of the target set."})
    label_column: str = field(default="label", metadata={"help": "Label column of the target set."})

    def __post_init__(self):
        """Check the pass's settings before any model is loaded: one line naming each bad key."""
        check_pass_settings(self)


@dataclass
class BuildArguments:
    """The ``build:`` section: per-class cap, output dataset, card and push."""

    max_images_per_class: int | None = field(
        default=None, metadata={"help": "Cap of images per auxiliary class; empty: retrieve.images_per_class."}
    )
    min_images_per_class: int = field(default=1, metadata={"help": "Classes with fewer images are left out."})
    selection: str = field(
        default="random", metadata={"help": "Which images survive the cap: random, rank, similarity."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random selection."})
    rows_per_shard: int = field(default=5000, metadata={"help": "Rows per shard."})
    format: str = field(
        default="parquet",
        metadata={
            "help": "parquet (data/train-*.parquet) or webdataset (data/train-*.tar: {sha256}.jpg / .cls / .json per "
            "image, for sets over a few million images); load_dataset(folder) reads both."
        },
    )
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset id (card snippet, push)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the dataset when a Hub token is set."})
    private: bool = field(default=True, metadata={"help": "Create the Hub repository as private."})
    license: str = field(default="other", metadata={"help": "License field of the card."})
    card_template: str | None = field(default=None, metadata={"help": "Card template; hub_cards/dataset_card.md."})
    target_name: str | None = field(default=None, metadata={"help": "Name of the target set shown on the card."})

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"build.format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.rows_per_shard < 1:
            raise ConfigError(f"build.rows_per_shard must be a positive integer (got {self.rows_per_shard})")


# ---- helpers ----------------------------------------------------------------------------------------------------
def _arguments(section, cls, where: str):
    """The stage's settings: a checked settings object as is, a YAML mapping checked into one."""
    return section if isinstance(section, cls) else from_dict(cls, section, where)


def _save_json(path: str, value) -> None:
    write_json_atomic(path, value, indent=2, default=str)


def _load_json(path: str, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def load_neighbor_manifest(path: str) -> dict:
    """Read and validate the neighbors stage's manifest (:func:`~neighbor_lt.neighbors.manifest.load_manifest`).

    Raises:
        StageError: the manifest's problem in one line (:class:`~neighbor_lt.neighbors.manifest.ManifestError`),
            before any request is sent.
    """
    try:
        return load_manifest(path, validate=True)
    except ManifestError as e:
        raise StageError(str(e)) from None


def current_manifest(context: CurateContext) -> tuple[str, dict | None]:
    """The manifest the retrieve stage used (its ``neighbor_manifest`` or the default) and its contents, or None
    when it cannot be read now."""
    retrieve_cfg = _load_json(os.path.join(context.output_dir, "retrieve", "config.json"), {}) or {}
    path = retrieve_cfg.get("neighbor_manifest") or default_manifest_path(context.output_dir)
    try:
        return path, load_manifest(path)
    except ManifestError:
        return path, None


def _target_names(context: CurateContext) -> list[str] | None:
    if not context.has_target:
        return None
    target = context.target
    train = target["train"] if "train" in target else next(iter(target.values()))
    names = getattr(train.features.get(context.label_column), "names", None)
    return list(names) if names else None


# ---- retrieve ---------------------------------------------------------------------------------------------------
def run_retrieve(section: RetrieveArguments | dict, context: CurateContext) -> dict[str, int]:
    """Search every auxiliary class of the neighbor manifest and download (or take from the pool) its candidates.

    Example:
        >>> run_retrieve({"backend": "pool", "backend_kwargs": {"data_files": "train-*.parquet"}}, context)  # doctest: +SKIP
        {'ok': 9120, 'duplicate': 14, ..., 'total': 9200}

    Args:
        section: the ``retrieve:`` YAML section (:class:`RetrieveArguments` keys).
        context: has ``output_dir`` and ``target`` (used for the pool's exclusion list).

    Returns:
        Counts per download outcome (also in ``retrieve/download_summary.json``).

    Raises:
        StageError: a bad neighbor manifest, every search failed or returned nothing, or no image was retrieved.
    """
    install_log_redaction()  # idempotent; keeps API keys in request URLs out of the logs even outside the recipe
    args = _arguments(section, RetrieveArguments, "retrieve")
    download = from_dict(DownloadConfig, args.download, "retrieve.download")
    out = context.stage_dir("retrieve")
    config = {**dataclasses.asdict(args), "download": dataclasses.asdict(download)}
    _save_json(os.path.join(out, "config.json"), redact_mapping(config))
    manifest = load_neighbor_manifest(args.neighbor_manifest or default_manifest_path(context.output_dir))
    aux = manifest["auxiliary"]
    if args.dry_run:
        return _dry_run(args, aux, out)
    # the rank stage's probes (searches and images of the candidate classes): reused, never fetched twice
    probes = os.path.join(context.output_dir, "rank", PROBE_DIR)
    probes = probes if os.path.isdir(probes) else None
    try:
        downloader = Downloader(out, download, reuse_dir=probes)
    except ValueError as e:  # a proxy it cannot use: one line, before any request
        raise StageError(redact(f"retrieve: {e}")) from None
    try:
        if args.img2dataset_dir:
            summary = downloader.run(iter_img2dataset(args.img2dataset_dir), desc="img2dataset ingest")
            return _report_downloads(summary, "img2dataset ingest", args.retry_failed)
        backend = search_backend(args, manifest, context)
        candidates, searches = search_all(backend, args, aux, out, reuse_dir=probes)
        if args.search_only:
            return {"candidates": searches["candidates"]}
        summary = downloader.run(candidates, desc=f"retrieve ({args.backend})", retry_failed=args.retry_failed)
        summary = _report_downloads(summary, f"retrieve ({args.backend})", args.retry_failed)
        if searches["failed"] or searches["not_sent"]:
            logger.warning(
                "retrieve: %d of %d search(es) failed or were not sent; rerun the stage to retry them",
                searches["failed"] + searches["not_sent"], len(aux),
            )  # fmt: skip
        return summary
    finally:
        downloader.close()


def search_backend(args: RetrieveArguments, manifest: dict, context: CurateContext):
    """The search backend of the ``retrieve:`` settings; a pool never returns a target class of ``manifest``.

    Raises:
        StageError: the backend cannot start (unknown backend, missing key, unknown option), in one line.
    """
    kwargs = dict(args.backend_kwargs)
    if search_backend_class(args.backend).local and args.exclude_target_classes:
        excluded = set(kwargs.get("exclude_names") or [])
        for target in manifest.get("targets", []):
            excluded.update(str(target[k]) for k in ("name", "query") if target.get(k))
        excluded.update(_target_names_safe(context))
        kwargs["exclude_names"] = sorted(excluded)
    try:
        return get_search_backend(args.backend, **kwargs)
    except (ValueError, TypeError) as e:  # unknown backend, missing key, unknown option: one line, no secret
        raise StageError(redact(f"retrieve: cannot start the {args.backend!r} backend: {e}")) from None


def _target_names_safe(context: CurateContext) -> list[str]:
    try:
        return _target_names(context) or []
    except Exception as e:  # the target set is optional here: the manifest already names the targets
        logger.warning("could not load the target set for the pool exclusion list: %s", e)
        return []


def _report_downloads(summary: dict, desc: str, retried: bool) -> dict:
    """Log the one-line download summary; raise StageError when no image was retrieved."""
    failed = {k: summary[k] for k in OUTCOMES if k not in ("ok", "duplicate") and summary.get(k)}
    detail = ", ".join(f"{v} {k}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1]))
    logger.info(
        "%s: %d candidate(s): %d ok, %d duplicate, %d failed%s",
        desc, summary["total"], summary["ok"], summary["duplicate"], sum(failed.values()), f" ({detail})" if detail else "",
    )  # fmt: skip
    blocked = (
        f"{summary['blocked_address']} URL(s) point at private, loopback, link-local or reserved addresses, which "
        "the address guard refuses: if they are your own servers, list their networks in "
        "retrieve.download.allowed_networks (e.g. ['10.0.0.0/8']) and rerun: refused URLs are checked again"
    ) if summary.get("blocked_address") else ""  # fmt: skip
    if summary["ok"] == 0:
        what = f"all {summary['total']} candidate(s) failed ({detail})" if summary["total"] else "no candidate"
        raise StageError(
            f"{desc}: no image retrieved: {what}; see retrieve/downloads.sqlite{'; ' + blocked if blocked else ''}"
        )
    if blocked:
        logger.warning("%s: %s", desc, blocked)
    if summary.get("retryable"):
        logger.warning(
            "%s: %d URL(s) failed in a way that may pass later (timeout, 429 / 5xx, network or DNS error, robots.txt "
            "unreachable)%s; fetch only those again with: recipes/curate.py ... --stages retrieve --retry_failed",
            desc, summary["retryable"], " even after this retry" if retried else "",
        )  # fmt: skip
    return summary


def _dry_run(args: RetrieveArguments, aux: list[dict], out: str) -> dict:
    """Price the searches (classes not in the search cache) and the downloads; nothing is sent."""
    with open_searches(out) as cache:
        cached = cache.present(a["name"] for a in aux)
    todo = [a for a in aux if a["name"] not in cached]
    estimate = estimate_search_cost(args.backend, len(todo), args.results_per_query, args.backend_kwargs)
    estimate["cached"] = len(aux) - len(todo)
    _save_json(os.path.join(out, "dry_run.json"), estimate)
    logger.info("dry run (%s): %s. Nothing was sent: set retrieve.dry_run false to search", args.backend,
                describe_estimate(estimate))  # fmt: skip
    if estimate["candidates_per_query"] < args.results_per_query:
        logger.warning(
            "dry run (%s): the API returns at most %d image(s) per query, fewer than the %d asked per class",
            args.backend, estimate["candidates_per_query"], args.results_per_query,
        )  # fmt: skip
    return estimate


# ---- filter -----------------------------------------------------------------------------------------------------
def run_filter(section: FilterArguments | dict, context: CurateContext) -> dict[str, Any]:
    """Score every retrieved image (caption, prototype similarity, leak check) and decide keep or drop.

    Example:
        >>> run_filter({"model_name_or_path": "facebook/dinov2-small", "gamma_low": 0.3}, context)  # doctest: +SKIP
        {'kept': 8011, 'caption': 0, 'similarity_low': 950, ...}

    Args:
        section: the ``filter:`` YAML section (:class:`FilterArguments` keys).
        context: has ``output_dir`` and ``target`` (train split for prototypes, other splits for the leak check).

    Returns:
        ``images``, the count per reason (``kept`` or the reason for dropping), ``scored`` (images scored by this
        run; the others were scored before) and ``timings_s`` (seconds of the reference embeddings, the scoring pass,
        the leak checks, the decisions and the whole stage), also in ``filter/summary.json``.

    Raises:
        StageError: nothing was retrieved, or no image passed the filters (the decisions are written first).
    """
    args = _arguments(section, FilterArguments, "filter")
    if next(iter_retrieved(context), None) is None:  # read to its end only when empty: says what it left out
        _nothing_retrieved(context)
    out = context.stage_dir("filter")
    _save_json(os.path.join(out, "config.json"), redact_mapping(dataclasses.asdict(args)))
    target = context.target if args.model_name_or_path or args.leak_check else None
    retrieve_dir = os.path.join(context.output_dir, "retrieve")
    passes = itertools.count()  # the images are read once to score, once to decide: left-out classes said once
    reasons, run = score_and_decide(
        lambda: iter_retrieved(context, report=next(passes) == 0), args, target, out, retrieve_dir
    )
    images = sum(reasons.values())
    summary = {"images": images, **dict(reasons), **run}
    _save_json(os.path.join(out, "summary.json"), summary)
    dropped = ", ".join(f"{v} {k}" for k, v in reasons.most_common() if k != "kept") or "none"
    logger.info("filter: %d image(s): %d kept, dropped: %s", images, reasons["kept"], dropped)
    if not reasons["kept"]:
        raise StageError(
            f"filter: no image passed the filters ({images} scored; dropped: {dropped}); "
            "see filter/decisions.parquet and loosen the thresholds"
        )
    return summary


def _nothing_retrieved(context: CurateContext) -> None:
    """Raise the filter's one-line error when there is no retrieved image of the current classes to filter."""
    folder = os.path.join(context.output_dir, "retrieve")
    if not has_downloads(folder):
        raise StageError(f"filter: {os.path.join(folder, DOWNLOADS)} not found: run the retrieve stage first")
    with open_downloads(folder) as store:
        total = store.count()
    raise StageError(
        f"filter: no retrieved image to filter ({total} record(s) in {os.path.join(folder, DOWNLOADS)}, none ok "
        "of the current classes): rerun the retrieve stage"
    )


def iter_retrieved(context: CurateContext, chunk_size: int = 10_000, report: bool = True) -> Iterator[list[dict]]:
    """The retrieved (``ok``) images of the auxiliary classes the neighbor manifest holds now, with its
    ``neighbor_of``, read from ``retrieve/downloads.sqlite`` ``chunk_size`` records at a time.

    The downloads keep the images of every earlier manifest (a rerun of the neighbors or rank stage may drop or
    re-pair classes); the filter, and so the dataset, follows the current one. Nothing is yielded when the retrieve
    stage has not run.

    Example:
        >>> for chunk in iter_retrieved(context, chunk_size=2048):  # doctest: +SKIP
        ...     scores = score_batch(chunk, refs, retrieve_dir, "embed")

    Args:
        context: has ``output_dir``.
        chunk_size: records read per chunk (a chunk may hold fewer after the class filter, never an empty one).
        report: log, once read to the end, how many images of classes no longer in the manifest were left out (a
            stage that reads the images several times says it once).
    """
    path, manifest = current_manifest(context)
    current = None
    if manifest is not None and isinstance(manifest.get("auxiliary"), list):
        current = {a["name"]: list(a.get("neighbor_of") or []) for a in manifest["auxiliary"] if isinstance(a, dict)}
    gone: Counter = Counter()
    for chunk in iter_downloads(os.path.join(context.output_dir, "retrieve"), "ok", chunk_size):
        if current is not None:
            gone.update(r.get("aux_name") for r in chunk if r.get("aux_name") not in current)
            chunk = [{**r, "neighbor_of": current[r["aux_name"]]} for r in chunk if r.get("aux_name") in current]
        if chunk:
            yield chunk
    if gone and report:
        logger.info(
            "filter: %d retrieved image(s) of %d class(es) no longer in %s left out (e.g. %s)",
            gone.total(), len(gone), path, ", ".join(map(repr, sorted(gone, key=str)[:3])),
        )  # fmt: skip


# ---- build ------------------------------------------------------------------------------------------------------
#: The decisions' columns a published row is built from (and fingerprinted by).
_BUILD_COLUMNS = ["aux_name", "sha256", "rank", "similarity", "path", "neighbor_of", "caption", "query", "source_url",
                  "page_url"]  # fmt: skip


def run_build(section: BuildArguments | dict, context: CurateContext) -> dict[str, Any]:
    """Cap the kept images per auxiliary class and write ``aux_dataset/`` (Parquet or WebDataset shards + card);
    push if asked.

    Streams: the decisions are read in batches (twice: to select, then to write), the shards are written one row group
    at a time, and a build killed midway resumes from its complete shards.

    Example:
        >>> run_build({"max_images_per_class": 50}, context)["images"]  # doctest: +SKIP
        4210
        >>> datasets.load_dataset(f"{context.output_dir}/aux_dataset", split="train")  # doctest: +SKIP

    Args:
        section: the ``build:`` YAML section (:class:`BuildArguments` keys).
        context: has ``output_dir``.

    Returns:
        The build summary (images, classes, counts per class and per stage), also in ``build/summary.json``.

    Raises:
        StageError: no decisions, or no image left to publish; the previous ``aux_dataset/`` is then left untouched
            (a new one is written beside it and swapped in only when it is complete and non-empty).
    """
    args = _arguments(section, BuildArguments, "build")
    if args.max_images_per_class is None:  # one setting sizes the whole run: retrieve.images_per_class
        args = dataclasses.replace(args, max_images_per_class=context.arguments("retrieve").images_per_class)
    out = context.stage_dir("build")
    dataset_dir = os.path.join(context.output_dir, "aux_dataset")
    batches = functools.partial(kept_decisions, context.output_dir)
    manifest = current_manifest(context)[1] or {}
    order = [a["name"] for a in manifest.get("auxiliary", [])]  # the label order
    try:
        content = [decisions_digest(context.output_dir), order, dataclasses.asdict(args)]
    except FileNotFoundError as e:  # no decisions: the filter stage has not run
        raise StageError(str(e)) from None
    fingerprint = hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()
    previous = _load_json(os.path.join(out, "summary.json"), {})
    if previous.get("fingerprint") == fingerprint and os.path.exists(os.path.join(dataset_dir, "README.md")):
        logger.info("build: %s is up to date", dataset_dir)
        return previous
    selector = ClassSelector(args.max_images_per_class, args.selection, args.seed)
    groups, num_kept = select_streaming(batches, selector, args.min_images_per_class)
    decided, reasons = decision_counts(context.output_dir)
    if not num_kept:
        raise StageError(
            f"build: no image passed the filters ({decided} decided, see {decision_files(context.output_dir)[0]}); "
            "the previous aux_dataset, if any, is left untouched"
        )
    if not groups:
        raise StageError(
            f"build: no auxiliary class has min_images_per_class={args.min_images_per_class} image(s) "
            f"({num_kept} kept image(s)); the previous aux_dataset, if any, is left untouched"
        )
    groups = dict(sorted(groups.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    num_images = sum(len(g) for g in groups.values())
    writer = AuxDatasetWriter(
        dataset_dir, list(groups), num_images, os.path.join(context.output_dir, "retrieve"), args.rows_per_shard,
        args.format, fingerprint,
    )  # fmt: skip
    counts = class_counts(groups, write_selected(batches, _BUILD_COLUMNS, groups, writer))
    retrieve_cfg = _load_json(os.path.join(context.output_dir, "retrieve", "config.json"), {}) or {}
    filter_cfg = _load_json(os.path.join(context.output_dir, "filter", "config.json"), {}) or {}
    downloads = _load_json(os.path.join(context.output_dir, "retrieve", "download_summary.json"), {}) or {}
    stage_counts = count_stages(
        downloads, decided, reasons, num_kept, num_images, manifest, filter_cfg, args.max_images_per_class
    )
    card = curation_card(
        args.hub_dataset_id or f"{os.path.basename(os.path.abspath(context.output_dir))}-aux",
        args, retrieve_cfg, filter_cfg, manifest, stage_counts, counts,
        local_path=None if args.hub_dataset_id else dataset_dir,
    )  # fmt: skip
    writer.commit(card)
    summary = {
        "fingerprint": fingerprint,
        "images": num_images,
        "classes": len(groups),
        "format": args.format,
        "stage_counts": stage_counts,
        "per_class": {row["name"]: row["count"] for row in counts},
        "dataset_dir": dataset_dir,
    }
    if args.push_to_hub:
        from huggingface_hub import get_token

        from ..hub import push_aux_dataset

        if not args.hub_dataset_id:
            logger.warning("push_to_hub is set but hub_dataset_id is empty: not pushing")
        elif not get_token():
            logger.warning("push_to_hub is set but no Hub token is configured: not pushing")
        else:
            summary["pushed"] = push_aux_dataset(dataset_dir, args.hub_dataset_id, private=args.private)
    _save_json(os.path.join(out, "summary.json"), summary)
    logger.info("build: %d image(s) in %d class(es) -> %s", num_images, len(groups), dataset_dir)
    return summary
