"""The ``neighbors`` stage of ``recipes/curate.py``: target set -> backend -> ``<output_dir>/neighbors/neighbors.json``."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from neighbor_lt.configs import ConfigError, from_dict
from neighbor_lt.metrics import GROUPS, group_of
from neighbor_lt.neighbors import get_backend, resolve_backend
from neighbor_lt.neighbors.base import TargetQuery
from neighbor_lt.neighbors.guard import Entry, LeakGuard, Vocabulary, load_vocabulary, split_synonyms
from neighbor_lt.neighbors.llm import RequestCache
from neighbor_lt.neighbors.manifest import MANIFEST_NAME, assemble, write_manifest
from neighbor_lt.neighbors.wordnet import WordNet, is_wnid

logger = logging.getLogger(__name__)


@dataclass
class NeighborsArguments:
    """The ``neighbors:`` section of a curation YAML file."""

    backend: str = field(default="wordnet", metadata={"help": "Knowledge source: openai, wordnet or static."})
    k: int = field(default=5, metadata={"help": "Neighbors per head class; other groups get k times their ratio."})
    ratios: Any = field(
        default_factory=lambda: [1, 1, 3],
        metadata={"help": "Head : medium : tail ratio as [h, m, t], or 'auto' = 1 : ceil(Nh/Nm) : ceil(Nh/Nt)."},
    )
    max_per_class: int | None = field(default=None, metadata={"help": "Upper bound on neighbors of one class."})
    vocabulary: Any = field(
        default=None,
        metadata={
            "help": "Restrict neighbors to these names: a list, or a .txt/.json/.yaml/.tsv/.csv file (e.g. an image "
            "pool's classes.tsv). Target classes in it are removed by the leak guard."
        },
    )
    class_names: str | None = field(
        default=None,
        metadata={
            "help": "File mapping label names to readable names (.tsv/.csv with wnid + words, or .txt in label order)."
        },
    )
    max_targets_per_aux: int | None = field(
        default=None, metadata={"help": "Cap on how many targets one auxiliary class may serve."}
    )
    leak_guard_nested: bool = field(
        default=True, metadata={"help": "Also drop hyponyms / hypernyms of a target synset (needs WordNet)."}
    )
    use_wordnet: bool = field(
        default=True, metadata={"help": "Use WordNet (when installed) for names, the leak guard and similarities."}
    )
    wordnet_dir: str | None = field(default=None, metadata={"help": "WordNet database folder (/usr/share/wordnet)."})
    # wordnet backend
    depth: int = field(default=3, metadata={"help": "wordnet: hypernym steps above the target to search."})
    min_similarity: float | None = field(default=None, metadata={"help": "wordnet: minimum Wu-Palmer similarity."})
    max_distance: int | None = field(default=None, metadata={"help": "wordnet: maximum path distance (edges)."})
    max_candidates: int = field(default=50, metadata={"help": "wordnet: ranked candidates kept per target."})
    # static backend
    mapping: Any = field(default=None, metadata={"help": "static: YAML/JSON file or inline mapping target -> names."})
    # openai backend
    model: str = field(default="gpt-4o", metadata={"help": "openai: model name."})
    base_url: str | None = field(default=None, metadata={"help": "openai: endpoint root, e.g. http://host:8000/v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: environment variable of the key."})
    template: str | None = field(
        default=None, metadata={"help": "openai: prompt with {name} and {k}; paper's default."}
    )
    template_file: str | None = field(default=None, metadata={"help": "openai: read the prompt template from a file."})
    system_prompt: str | None = field(default=None, metadata={"help": "openai: optional system message."})
    temperature: float = field(default=0.0, metadata={"help": "openai: sampling temperature."})
    max_tokens: int = field(default=256, metadata={"help": "openai: reply token limit."})
    timeout: float = field(default=60.0, metadata={"help": "openai: seconds per request."})
    max_retries: int = field(default=4, metadata={"help": "openai: retries on 429 / 5xx / timeouts."})
    retry_backoff: float = field(default=1.0, metadata={"help": "openai: first retry delay (s), doubled per retry."})
    concurrency: int = field(default=4, metadata={"help": "openai: requests in flight at once."})
    max_requests: int | None = field(default=None, metadata={"help": "openai: request budget of one run."})
    dry_run: bool = field(
        default=False, metadata={"help": "openai: only report requests and tokens a run would take."}
    )
    cache_path: str | None = field(
        default=None, metadata={"help": "Request cache; <output_dir>/neighbors/cache.jsonl."}
    )


def group_ratios(ratios, counts: list[int]) -> dict[str, int]:
    """Neighbor multiplier per group: fixed ``[h, m, t]`` or ``auto`` from the training counts (paper, sec. 4.2).

    ``auto`` is ``1 : ceil(Nh/Nm) : ceil(Nh/Nt)`` with N the total training images of each group; an empty group gets 1.

    Example:
        >>> group_ratios("auto", [500, 400, 50, 10])
        {'many': 1, 'medium': 18, 'few': 90}
    """
    if isinstance(ratios, str):
        if ratios != "auto":
            raise ConfigError(f"neighbors.ratios must be [head, medium, tail] or 'auto', got {ratios!r}")
        totals = {g: 0 for g in GROUPS}
        for c in counts:
            totals[group_of(int(c))] += int(c)
        head = totals["many"]
        return {g: (1 if g == "many" or not totals[g] or not head else math.ceil(head / totals[g])) for g in GROUPS}
    if len(ratios) != 3 or any(int(r) < 0 for r in ratios):
        raise ConfigError(f"neighbors.ratios must be three non-negative numbers, got {ratios!r}")
    return dict(zip(GROUPS, (int(r) for r in ratios)))


def _path(path: str | None, context) -> str | None:
    if path is None or os.path.exists(path):
        return path
    config_dir = os.path.dirname(os.path.abspath(getattr(context, "config_path", None) or "."))
    candidate = os.path.join(config_dir, path)
    return candidate if os.path.exists(candidate) else path


def _column_by_label(train, names: list[str], label_column: str, column: str) -> dict[str, str]:
    """Label name -> the value of ``column`` on that class's first row (``words`` or ``wnid`` columns)."""
    if column not in train.column_names:
        return {}
    table = train.select_columns([label_column, column]).to_pandas().drop_duplicates(label_column)
    return {names[int(label)]: value for label, value in zip(table[label_column], table[column]) if value}


