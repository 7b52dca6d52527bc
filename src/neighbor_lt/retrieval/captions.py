"""The ``captions`` search backend: image-text metadata (LAION / Re-LAION, DataComp, COYO) searched by caption.

Web-scale image-text sets publish their metadata as Parquet shards, one row per image: at least an image URL and
its alt-text caption, often width, height, a CLIP image-text similarity and an NSFW score. No API is involved: the
shards are read with DuckDB (embedded, no server; local files or remote globs such as ``hf://`` or ``s3://``), and
**every auxiliary name is matched in one pass over the shards**, not one pass per name: each caption is normalised
as :func:`~neighbor_lt.retrieval.search.normalize_text` does (the caption filter's rule), split into words, and its
words and word pairs are joined against the first two words of all the names and synonyms; a longer name is then
confirmed as a whole-word phrase (``"cat"`` matches ``"a cat on a mat"``, not ``"catalog"``; plurals the leak guard's
name normalizer folds back to a name are its terms too: ``"cats"``). The best rows of each name (highest score
column first, else shard and row order) become its candidates, which the downloader fetches like any search result,
or which ``retrieve/urls.parquet`` hands to img2dataset for millions of images.

Each candidate's ``page_url`` records where its URL came from: ``<shard file>#row=<row number in that shard>``.

Column names of the public releases (``backend_kwargs``; from the releases' cards and loaders)::

    Re-LAION-5B research-safe    url_column: url, caption_column: caption, score_column: similarity,
                                 width_column / height_column: original_width / original_height, nsfw_column: punsafe
    LAION-5B (2022 files)        URL, TEXT, similarity, WIDTH / HEIGHT, punsafe (or NSFW, a label column)
    DataComp-1B / CommonPool     url, text, clip_l14_similarity_score (or clip_b32_...), original_width / _height
    COYO-700M                    url, text, clip_similarity_vitb32, width / height, nsfw_score_opennsfw2

A name of a column a shard lacks is one error line that lists the shard's columns.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from .base import Candidate, SearchBackend, SearchError, name_in_text, normalize_text
from .proxies import duckdb_proxy_settings

logger = logging.getLogger(__name__)

# The caption as normalize_text() leaves it, padded with spaces so that a whole-word phrase is ' <phrase> ': accents
# stripped, case folded, every run of other characters one space. (normalize_text drops a non-ASCII letter that has no
# ASCII base where this splits the word there; each hit is confirmed with name_in_text, so this only loses such words.)
_NORMALIZED = "' ' || regexp_replace(strip_accents(lower(coalesce({col}, ''))), '[^a-z0-9]+', ' ', 'g') || ' '"


# The best row of each (query, url) (an image URL listed twice counts once), then the best k rows of each query:
# highest score first, then shard and row order. ``source`` has columns qid (the query's position), term, url, caption,
# shard, row, score.
_BEST = """
    best AS (
        SELECT qid, url, min_by(struct_pack(term, caption, shard, row, score),
                                struct_pack(s := -coalesce(score, -1e308), f := shard, r := row)) AS hit
        FROM {source} GROUP BY qid, url
    )
    SELECT qid, hit.term AS term, url, hit.caption AS caption, hit.shard AS shard, hit.row AS row, hit.score AS score
    FROM best
    QUALIFY row_number() OVER (PARTITION BY qid ORDER BY hit.score DESC NULLS LAST, hit.shard, hit.row) <= {k}
