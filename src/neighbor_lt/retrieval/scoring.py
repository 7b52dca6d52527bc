"""The filter stage's scoring: what images are scored against, the sharded scoring pass, and the decisions file.

Scores are kept apart from decisions: embeddings and similarities are computed once and stored in a
:class:`~neighbor_lt.retrieval.records_store.RecordStore` (``filter/scores-<scorer>.sqlite``, keyed by image, one
committed transaction per shard of ``shard_size`` images), and the keep/drop decision with its reason is recomputed
from them on every run, so changing a threshold costs nothing. A killed pass loses at most the shards in flight; the
rerun scores only the images the store lacks, so nothing is lost and nothing is scored twice.

The pass runs in this process (``num_proc: 1``) or in this one and ``num_proc - 1`` worker processes started through
``torch.multiprocessing``: forked, with this process's loaded model, when every process runs on the CPU with one
thread; else spawned (CUDA works in them), each loading the model once, on its own GPU when there are several, with
the prototypes and evaluation embeddings as shared-memory tensors, not one copy each. Each process decodes and
preprocesses in threads, holds one shard at a time and sends its scores back; only this process writes the store, and
it scores shards too, from the start (while spawned workers import and load their model).
``datasets.map(num_proc=...)`` was the other engine at hand, but a killed map keeps nothing of its unfinished jobs,
and it has no per-worker state to hold a loaded model.

Example:
    >>> refs = build_references(args, target, "out/filter")  # doctest: +SKIP
    >>> store = open_scores("out/filter", refs.scorer_id, args.shard_size)  # doctest: +SKIP
    >>> score_items(pending(item_chunks, store, 2048), refs, args, "out/retrieve", store)  # doctest: +SKIP
    {'images': 9200, 'shards': 5, 'leak_embedding_s': 0.4}
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..cores import usable_cores
from .filters import (
    PRECISIONS,
    ImageEmbedder,
    PhashLeakIndex,
    batched,
    cached_array,
    caption_matches,
    compute_prototypes,
    dataset_key,
    decide,
    iter_images,
    max_similarity,
    phashes,
)
from .records_store import RecordStore

logger = logging.getLogger(__name__)

#: ``decisions.parquet``: the image's record, its scores, the keep flag and the reason.
DECISION_SCHEMA = pa.schema(
    [(name, pa.string()) for name in "key aux_name query sha256 phash path caption".split()]
    + [("rank", pa.int64()), ("source_url", pa.string()), ("page_url", pa.string()), ("neighbor_of", pa.string())]
    + [("caption_ok", pa.bool_()), ("similarity", pa.float64()), ("parent", pa.string())]
    + [("leak_similarity", pa.float64()), ("leak_match", pa.string()), ("leak_phash_distance", pa.int64())]
    + [("keep", pa.bool_()), ("reason", pa.string())]
)
DECISION_COLUMNS = DECISION_SCHEMA.names


# ---- references -------------------------------------------------------------------------------------------------
@dataclass
class References:
    """What the retrieved images are scored against: the target prototypes and the evaluation images."""

    scorer_id: str
    embedder: ImageEmbedder | None = None
    prototypes: np.ndarray | None = None
    index: dict[str, int] = field(default_factory=dict)  # target class name -> prototype row
    eval_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    eval_embeddings: np.ndarray | None = None
    eval_refs: list[str] = field(default_factory=list)  # "<split>#<row>" of each evaluation image


def build_references(args, target, out: str) -> References:
    """The embedder, target prototypes and evaluation hashes / embeddings, computed once and cached under ``out``.

    Args:
        args: the filter settings (:class:`~neighbor_lt.retrieval.stages.FilterArguments`).
        target: the target set (its train split for prototypes, the others for the leak check); None when neither
            runs.
        out: the filter stage's folder (the caches).
    """
    embedder = None
    if args.model_name_or_path:
        embedder = ImageEmbedder(
            args.model_name_or_path, args.pooling, args.batch_size, args.device, args.trust_remote_code,
            precision=args.precision, decode_threads=args.decode_threads,
        )  # fmt: skip
    leak_splits = []
    if args.leak_check:
        leak_splits = args.leak_splits or [s for s in target if s != args.train_split]
    scorer = json.dumps([embedder.key if embedder else None, leak_splits, args.train_split])
    refs = References(hashlib.sha256(scorer.encode()).hexdigest()[:12], embedder)
    if embedder is not None:
        train = target[args.train_split]
        names = train.features[args.label_column].names
        refs.index = {name: i for i, name in enumerate(names)}
        refs.prototypes = cached_array(
            os.path.join(out, f"prototypes-{refs.scorer_id}.npz"),
            dataset_key(train, embedder.key),
            lambda: compute_prototypes(embedder, train, len(names), args.image_column, args.label_column),
        )
    for split in leak_splits:
        ds = target[split]
        hashes = cached_array(
            os.path.join(out, f"eval-phash-{split}.npz"),
            dataset_key(ds, "phash"),
            lambda ds=ds: phashes(ds, args.image_column),
        )
        refs.eval_hashes = np.concatenate([refs.eval_hashes, hashes])
        refs.eval_refs += [f"{split}#{i}" for i in range(len(ds))]
        if embedder is not None:
            emb = cached_array(
                os.path.join(out, f"eval-emb-{refs.scorer_id}-{split}.npz"),
                dataset_key(ds, embedder.key),
                lambda ds=ds, split=split: embedder.embed(
                    iter_images(ds, args.image_column), len(ds), f"embed {split}"
                ),
            )
            refs.eval_embeddings = emb if refs.eval_embeddings is None else np.concatenate([refs.eval_embeddings, emb])
    return refs


def score_batch(batch: list[dict], refs: References, retrieve_dir: str) -> tuple[list[dict], float]:
    """One shard's scores (caption match, embedding leak similarity, prototype similarity) and the seconds its
    embedding leak search took."""
    # the class name, or the term the search matched in the caption (a synonym, for the captions backend)
    results = [
        {
            "key": r["key"],
            "caption_ok": any(caption_matches(n, r["caption"]) for n in (r["aux_name"], r.get("query")) if n),
        }
        for r in batch
    ]
    leak_seconds = 0.0
    if refs.embedder is not None:
        paths = [os.path.join(retrieve_dir, r["path"]) for r in batch]
        emb = refs.embedder.embed(paths, len(paths), progress=False)
        for result, record, vector in zip(results, batch, emb):
            parents = [refs.index[n] for n in record.get("neighbor_of") or [] if n in refs.index]
            if parents:
                sims = refs.prototypes[parents] @ vector
                result["similarity"] = float(sims.max())
                result["parent"] = record["neighbor_of"][int(sims.argmax())]
            result["targets"] = list(record.get("neighbor_of") or [])
        if refs.eval_embeddings is not None:
            start = time.perf_counter()
            best, where = max_similarity(emb, refs.eval_embeddings)
            leak_seconds = time.perf_counter() - start
            for result, value, i in zip(results, best, where):
                result["leak_similarity"], result["leak_match"] = float(value), refs.eval_refs[i]
    return results, leak_seconds


# ---- the stage's pass ------------------------------------------------------------------------------------------------
def check_pass_settings(args) -> None:
    """Check the filter settings of the pass (:class:`~neighbor_lt.retrieval.stages.FilterArguments`).

    Raises:
        ConfigError: one line naming each bad key and its valid values.
    """
    from ..configs import ConfigError
    from ..neighbors.base import is_int

    problems = []
    for name in ("batch_size", "shard_size"):
        value = getattr(args, name)
        if not is_int(value) or value < 1:
            problems.append(f"filter.{name} must be a positive integer (got {value!r})")
    if args.num_proc is not None and (not is_int(args.num_proc) or args.num_proc < 1):
        problems.append(f"filter.num_proc must be a positive integer or empty (got {args.num_proc!r})")
    if not is_int(args.decode_threads) or args.decode_threads < 0:
        problems.append(f"filter.decode_threads must be 0 or a positive integer (got {args.decode_threads!r})")
    if args.precision not in PRECISIONS:
        problems.append(f"filter.precision must be one of {', '.join(PRECISIONS)} (got {args.precision!r})")
    if args.pooling not in ("cls", "mean", "pooler"):
        problems.append(f"filter.pooling must be cls, mean or pooler (got {args.pooling!r})")
    if problems:
        raise ConfigError("; ".join(problems))


def score_and_decide(item_chunks: Callable[[], Iterable[list[dict]]], args, target, out: str, retrieve_dir: str):
    """The filter stage's work: references, the scoring pass over the images not scored yet, the decisions file;
    the images are read twice, in chunks (memory flat in their number).

    Example:
        >>> reasons, run = score_and_decide(lambda: iter_retrieved(context), args, target, "out/filter",
        ...                                 "out/retrieve")  # doctest: +SKIP
        >>> run
        {'scored': 9200, 'timings_s': {'references': 2.1, 'embed': 310.4, 'leak_check': 1.2, 'decisions': 3.3, ...}}

    Args:
        item_chunks: returns the retrieved image records (current classes) in chunks, afresh at each call.
        args: the filter settings.
        target: the target set (prototypes, leak check), or None when neither runs.
        out: the filter stage's folder.
        retrieve_dir: the retrieve stage's folder (the images).

    Returns:
        The count of each reason (a Counter), and ``scored`` (images scored by this run) with ``timings_s``:
        seconds of ``references`` (prototypes and evaluation embeddings / hashes, cached after the first run),
        ``embed`` (the scoring pass), ``leak_check`` (perceptual-hash and embedding leak searches; the latter summed
        over the workers), ``decisions`` (with the perceptual-hash check) and ``total``.
    """
    started = time.perf_counter()
    refs = build_references(args, target, out)
    timings = {"references": time.perf_counter() - started}
    # scores: committed shard by shard (a kill loses only the shards in flight)
    with open_scores(out, refs.scorer_id, args.shard_size) as store:
        logger.info("filter: %d image(s) scored before", len(store))
        start = time.perf_counter()
        scored = score_items(pending(item_chunks(), store, args.shard_size), refs, args, retrieve_dir, store)
        timings["embed"] = time.perf_counter() - start
        logger.info("filter: %d image(s) scored now", scored["images"])
        start = time.perf_counter()
        reasons, leak_phash_seconds = write_decisions(item_chunks(), store, args, out, refs.eval_hashes)
        timings["decisions"] = time.perf_counter() - start
    timings["leak_check"] = leak_phash_seconds + scored["leak_embedding_s"]
    timings["total"] = time.perf_counter() - started
    return reasons, {"scored": scored["images"], "timings_s": {k: round(v, 3) for k, v in timings.items()}}


# ---- the score store ----------------------------------------------------------------------------------------------
def open_scores(out: str, scorer_id: str, shard_size: int) -> RecordStore:
    """The scores of one scorer (``<out>/scores-<scorer_id>.sqlite``), one transaction per shard; the JSONL score
    file of earlier versions (``scores-<scorer_id>.jsonl``) is imported once."""
    path = os.path.join(out, f"scores-{scorer_id}")
    return RecordStore(f"{path}.sqlite", columns=(), batch_size=shard_size, legacy_jsonl=f"{path}.jsonl")


def pending(item_chunks: Iterable[list[dict]], store: RecordStore, shard_size: int) -> Iterator[list[dict]]:
    """Shards of ``shard_size`` images to score: never scored, or scored for other targets (a new neighbor manifest;
    scores of earlier versions carry no targets and stand). Read as the pass goes, so it never holds more than a
    chunk and a shard."""
    scored_before = len(store) > 0  # a first run needs no lookups (the pass writes only new keys)

    def todo():
        for part in item_chunks:
            scores = store.get_many(r["key"] for r in part) if scored_before else {}
            for record in part:
                score = scores.get(record["key"])
                if score is None or score.get("targets", record["neighbor_of"]) != list(record["neighbor_of"]):
                    yield record

    return batched(todo(), shard_size)


# ---- the scoring pass -----------------------------------------------------------------------------------------------
def score_items(shards: Iterable[list[dict]], refs: References, args, retrieve_dir: str, store: RecordStore,
                on_shard=None) -> dict:  # fmt: skip
    """Score ``shards`` of images, in this process or in ``args.num_proc`` processes, and commit each shard to
    ``store`` as it completes.

    Args:
        shards: lists of retrieved image records (:func:`pending`, or
            :func:`~neighbor_lt.retrieval.filters.batched` of a list).
        refs: from :func:`build_references` (its embedder, when any, stays in this process).
        args: the filter settings (``num_proc``, ``shard_size``, the embedder's settings).
        retrieve_dir: the retrieve stage's folder (the images' paths are relative to it).
        store: where the scores go (:func:`open_scores`).
        on_shard: called with the number of images of each shard once it is stored (progress, benchmarks).

    Returns:
        ``images`` and ``shards`` scored, ``leak_embedding_s`` (the embedding leak searches' seconds, summed over the
        workers).
    """
    stats = {"images": 0, "shards": 0, "leak_embedding_s": 0.0}
    workers = resolve_num_proc(args.num_proc, args.device) if refs.embedder is not None else 1
    if workers > 1:  # started inside batch_memory_kept: forked workers inherit its settings
        results = _in_workers(shards, refs, args, retrieve_dir, workers)
    else:
        results = (score_batch(batch, refs, retrieve_dir) for batch in shards)
    with tqdm(desc=f"filter: score ({workers} process(es))", unit="img") as bar, batch_memory_kept():
        for rows, leak_seconds in results:
            store.put_many(rows)  # one transaction: the shard is stored whole or not at all
            stats["images"] += len(rows)
            stats["shards"] += 1
            stats["leak_embedding_s"] += leak_seconds
            bar.update(len(rows))
            if on_shard is not None:
                on_shard(len(rows))
    return stats


def resolve_num_proc(num_proc: int | None, device: str | None = None) -> int:
    """``num_proc`` as set, or when empty one process per CUDA device (one on a machine without, and one when
    ``device`` pins the pass to one device, ``cpu`` or ``cuda:1``)."""
    if num_proc:
        return num_proc
    if device not in (None, "cuda"):
        return 1
    import torch

    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def worker_devices(device: str | None, workers: int) -> list[str]:
    """Each scoring process's device, this process's first: the one set (``cuda:1``, ``cpu``), else the CUDA devices
    in turn, else the CPU.

    More processes than CUDA devices is honoured (decoding on the CPU may be what holds a GPU back), with one INFO
    line naming how many processes, each with its own model, share each device.
    """
    import torch

    if device not in (None, "cuda"):
        devices = [device] * workers
    elif torch.cuda.is_available():
        devices = [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    else:
        devices = ["cpu"] * workers
    shared = Counter(d for d in devices if torch.device(d).type == "cuda")
    if any(n > 1 for n in shared.values()):
        logger.info(
            "filter: %d scoring processes on %d CUDA device(s): %s, each process with its own model (num_proc "
            "empty: one per device)", workers, len(shared), ", ".join(f"{n} on {d}" for d, n in sorted(shared.items())),
        )  # fmt: skip
    return devices


@dataclass
class _WorkerSpec:
    """What a scoring worker needs to build its own :class:`References` (tensors are shared, not copied); a forked
    worker takes ``refs``, this process's own, loaded model included."""

    devices: list[str]
    threads: int
    retrieve_dir: str
    parent: int
    refs: References | None = None
    embedder: dict = field(default_factory=dict)
    scorer_id: str = ""
    index: dict = field(default_factory=dict)
    prototypes: object = None
    eval_embeddings: object = None
    eval_refs: list[str] = field(default_factory=list)