def _readable_names(names: list[str], train, args: NeighborsArguments, context, label_column: str) -> dict[str, list]:
    """Label name -> readable synonyms, from class_names, a ``words`` column, or nothing."""
    found: dict[str, list[str]] = {}
    if args.class_names:
        path = _path(args.class_names, context)
        if path.endswith((".tsv", ".csv")):
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","):
                    key = row.get("wnid") or row.get("name")
                    if key and row.get("words"):
                        found[key] = split_synonyms(row["words"])
        else:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip()]
            found.update({n: split_synonyms(w) for n, w in zip(names, lines)})
    else:
        found = {
            name: split_synonyms(words)
            for name, words in _column_by_label(train, names, label_column, "words").items()
        }
    return found


def build_queries(target, args: NeighborsArguments, context, wordnet=None, label_column: str = "label"):
    """One ``TargetQuery`` per target class, with its readable name, count, group and number of neighbors."""
    train = target["train"]
    names = list(train.features[label_column].names)
    counts = np.bincount(np.asarray(train[label_column], dtype=np.int64), minlength=len(names)).tolist()
    ratios = group_ratios(args.ratios, counts)
    readable = _readable_names(names, train, args, context, label_column)
    wnids = _column_by_label(train, names, label_column, "wnid")  # e.g. the demo set: readable labels + a wnid column
    queries = []
    for i, (name, count) in enumerate(zip(names, counts)):
        synonyms = list(readable.get(name, []))
        wnid = name if is_wnid(name) else (wnids.get(name) if is_wnid(str(wnids.get(name, ""))) else None)
        if wordnet is not None:
            synset = wordnet.resolve(wnid) if wnid else None
            if synset is not None:
                synonyms += [n for n in synset.names if n not in synonyms]
        query = synonyms[0] if is_wnid(name) and synonyms else name  # a wnid is asked about by its first lemma
        group = group_of(count)
        n = args.k * ratios[group]
        if args.max_per_class is not None:
            n = min(n, args.max_per_class)
        queries.append(TargetQuery(i, name, query, synonyms, wnid, int(count), group, n))
    return queries, ratios


def _backend_kwargs(args: NeighborsArguments, context) -> dict:
    cls = resolve_backend(args.backend)
    values = asdict(args)
    if args.template_file:
        with open(_path(args.template_file, context), encoding="utf-8") as f:
            values["template"] = f.read().strip()
    if args.backend == "static":
        if args.mapping is None:
            raise ConfigError("neighbors.backend 'static' needs neighbors.mapping (a file or an inline mapping)")
        values["mapping"] = _path(args.mapping, context) if isinstance(args.mapping, str) else args.mapping
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in values.items() if k in params and k != "self"}