"""
#: rows of the pass's result turned into Python objects at a time (the rest stay in DuckDB's columns)
_BATCH_ROWS = 8192


def _quote(name: str) -> str:
    """A SQL identifier, quoted (column names such as ``URL`` or ``TEXT`` keep their case)."""
    return '"' + str(name).replace('"', '""') + '"'


class CaptionSearch(SearchBackend):
    """Search image-text metadata shards by caption: every name and synonym in one pass, ranked by a score column.

    Example:
        >>> backend = get_search_backend(  # doctest: +SKIP
        ...     "captions", data_files="relaion2B-en-research-safe/*.parquet", score_column="similarity",
        ...     nsfw_column="punsafe", max_nsfw=0.1, width_column="original_width", height_column="original_height",
        ...     min_width=256, min_height=256)
        >>> hits = backend.search_many({"koi": ["koi", "nishikigoi"], "goldfish": ["goldfish"]}, 800)  # doctest: +SKIP
        >>> hits["koi"][0].page_url  # doctest: +SKIP
        'relaion2B-en-research-safe/part-00017.parquet#row=48213'

    Args:
        data_files: Parquet file(s) or glob(s): local paths, or remote ones DuckDB reads (``hf://``, ``s3://``,
            ``https://``).
        url_column: column with the image URL.
        caption_column: column with the caption (alt-text).
        score_column: optional column to rank by, highest first (e.g. the CLIP image-text similarity); without it the
            rows come in shard and row order.
        width_column, height_column: optional image-size columns, used with ``min_width`` / ``min_height``.
        min_width, min_height: rows whose width / height is known and smaller are skipped.
        nsfw_column: optional NSFW column: a probability (Re-LAION ``punsafe``, COYO ``nsfw_score_opennsfw2``) kept
            when at most ``max_nsfw``, or a label (LAION-5B ``NSFW``) kept when one of ``nsfw_keep``.
        max_nsfw: highest NSFW probability kept.
        nsfw_keep: labels kept for a label column.
        synonyms: also match the ``synonyms`` of a manifest entry and, for an entry with a ``wnid``, its WordNet
            lemmas.
        plurals: also match the plurals of each term's last word (``teddy bears``, ``foxes``, ``butterflies``), those
            that the leak guard's name normalizer (:func:`neighbor_lt.neighbors.names.normalize`) folds back to it.
        shards_per_batch: shards read by one query; each batch's best rows are merged into those kept so far, so
            memory holds one batch's matches plus ``max_results`` per name (every shard is still read once).
        threads: DuckDB threads (default: all cores).
        memory_limit: DuckDB memory limit (e.g. ``"3GB"``); larger intermediate results spill to a temp folder.
    """

    # not a local image collection (its URLs are downloaded), cached in searches.sqlite, no paging: one pass answers
    # every name
    local, cacheable, pages = False, True, False

    def __init__(
        self,
        data_files: str | list[str],
        url_column: str = "url",
        caption_column: str = "caption",
        score_column: str | None = None,
        width_column: str | None = None,
        height_column: str | None = None,
        min_width: int = 0,
        min_height: int = 0,
        nsfw_column: str | None = None,
        max_nsfw: float = 0.5,
        nsfw_keep: list[str] | tuple[str, ...] = ("UNLIKELY",),
        synonyms: bool = True,
        plurals: bool = True,
        shards_per_batch: int = 8,
        threads: int | None = None,
        memory_limit: str | None = None,
    ):
        try:
            import duckdb
        except ImportError:
            raise ValueError("captions: DuckDB is missing; pip install 'neighbor-lt[retrieval]'") from None
        self.files = _expand(data_files)
        self.url_column, self.caption_column, self.score_column = url_column, caption_column, score_column
        self.width_column, self.height_column, self.min_width, self.min_height = (
            width_column, height_column, int(min_width), int(min_height),
        )  # fmt: skip
        self.nsfw_column, self.max_nsfw, self.nsfw_keep = nsfw_column, float(max_nsfw), [str(v) for v in nsfw_keep]
        self.synonyms, self.plurals, self.shards_per_batch = synonyms, plurals, max(1, int(shards_per_batch))
        self.db = duckdb.connect()
        if threads:
            self.db.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.db.execute("SET memory_limit = ?", [str(memory_limit)])
        self.db.execute("SET preserve_insertion_order = false")  # lets the scan stream instead of buffering
        # the allocator hands a pass's freed memory back to the system (without its threads it kept it, ~0.5 MB per
        # 1,000 candidates, through the whole download that follows)
        self.db.execute("SET allocator_background_threads = true")
        # spills go to the system temp folder, not to a .tmp folder in the working directory (DuckDB's default)
        self.db.execute("SET temp_directory = ?", [os.path.join(tempfile.gettempdir(), "neighbor_lt_duckdb")])
        # remote shards (hf://, s3://, https://) through HTTPS_PROXY / HTTP_PROXY as the downloader goes: DuckDB reads
        # no proxy variable itself
        for name, value in duckdb_proxy_settings(self.files).items():
            self.db.execute(f"SET {name} = ?", [value])
        self.types = self._check_columns()
        self._hits: dict[str, list[Candidate]] = {}
        self._prefetched: _Prefetched | None = None
        self.stats: dict[str, Any] = {}

    # ---- schema ----
    def _check_columns(self) -> dict[str, str]:
        """Column -> DuckDB type of the first shard; a missing column is one line naming it and the columns there."""
        wanted = {
            "url_column": self.url_column, "caption_column": self.caption_column,
            "score_column": self.score_column, "width_column": self.width_column,
            "height_column": self.height_column, "nsfw_column": self.nsfw_column,
        }  # fmt: skip
        if self.min_width and not self.width_column or self.min_height and not self.height_column:
            raise ValueError("captions: min_width / min_height need width_column / height_column")
        rows = self.db.execute(
            "SELECT file_name, name, type FROM parquet_schema(?) WHERE name <> 'schema' ORDER BY file_name",
            [self.files],
        ).fetchall()
        by_file: dict[str, dict[str, str]] = {}
        for file, name, type_ in rows:
            by_file.setdefault(file, {})[name] = type_ or ""
        for file, columns in by_file.items():
            for key, column in wanted.items():
                if column and column not in columns:
                    raise ValueError(
                        f"captions: {key} {column!r} is not a column of {file}; its columns: {', '.join(columns)}"
                    )
        return next(iter(by_file.values()), {})

    def _filters(self) -> str:
        clauses = [f"{_quote(self.url_column)} IS NOT NULL", f"{_quote(self.caption_column)} IS NOT NULL"]
        if self.min_width:
            clauses.append(f"coalesce({_quote(self.width_column)}, {self.min_width}) >= {self.min_width}")
        if self.min_height:
            clauses.append(f"coalesce({_quote(self.height_column)}, {self.min_height}) >= {self.min_height}")
        if self.nsfw_column:
            column = _quote(self.nsfw_column)
            if self.types.get(self.nsfw_column) in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"):  # a label column
                keep = ", ".join("'" + v.upper().replace("'", "''") + "'" for v in self.nsfw_keep)
                clauses.append(f"upper(CAST({column} AS VARCHAR)) IN ({keep})")
            else:
                clauses.append(f"coalesce(CAST({column} AS DOUBLE), 0) <= {self.max_nsfw}")
        return " AND ".join(clauses)

    # ---- search ----
    def terms_of(self, entry: dict) -> list[str]:
        """The names a manifest entry is searched by: its name, its ``synonyms`` and its WordNet synset's lemmas."""
        terms = [entry["name"]]
        if self.synonyms:
            terms += [str(s) for s in entry.get("synonyms") or []]
            if entry.get("wnid"):
                terms += _wordnet_names(entry["wnid"])
        return list(dict.fromkeys(t for t in terms if normalize_text(t)))

    def search_many(self, terms: dict[str, list[str]], max_results: int = 100) -> dict[str, list[Candidate]]:
        """Search every query's terms in one pass over the shards; the hits are kept for :meth:`search`.

        Args:
            terms: query -> the names it matches (the query itself, synonyms).
            max_results: most candidates kept per query (its best rows by the score column).

        Returns:
            Query -> its candidates, best first (``query`` is the term the caption matched).
        """
        found: dict[str, list[Candidate]] = {q: [] for q in terms}
        found.update(self._pass(terms, max_results))
        self._hits.update(found)
        return found

    def _pass(self, terms: dict[str, list[str]], max_results: int) -> Iterator[tuple[str, list[Candidate]]]:
        """One pass for every query of ``terms``: ``(query, its candidates)`` in the order of ``terms``, a query with
        no hit left out. The result is read in Arrow batches, so Python holds one query's candidates at a time."""
        pairs = {(query, normalize_text(t)) for query, names in terms.items() for t in names if normalize_text(t)}
        if self.plurals:
            pairs |= {(query, plural) for query, term in pairs for plural in _plurals(term)}
        if not pairs:
            return
        queries = list(terms)
        position = {query: i for i, query in enumerate(queries)}
        pairs = sorted(pairs, key=lambda pair: (position[pair[0]], pair[1]))
        start = time.monotonic()
        # each pass on its own connection: its temp tables go when it closes, and a pass read halfway (a prefetch
        # handed over query by query) does not block another
        db = self.db.cursor()
        try:
            # a term is looked up by its first two words (its only word): a first word alone (``black``, ``genus``)
            # would fan every caption that has it out to all the terms it starts
            columns = [
                [position[q] for q, _ in pairs],
                [t for _, t in pairs],
                [" ".join(t.split(" ")[:2]) for _, t in pairs],
            ]
            db.execute(  # one statement (executemany costs seconds for 10,000 rows)
                "CREATE OR REPLACE TEMP TABLE terms AS SELECT unnest(?::INTEGER[]) AS qid, unnest(?::VARCHAR[]) AS term, "
                "unnest(?::VARCHAR[]) AS key",
                columns,
            )
            # the shards in batches: each batch's best rows join those kept so far, and the cut is made again, so
            # memory holds one batch's hits plus max_results per name, however many shards there are
            db.execute(
                "CREATE OR REPLACE TEMP TABLE kept (qid INTEGER, term VARCHAR, url VARCHAR, caption VARCHAR, "
                "shard VARCHAR, row BIGINT, score DOUBLE)"
            )
            batches = [
                self.files[i : i + self.shards_per_batch] for i in range(0, len(self.files), self.shards_per_batch)
            ]
            for batch in batches:
                db.execute(f"INSERT INTO kept {self._sql(int(max_results))}", [batch])
                if len(batches) > 1:
                    merged = _BEST.format(source="kept", k=int(max_results))
                    db.execute(f"CREATE OR REPLACE TEMP TABLE kept AS WITH {merged}")
            result = db.sql(
                "SELECT qid, term, url, caption, shard, row FROM kept ORDER BY qid, score DESC NULLS LAST, shard, row"
            )
            rows = dropped = 0
            qid, hits, ready = None, [], None
            for batch in result.to_arrow_reader(_BATCH_ROWS):
                ready = time.monotonic() - start if ready is None else ready  # the pass done, its result sorted
                for qid_, term, url, caption, shard, row in zip(*batch.to_pydict().values()):
                    rows += 1
                    if qid_ != qid:
                        if hits:
                            yield queries[qid], hits
                        qid, hits = qid_, []
                    if not name_in_text(term, caption):  # the caption filter's rule is the last word (exotic Unicode)
                        dropped += 1
                        continue
                    hits.append(Candidate(term, url, f"{shard}#row={row}", caption, len(hits)))
            if hits:
                yield queries[qid], hits
        finally:
            db.close()
        seconds = time.monotonic() - start if ready is None else ready
        self.stats = {"pairs": len(pairs), "rows": rows, "dropped": dropped, "seconds": seconds}
        logger.info(
            "captions: %d name(s) / %d term(s) over %d shard(s) in one pass (%.1fs): %d candidate(s)",
            len(terms), len(pairs), len(self.files), seconds, rows - dropped,
        )  # fmt: skip

    def _sql(self, max_results: int) -> str:
        url, caption = _quote(self.url_column), _quote(self.caption_column)
        score = f"CAST({_quote(self.score_column)} AS DOUBLE)" if self.score_column else "NULL::DOUBLE"
        # words and word pairs -> hash join against the terms' keys (5,000 names are one small table) -> phrase check
        # for terms of three words or more; then _BEST: one row per (query, url), the best max_results per query
        return f"""
        WITH src AS (
            SELECT filename AS shard, file_row_number AS row, {url} AS url, {caption} AS caption, {score} AS score,
                   {_NORMALIZED.format(col=caption)} AS norm
            FROM read_parquet(?, filename = true, file_row_number = true)
            WHERE {self._filters()}
        ),
        words AS (SELECT *, string_split(trim(norm), ' ') AS w FROM src),
        grams AS (
            SELECT shard, row, url, caption, score, norm,
                   unnest(list_concat(w, list_transform(range(1, len(w)), lambda i: w[i] || ' ' || w[i + 1]))) AS gram
            FROM words
        ),
        hits AS (
            SELECT t.qid, t.term, g.url, g.caption, g.shard, g.row, g.score
            FROM grams g JOIN terms t ON g.gram = t.key
            WHERE t.key = t.term OR contains(g.norm, ' ' || t.term || ' ')
        ),
        {_BEST.format(source="hits", k=max_results)}
        """

    def search(
        self, query: str, max_results: int = 100, synonyms: list[str] | None = None, **hints
    ) -> list[Candidate]:
        """The candidates of one query: from the last :meth:`prefetch` or :meth:`search_many` pass when it covered the
        query (handed over once: a million hits are not held for the whole download), else a pass for this query
        alone (prefer :meth:`prefetch` for many names)."""
        if query not in self._hits and self._prefetched is not None:
            hits = self._prefetched.take(query, self._hits)
            if hits is not None:
                return hits[:max_results]
        if query not in self._hits:
            entry = {"name": query, "synonyms": synonyms or [], "wnid": hints.get("wnid")}
            self.search_many({query: self.terms_of(entry)}, max_results)
        return self._hits.pop(query)[:max_results]

    def prefetch(self, entries: dict[str, dict], max_results: int) -> None:
        """Answer every query of ``entries`` (query -> manifest entry) in one pass; :meth:`search` then reads it.

        The pass runs here (its errors are raised here, once); its result is then read query by query as
        :meth:`search` asks for them in the order of ``entries``, so only the query asked and the one read ahead are
        held. A query asked out of order is still answered from the pass: those read past on the way are kept until
        asked.
        """
        if self._prefetched is not None:
            self._prefetched.close()
        terms = {query: [query, *self.terms_of(entry)] for query, entry in entries.items()}
        self._prefetched = _Prefetched(self._pass(terms, max_results), list(terms))


class _Prefetched:
    """A pass's hits handed over once each, read query by query in the pass's order (one query read ahead)."""

    def __init__(self, groups: Iterator[tuple[str, list[Candidate]]], queries: list[str]):
        self.groups, self.position = groups, {query: i for i, query in enumerate(queries)}
        self.error: Exception | None = None
        self.ahead = next(self.groups, None)  # runs the pass: a failed one raises here

    def take(self, query: str, passed: dict[str, list[Candidate]]) -> list[Candidate] | None:
        """The hits of ``query`` ([] when it has none), or None when the pass did not cover it or handed it over
        already; the hits of queries read past on the way go to ``passed``."""
        where = self.position.pop(query, None)
        if where is None:
            return None
        if self.error is not None:
            raise _broken(self.error)
        while self.ahead is not None and self.position.get(self.ahead[0], where) < where:
            name, hits = self.ahead
            passed[name] = hits
            del self.position[name]
            self._read()
        if self.ahead is None or self.ahead[0] != query:
            return []  # the result is ordered by query: this one had no hit
        hits = self.ahead[1]
        self._read()
        return hits

    def _read(self) -> None:
        try:
            self.ahead = next(self.groups, None)
        except Exception as e:  # one broken result must not turn into a pass per query: every later one fails
            self.ahead, self.error = None, e
            raise _broken(e) from e

    def close(self) -> None:
        self.groups.close()


def _broken(error: Exception) -> Exception:
    """The fatal search error of a pass whose result could not be read to the end."""
    return SearchError(f"captions: reading the pass's result failed: {type(error).__name__}: {error}", fatal=True)


def _expand(data_files: str | list[str]) -> list[str]:
    """Local globs expanded (sorted); remote paths (``scheme://``) left to DuckDB. No file: a ValueError."""
    files = []
    for pattern in [data_files] if isinstance(data_files, str) else list(data_files or []):
        if "://" in pattern:
            files.append(pattern)
            continue
        matched = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        missing = [m for m in matched if not os.path.isfile(m)]
        if not matched or missing:
            raise ValueError(f"captions: data_files {pattern!r} matches no Parquet file")
        files += matched
    if not files:
        raise ValueError("captions: data_files is empty; give the metadata shards (a Parquet file or glob)")
    return files


def _plurals(term: str) -> list[str]:
    """Plurals of a normalised term's last word that the leak guard's normalizer takes for the same name."""
    from ..neighbors.names import normalize

    head, _, last = term.rpartition(" ")
    if len(last) < 3 or not last.isalpha():
        return []
    forms = [last + "s", last + "es"] + ([last[:-1] + "ies"] if last.endswith("y") else [])
    key = normalize(term)
    return [f"{head} {form}".strip() for form in forms if normalize(f"{head} {form}") == key]


def _wordnet_names(wnid: str) -> list[str]:
    """The lemmas of a WordNet synset, or nothing when WordNet is not installed or the id is unknown."""
    from ..neighbors.wordnet import WordNet

    try:
        return WordNet.load().synset(wnid).names
    except (OSError, KeyError):
        return []