_WORKER: dict = {}


def worker_start_method(devices: list[str], threads: int) -> str:
    """How scoring workers start: ``fork`` when this process and every worker run on the CPU with one thread each,
    else ``spawn``.

    A forked worker starts at once with this process's imports and loaded model, where a spawned one spends seconds
    of a core importing torch and transformers and loading the model (6 CPU seconds on a 2-core EPYC, a fifth of what
    the benchmark's 8,000-image pass costs one process).
    But GNU OpenMP (torch's CPU threads) deadlocks in a forked child that runs more than one thread, and CUDA cannot
    be initialized again after a fork: those workers are spawned.

    Example:
        >>> worker_start_method(["cpu", "cpu"], threads=1), worker_start_method(["cpu", "cuda:0"], threads=1)
        ('fork', 'spawn')

    Args:
        devices: the devices of this process's model and of each worker's.
        threads: the torch threads of each process.
    """
    import multiprocessing

    on_cpu = all(str(device).split(":")[0] == "cpu" for device in devices)
    return "fork" if on_cpu and threads == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _worker_spec(refs: References, args, retrieve_dir: str, workers: int) -> tuple[_WorkerSpec, str]:
    """The workers' spec and start method (:func:`worker_start_method`); a forked worker takes this process's
    references as they are."""
    import torch

    cores = usable_cores()
    devices = worker_devices(args.device, workers)[1:]
    spec = _WorkerSpec(devices, threads=max(1, cores // workers), retrieve_dir=retrieve_dir, parent=os.getpid())
    method = worker_start_method([refs.embedder.device, *devices], spec.threads)
    if method == "fork":
        spec.refs = refs
        return spec, method

    def shared(array):
        return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).share_memory_()

    embedder = refs.embedder
    spec.embedder = {"model_name_or_path": embedder.name, "pooling": embedder.pooling, "precision": args.precision,
                     "batch_size": embedder.batch_size, "trust_remote_code": args.trust_remote_code,
                     "decode_threads": args.decode_threads}  # fmt: skip
    spec.scorer_id, spec.index, spec.eval_refs = refs.scorer_id, refs.index, refs.eval_refs
    spec.prototypes, spec.eval_embeddings = shared(refs.prototypes), shared(refs.eval_embeddings)
    return spec, method


def _in_workers(shards, refs: References, args, retrieve_dir: str, workers: int):
    """``(rows, leak_seconds)`` of each shard, scored by ``workers - 1`` worker processes and by a thread of this one
    (its model is loaded already: it scores while they start).

    Every process holds one shard at a time and gets the next as soon as it hands one back, so none waits for
    another at the end of the pass (a backlog queued on a worker left the others idle), and memory stays flat
    whatever the number of images.
    """
    import warnings
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

    import torch
    import torch.multiprocessing as mp

    spec, method = _worker_spec(refs, args, retrieve_dir, workers)
    ranks = mp.get_context(method).Queue()
    for rank in range(workers - 1):
        ranks.put(rank)
    threads = torch.get_num_threads()
    if torch.device(refs.embedder.device).type == "cpu":  # this process's share of the cores, set before a fork
        torch.set_num_threads(spec.threads)
    frozen = method == "fork" and gc.get_freeze_count() == 0
    if frozen:
        # Python objects alive now leave the collector's view until the pass ends: a collection writes to every
        # object it scans, so each page of them would be copied on write, once in this process and once in each
        # worker (half of the faults of a forked worker's first shard)
        gc.freeze()
    pool = ProcessPoolExecutor(
        workers - 1, mp_context=mp.get_context(method), initializer=_init_worker, initargs=(spec, ranks)
    )
    local = ThreadPoolExecutor(1, thread_name_prefix="score")
    shards, queued = iter(shards), {}  # future -> whether this process scores it

    def fill():  # the workers first: their processes are forked before this process starts its scoring thread
        while len(queued) < workers and (batch := next(shards, None)) is not None:
            if sum(not here for here in queued.values()) < workers - 1:
                with warnings.catch_warnings():  # forked workers run one thread (see worker_start_method)
                    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
                    queued[pool.submit(_score_shard, batch)] = False
            else:
                queued[local.submit(score_batch, batch, refs, retrieve_dir)] = True

    try:
        fill()
        while queued:
            done, _ = wait(queued, return_when=FIRST_COMPLETED)
            for future in done:
                del queued[future]
            fill()  # before the results are stored: no process waits for the store
            yield from (future.result() for future in done)
    finally:
        local.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
        if frozen:
            gc.unfreeze()


def _init_worker(spec: _WorkerSpec, ranks) -> None:
    """Load a worker's model on its device (a forked worker has it already); an error is kept and raised by its first
    shard (an initializer that raises only breaks the pool with a generic message)."""
    try:
        _die_with_parent(spec.parent)
        keep_batch_memory()  # a spawned worker starts with glibc's defaults (a forked one has its parent's settings)
        device = spec.devices[ranks.get()]
        import torch

        if device == "cpu":  # the cores are shared out between the workers
            torch.set_num_threads(spec.threads)
        refs = spec.refs
        if refs is None:
            embedder = ImageEmbedder(**spec.embedder, device=device)
            arrays = {
                name: None if tensor is None else tensor.numpy()
                for name, tensor in (("prototypes", spec.prototypes), ("eval_embeddings", spec.eval_embeddings))
            }
            refs = References(spec.scorer_id, embedder, index=spec.index, eval_refs=spec.eval_refs, **arrays)
        _WORKER.update(refs=refs, retrieve_dir=spec.retrieve_dir)
    except Exception as e:
        _WORKER["error"] = e


def _score_shard(batch: list[dict]) -> tuple[list[dict], float]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return score_batch(batch, _WORKER["refs"], _WORKER["retrieve_dir"])


def _die_with_parent(parent: int) -> None:
    """A worker dies with the stage's process (a kill -9 of the stage leaves no worker scoring on)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request
        os._exit(1)


# glibc's malloc settings (mallopt) while scoring, and after: see batch_memory_kept
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEPT = {_M_MMAP_THRESHOLD: 256 << 20, _M_TRIM_THRESHOLD: 512 << 20, _M_TOP_PAD: 64 << 20}
_AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20, _M_TOP_PAD: 128 << 10}


def _mallopt(settings: dict[int, int]) -> bool:
    """Apply glibc ``mallopt`` settings; False where the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None or platform.libc_ver()[0] != "glibc":
        return False
    return all(mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings.items())


def keep_batch_memory() -> bool:
    """Let this process's C heap keep the scoring pass's freed batch buffers for the next batch (glibc; elsewhere a
    no-op returning False).

    By default glibc maps every block over its dynamic threshold (at most 32 MiB) on its own and unmaps it when freed,
    and returns the heap's free top to the system past 128 KiB-64 MiB: a batch's pixel array (64 images at 224 px:
    38.5 MiB), the model's activations and the decode threads' images then come back from the kernel as new pages,
    zeroed, every batch. Blocks under 256 MiB come from the heap here, and up to 512 MiB of free top is kept.
    ``benchmarks/filter_embed.py`` on a shared 2-core EPYC: minor faults an image 51-202 -> 0.5 (one process) and
    74-111 -> 4-10 (two), CPU an image of the two-process pass 3.6-4.1 -> 3.4-3.6 ms. The price is resident memory:
    a trace with larger settings of the same kind held 50-200 MB more at its peak.
    """
    return _mallopt(_KEPT)


@contextmanager
def batch_memory_kept():
    """:func:`keep_batch_memory` for the pass; after it, the free heap goes back to the system and the thresholds
    are those glibc's dynamic ones reach in a process that frees large arrays (32 MiB maps, 64 MiB of free top)."""
    kept = keep_batch_memory()
    try:
        yield kept
    finally:
        if kept:
            import ctypes

            _mallopt(_AFTER)
            ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(0))


