"""The retrieve stage's search files: the search cache (``retrieve/searches.sqlite``, one record per auxiliary class),
its candidates read back class by class, and ``retrieve/urls.parquet`` written in chunks (the img2dataset hand-off).

Memory follows one class's hits and one chunk of URL rows, not the candidate count: the download reads the
candidates back from the cache while it goes (:class:`CachedCandidates`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator

from ..curate import StageError
from ..extras import missing_extra_message
from ..secrets import redact
from .download.records import candidate_to_dict
from .records_store import RecordStore
from .search import Candidate, SearchError

logger = logging.getLogger(__name__)

#: The search cache in a retrieve folder; ``searches.jsonl`` is what earlier versions wrote (migrated once).
SEARCHES = "searches.sqlite"
LEGACY_SEARCHES = "searches.jsonl"
#: The columns of ``urls.parquet``, in order.
URL_COLUMNS = ("url", "caption", "aux_name", "neighbor_of", "page_url", "rank", "query")


def open_searches(folder: str) -> RecordStore:
    """The search cache of a retrieve folder: records ``{"aux_name", "query", "status": "ok" | "empty",
    "candidates": [...]}`` keyed by ``aux_name``; a ``searches.jsonl`` of an earlier version is migrated once.

    Example:
        >>> with open_searches("out/retrieve") as cache:  # doctest: +SKIP
        ...     len(cache.get("goldfish")["candidates"])
        100
    """
    return RecordStore(
        os.path.join(folder, SEARCHES),
        columns=("status",),
        key="aux_name",
        legacy_jsonl=os.path.join(folder, LEGACY_SEARCHES),
        # one record per class, each read or written once: a page cache as large as the file (~0.25 KB per candidate,
        # 64 MiB by default) would hold nothing that is asked again
        cache_mib=4,
    )


def has_searches(folder: str) -> bool:
    """Whether ``folder`` holds a search cache (or a JSONL one still to migrate)."""
    return any(os.path.exists(os.path.join(folder, name)) for name in (SEARCHES, LEGACY_SEARCHES))


class SearchCache:
    """This run's cache with an earlier folder's (the rank stage's probes) behind it: a class is answered by this
    run's record, else the other folder's. Close it after use."""

    def __init__(self, folder: str, reuse_dir: str | None = None):
        self.store = open_searches(folder)
        self.reuse = open_searches(reuse_dir) if reuse_dir and has_searches(reuse_dir) else None

    def get(self, name: str) -> dict | None:
        """The cached search of auxiliary class ``name``, or None."""
        record = self.store.get(name)
        return record if record is not None or self.reuse is None else self.reuse.get(name)

    def close(self) -> None:
        self.store.close()
        if self.reuse is not None:
            self.reuse.close()


def cached_hits(record: dict, name: str, neighbor_of: list[str]) -> list[Candidate]:
    """The candidates of a cached search, with the manifest's current ``neighbor_of``."""
    return [Candidate(**{**c, "aux_name": name, "neighbor_of": list(neighbor_of)}) for c in record["candidates"]]


class CachedCandidates:
    """The candidates of the cached searches of ``aux`` (manifest entries), read back one class at a time.

    Iterable more than once; ``len()`` is the number of candidates the searches found (for a progress bar).

    Example:
        >>> candidates = CachedCandidates("out/retrieve", aux, count=120_000)  # doctest: +SKIP
        >>> Downloader("out/retrieve").run(candidates)  # doctest: +SKIP
    """

    def __init__(self, folder: str, aux: list[dict], count: int, reuse_dir: str | None = None):
        self.folder, self.aux, self.count, self.reuse_dir = folder, aux, count, reuse_dir

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Candidate]:
        cache = SearchCache(self.folder, self.reuse_dir)
        try:
            for entry in self.aux:
                record = cache.get(entry["name"])
                if record is not None:
                    yield from cached_hits(record, entry["name"], entry.get("neighbor_of") or [])
        finally:
            cache.close()


class UrlsWriter:
    """``urls.parquet`` written in row groups of ``chunk`` URLs, published (renamed into place) by :meth:`finish`."""

    def __init__(self, path: str, chunk: int = 10_000):
        self.path, self.chunk = path, chunk
        self.tmp = f"{path}.{os.getpid()}.tmp"
        self.columns: dict[str, list] = {c: [] for c in URL_COLUMNS}  # a list per column: no dict per row
        self.writer = None

    def add(self, hits: list[Candidate]) -> None:
        for hit in hits:
            row = (hit.image_url, hit.caption, hit.aux_name, json.dumps(list(hit.neighbor_of)), hit.page_url,
                   hit.rank, hit.query)  # fmt: skip
            for column, value in zip(self.columns.values(), row):  # URL_COLUMNS' order
                column.append(value)
        if len(self.columns["url"]) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(c, pa.int64() if c == "rank" else pa.string()) for c in URL_COLUMNS])
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, schema)
        self.writer.write_table(pa.table(self.columns, schema=schema))
        self.columns = {c: [] for c in URL_COLUMNS}

    def finish(self) -> None:
        self._flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