def run(section: dict, context) -> dict:
    """Run neighbor search for every target class and write ``<output_dir>/neighbors/neighbors.json``.

    Example:
        >>> run({"backend": "wordnet", "vocabulary": "classes.tsv"}, context)  # doctest: +SKIP

    Args:
        section: the YAML ``neighbors:`` section (see ``NeighborsArguments``).
        context: ``output_dir`` and ``target`` (a DatasetDict with a ``train`` split and a ClassLabel label).

    Returns:
        The manifest (or, with ``dry_run``, the request / token estimate).
    """
    args = from_dict(NeighborsArguments, section, "neighbors")
    out_dir = os.path.join(context.output_dir, "neighbors")
    wordnet = None
    if args.use_wordnet or args.backend == "wordnet":
        try:
            wordnet = WordNet.load(args.wordnet_dir or os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
        except FileNotFoundError as e:
            if args.backend == "wordnet":
                raise
            logger.warning("%s; the leak guard matches names only", e)
    label_column = getattr(getattr(context, "target_args", None), "label_column", None) or "label"
    queries, ratios = build_queries(context.target, args, context, wordnet, label_column)
    vocabulary = (
        load_vocabulary(_path(args.vocabulary, context) if isinstance(args.vocabulary, str) else args.vocabulary)
        if args.vocabulary
        else None
    )
    if vocabulary is not None and wordnet is not None:
        for entry in vocabulary.entries:  # a bare wnid gets its synset's names
            if entry.wnid and entry.name == entry.wnid:
                try:
                    synset = wordnet.synset(entry.wnid)
                except KeyError:
                    continue
                entry.name, entry.synonyms = synset.name, synset.names
        vocabulary = Vocabulary(vocabulary.entries)
    guard = LeakGuard(
        [Entry(q.name, [q.query, *q.synonyms], q.wnid) for q in queries],
        wordnet=wordnet,
        nested=args.leak_guard_nested,
    )
    if vocabulary is not None:  # target classes (and their hyponyms / hypernyms) can never be neighbors
        allowed = [e for e in vocabulary.entries if guard.check(e.name, e.wnid) is None]
        logger.info("vocabulary: %d names, %d left after the leak guard", len(vocabulary), len(allowed))
        vocabulary = Vocabulary(allowed)
    backend = get_backend(args.backend, **_backend_kwargs(args, context))
    cache = RequestCache(args.cache_path or os.path.join(out_dir, "cache.jsonl")) if args.backend == "openai" else None
    if args.dry_run:
        if not hasattr(backend, "estimate"):
            logger.info("dry run: backend %s makes no requests", args.backend)
            return {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}
        estimate = backend.estimate(queries, cache)
        logger.info(
            "dry run: %d classes, %d requests (%d answered by the cache), ~%d prompt + ~%d completion tokens "
            "(at most %d completion tokens)",
            len(queries), estimate["requests"], estimate["cached"], estimate["prompt_tokens"],
            estimate["completion_tokens"], estimate["max_completion_tokens"],
        )  # fmt: skip
        return estimate
    logger.info(
        "neighbors: %d target classes, backend %s, k=%d, ratios %s, vocabulary %s",
        len(queries), args.backend, args.k, ratios, len(vocabulary) if vocabulary is not None else "none",
    )  # fmt: skip
    proposals = backend.propose(queries, vocabulary=vocabulary, cache=cache)
    settings = {
        "k": args.k, "ratios": args.ratios, "group_ratios": ratios, "max_per_class": args.max_per_class,
        "vocabulary": args.vocabulary if isinstance(args.vocabulary, str) else (len(args.vocabulary or []) or None),
        "vocabulary_size": len(vocabulary) if vocabulary else None, "max_targets_per_aux": args.max_targets_per_aux,
        "leak_guard_nested": args.leak_guard_nested, **backend.settings(),
    }  # fmt: skip
    header = {
        "backend": args.backend,
        "model": backend.model,
        "template_hash": backend.template_hash,
        "settings": settings,
    }
    manifest = assemble(queries, proposals, guard, vocabulary, args.max_targets_per_aux, header)
    path = os.path.join(out_dir, MANIFEST_NAME)
    if not write_manifest(manifest, path):
        logger.info("manifest unchanged: %s", path)
    # request figures differ between a first run and a cached rerun, so they go to a log beside the manifest
    run_stats = {"created": manifest["created"], "backend": args.backend, **backend.stats}
    with open(os.path.join(out_dir, "runs.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(run_stats) + "\n")
    s = manifest["summary"]
    logger.info(
        "neighbors done: %d/%d classes ok, %d failed, %d with >= 1 neighbor; %d names proposed, %d kept, dropped %s; "
        "%d auxiliary classes (one serves at most %d targets); %d requests, %d cache hits -> %s",
        s["ok"], s["targets"], s["failed"], s["with_neighbors"], s["proposed"], s["kept"], s["dropped"] or "none",
        s["auxiliary_classes"], s["max_targets_per_aux_class"], backend.stats["requests"], backend.stats["cache_hits"],
        path,
    )  # fmt: skip
    for entry in manifest["targets"]:
        if entry["status"] != "ok":
            logger.warning("class %s (%s) failed: %s", entry["name"], entry["query"], entry["error"])
    return {**manifest, "run": run_stats}