# ---- decisions ----------------------------------------------------------------------------------------------------
def write_decisions(
    item_chunks: Iterable[list[dict]], store: RecordStore, args, out: str, eval_hashes: np.ndarray
) -> tuple[Counter, float]:
    """Decide keep or drop from the stored scores with the current thresholds and write ``decisions.parquet`` one
    chunk of images at a time (memory flat in the number of images; written whole through a rename).

    The perceptual-hash leak distance is recomputed here from ``eval_hashes`` (one multi-index, built once) and
    recorded only when it is within ``args.leak_phash_distance``.

    Returns:
        The count of each reason, and the seconds the perceptual-hash leak check took.
    """
    path = os.path.join(out, "decisions.parquet")
    tmp = path + ".tmp"
    reasons, start = Counter(), time.perf_counter()
    leaks = PhashLeakIndex(eval_hashes, args.leak_phash_distance)
    leak_seconds = time.perf_counter() - start
    with pq.ParquetWriter(tmp, DECISION_SCHEMA) as writer:
        for part in item_chunks:
            start = time.perf_counter()
            near = leaks.distances(part)
            leak_seconds += time.perf_counter() - start
            rows = []
            scores = store.get_many(r["key"] for r in part)
            for record, distance in zip(part, near):
                score = scores.get(record["key"])
                if score is None:  # score_items stores every image's scores first
                    raise RuntimeError(f"filter: no score stored for image {record['key']} in {store.path}")
                score = {**score, "leak_phash_distance": distance}
                keep, reason = decide(
                    score, args.gamma_low, args.gamma_high, args.leak_similarity,
                    args.leak_phash_distance, args.caption_filter,
                )  # fmt: skip
                reasons[reason] += 1
                row = {k: record.get(k) for k in ("key", "aux_name", "query", "sha256", "phash", "path", "caption")}
                row.update({k: record.get(k) for k in ("source_url", "page_url")})
                row.update({k: score.get(k) for k in DECISION_COLUMNS if k in score and k != "key"})
                rank = record.get("rank")
                rows.append({**row, "rank": None if rank is None else int(rank), "keep": keep, "reason": reason,
                             "neighbor_of": json.dumps(record.get("neighbor_of") or [])})  # fmt: skip
            writer.write_table(pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
    os.replace(tmp, path)
    return reasons, leak_seconds