# ---- the search loop --------------------------------------------------------------------------------------------
def _prefetch(backend, args, aux: list[dict], cache: SearchCache | None) -> None:
    """A backend with ``prefetch`` (``captions``) answers every query still to ask in one pass over its source."""
    if not hasattr(backend, "prefetch"):
        return
    todo = {}
    for entry in aux:
        previous = cache.get(entry["name"]) if cache else None
        if previous is None or (args.retry_failed and not previous["candidates"]):
            todo[args.query_template.format(name=entry["name"])] = entry
    try:
        if todo:
            backend.prefetch(todo, args.results_per_query)
    except Exception as e:  # one failed pass must not turn into a pass per query
        raise StageError(redact(f"search ({args.backend}): {type(e).__name__}: {e}")) from None


def search_all(
    backend, args, aux: list[dict], out: str, reuse_dir: str | None = None
) -> tuple[Iterable[Candidate], Counter]:
    """Run every query once; web results are cached in searches.sqlite (pool hits carry bytes and are recomputed).

    A failed search is not cached (the next run asks again); a search with zero results is cached as ``empty`` and
    asked again with ``retry_failed``. A cached search's hits take the manifest's current ``neighbor_of``. With
    ``reuse_dir`` (the rank stage's probes), its cached searches answer too. Returns the candidates and counts (ok,
    empty, failed, not_sent, cached, candidates): a cacheable backend's candidates are read back from the cache class
    by class (:class:`~.searches.CachedCandidates`), a pool's are a list; ``urls.parquet`` is written in chunks.
    """
    from tqdm.auto import tqdm

    cacheable = getattr(backend, "cacheable", True)
    cache = SearchCache(out, reuse_dir) if cacheable else None
    urls = UrlsWriter(os.path.join(out, "urls.parquet")) if cacheable else None
    pool: list[Candidate] = []
    stats, errors, empty = Counter(), {}, []  # errors: distinct message -> the queries that got it
    consecutive = 0
    try:
        _prefetch(backend, args, aux, cache)
        for position, entry in enumerate(tqdm(aux, desc=f"search ({args.backend})", unit="query")):
            name = entry["name"]
            neighbor_of = list(entry.get("neighbor_of") or [])
            query = args.query_template.format(name=name)
            previous = cache.get(name) if cache else None
            if previous is not None and (previous["candidates"] or not args.retry_failed):
                hits = cached_hits(previous, name, neighbor_of)
                stats["cached"] += 1
            else:
                try:
                    hits = backend.search(query, max_results=args.results_per_query, wnid=entry.get("wnid"))
                except ImportError as e:  # a missing extra fails every query alike: one line naming it, once
                    raise StageError(f"retrieve: {missing_extra_message(e) or e}") from None
                except Exception as e:  # one failing query must not stop the others; it is retried on the next run
                    message = redact(e if isinstance(e, SearchError) else f"{type(e).__name__}: {e}")
                    if message not in errors:  # each distinct error once, with the API's own words
                        logger.error("search %r failed: %s", query, message)
                    errors.setdefault(message, []).append(name)
                    stats["failed"] += 1
                    consecutive += 1
                    limit = args.max_consecutive_search_errors
                    if getattr(e, "fatal", False) or (limit and consecutive >= limit):  # a bad key, no quota left
                        stats["not_sent"] = len(aux) - position - 1
                        logger.error(
                            "%d searches failed in a row: %d query(ies) not sent (fix the key / quota / endpoint, "
                            "then rerun the stage)", consecutive, stats["not_sent"],
                        )  # fmt: skip
                        break
                    continue
                consecutive = 0
                for hit in hits:
                    hit.aux_name, hit.neighbor_of = name, neighbor_of
                if cache:
                    cache.store.put(
                        {"aux_name": name, "query": query, "status": "ok" if hits else "empty",
                         "candidates": [candidate_to_dict(h) for h in hits]}
                    )  # fmt: skip
            stats["ok" if hits else "empty"] += 1
            stats["candidates"] += len(hits)
            if not hits:
                empty.append(name)
            if urls:
                urls.add(hits)
            else:
                pool.extend(hits)
        _check_searches(args, aux, stats, errors, empty, cacheable)
        if urls:
            urls.finish()
    except BaseException:
        if urls:
            urls.abandon()
        raise
    finally:
        if cache:
            cache.close()
    return (CachedCandidates(out, aux, stats["candidates"], reuse_dir) if cacheable else pool), stats


def _check_searches(args, aux: list[dict], stats: Counter, errors: dict, empty: list[str], cacheable: bool) -> None:
    """Log the searches' one-line summary; raise StageError when every search failed or none found a candidate."""
    shown = ", ".join(repr(n) for n in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    logger.info(
        "search (%s): %d query(ies): %d with results, %d with zero results%s, %d failed%s (%d from the cache); "
        "%d candidate(s)",
        args.backend, len(aux), stats["ok"], stats["empty"], f" ({shown})" if empty else "", stats["failed"],
        f", {stats['not_sent']} not sent" if stats["not_sent"] else "", stats["cached"], stats["candidates"],
    )  # fmt: skip
    if empty and cacheable:
        logger.warning("%d search(es) returned zero results; ask them again with --retry_failed", len(empty))
    if stats["failed"] and not stats["ok"] + stats["empty"]:
        reasons = "; ".join(errors)
        raise StageError(
            f"search ({args.backend}): all {stats['failed'] + stats['not_sent']} search(es) failed "
            f"({stats['not_sent']} not sent): {reasons}"[:1000]
        )
    if not stats["candidates"]:
        raise StageError(
            f"search ({args.backend}): no candidate for any of the {len(aux)} auxiliary class(es) "
            f"({stats['empty']} with zero results, {stats['failed']} failed)"
        )
