"""The ``neighbors`` stage of ``recipes/curate.py``: target set -> backend -> ``<output_dir>/neighbors/neighbors.json``.

Every screened candidate (``candidate_factor`` x what a class keeps) also goes, ranked, to ``neighbors/candidates.json``,
the input of the optional ``rank`` stage.

The settings are checked before any request (a bad ``k`` or ``ratios`` sends nothing). A class the leak guard or the
reply parser leaves short is asked once more for the missing number (``top_up``). The stage raises ``ConfigError``
for a setting to fix and ``NeighborSearchError`` when no class got a usable neighbor or the endpoint is down; after
Ctrl-C it stops at once, keeping every finished class in the request cache, so a rerun resumes.

Retrying failed classes needs no flag: only usable replies are cached, so a rerun (with or without
``recipes/curate.py --retry_failed``) asks again exactly the classes that failed (refusals, unparsable replies, errors
after the request's own retries) and takes every answered class from the cache.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neighbor_lt.configs import ConfigError, from_dict
from neighbor_lt.curate import CurateContext, StageError
from neighbor_lt.metrics import GROUPS, group_of
from neighbor_lt.neighbors import NEIGHBOR_BACKENDS
from neighbor_lt.neighbors.base import (
    Checks,
    NeighborSearchError,
    Proposal,
    TargetQuery,
    build_options,
    is_number,
    option_names,
)
from neighbor_lt.neighbors.cache import RequestCache
from neighbor_lt.neighbors.guard import Entry, LeakGuard, Vocabulary, load_vocabulary
from neighbor_lt.neighbors.manifest import CANDIDATES_NAME, MANIFEST_NAME, assemble, save_manifest, screen
from neighbor_lt.neighbors.names import is_wnid, split_synonyms
from neighbor_lt.neighbors.wordnet import WordNet
from neighbor_lt.secrets import install_log_redaction, redact

logger = logging.getLogger(__name__)


class NeighborsStageError(NeighborSearchError, StageError):
    """The neighbors stage stopped (endpoint down) or produced nothing usable; ``recipes/curate.py`` logs the one-line
    message and exits 1."""


class NeighborsConfigError(ConfigError, StageError):
    """A neighbors setting to fix (an invalid value, a missing / malformed / rejected API key, a wrong ``base_url`` or
    ``model``), found before any request or at the first answer; reported in one line like a failed stage."""


@dataclass
class _StageArguments:
    """The stage's own keys of the ``neighbors:`` section; :class:`NeighborsArguments` adds the backends' options."""

    backend: str | None = field(
        default=None, metadata={"help": "Knowledge source (required): openai, wordnet or static."}
    )
    backend_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Options of the backend (the fields of its Options dataclass), checked against it (like "
            "retrieve.backend_kwargs): e.g. {model: gpt-5.5, base_url: ...} for openai, {depth: 3} for wordnet. The "
            "built-in backends' options may also be set directly in the section; backend_kwargs wins. Options of "
            "another backend than the chosen one are ignored with a note (a YAML for openai run with --neighbors.backend "
            "wordnet)."
        },
    )
    k: int = field(default=5, metadata={"help": "Neighbors per head class; other groups get k times their ratio."})
    ratios: Any = field(
        default_factory=lambda: [1, 1, 3],
        metadata={
            "help": "Head : medium : tail ratio as [h, m, t] (non-negative, positive sum; 0 skips a group), or "
            "'auto' = 1 : ceil(Nh/Nm) : ceil(Nh/Nt) from the groups' total training images, each at most "
            "max_auto_ratio."
        },
    )
    max_auto_ratio: float | None = field(
        default=5, metadata={"help": "Cap on each 'auto' ratio (null: the paper's formula uncapped)."}
    )
    max_per_class: int | None = field(default=None, metadata={"help": "Upper bound on neighbors of one class."})
    candidate_factor: int = field(
        default=1,
        metadata={
            "help": "Ask the backend for this many times k x ratio names per class and keep them all, ranked, in "
            "neighbors/candidates.json (the rank stage's input); neighbors.json keeps the name-ranked top k x ratio. "
            "3 with the rank stage: neighbors chosen by how confusable they look."
        },
    )
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
            "help": "File mapping label names to readable names (.tsv/.csv with wnid or name + words, or .txt in label "
            "order); a class's first word is what the backend is asked about (tabby_cat -> 'tabby cat')."
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
    top_up: int = field(
        default=1,
        metadata={
            "help": "Extra requests per class when the leak guard or the reply parser leaves it short: each asks for "
            "the missing number, naming what to avoid (0: none; backends that can, i.e. openai)."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Only report the requests, tokens and price (openai) a run would take; nothing is sent."},
    )
    cache_path: str | None = field(
        default=None, metadata={"help": "Request cache; <output_dir>/neighbors/cache.jsonl."}
    )

    def __post_init__(self):
        problems = _problems(self)
        if problems:
            raise ConfigError("invalid neighbors settings: " + "; ".join(problems))


def _option_keys() -> dict[str, tuple[list[str], dataclasses.Field]]:
    """Option key -> (the built-in backends that take it, its field), for keys that are not the stage's own."""
    own = {f.name for f in dataclasses.fields(_StageArguments)}
    keys: dict[str, tuple[list[str], dataclasses.Field]] = {}
    for name, backend in NEIGHBOR_BACKENDS.items():
        for f in dataclasses.fields(backend.Options) if backend.Options is not None else ():
            if f.name not in own:
                keys.setdefault(f.name, ([], f))[0].append(name)
    return keys


# The built-in backends' options, also accepted at the top of the section (the YAML files set `model:` there); each
# is defined once, in its backend's Options dataclass, and null here means "the backend's default".
OPTION_KEYS = _option_keys()
NeighborsArguments = dataclasses.make_dataclass(
    "NeighborsArguments",
    [
        (key, f.type, field(default=None, metadata={**f.metadata, "backends": owners}))
        for key, (owners, f) in OPTION_KEYS.items()
    ],
    bases=(_StageArguments,),
    namespace={"__module__": __name__},
)
NeighborsArguments.__doc__ = """The ``neighbors:`` section of a curation YAML file: the stage's keys, and the options of
the chosen backend (``backend_kwargs``, or set directly in the section). ``options`` holds the chosen backend's
checked ``Options``.

Example:
    >>> NeighborsArguments(backend="wordnet", depth=2).options.depth
    2
"""


def _problems(args) -> list[str]:
    """Every invalid setting, each with what it must be and what it is."""
    checks = Checks(args)
    if args.backend is None:
        checks.problems.append(f"backend is required (one of {', '.join(sorted(NEIGHBOR_BACKENDS))})")
    else:
        checks.need(args.backend in NEIGHBOR_BACKENDS, "backend", f"one of {', '.join(sorted(NEIGHBOR_BACKENDS))}")
    checks.positive_int("k", "candidate_factor")
    checks.need(args.ratios == "auto" or _fixed_ratios(args.ratios), "ratios",
                "'auto' or three non-negative numbers [head, medium, tail] with a positive sum")  # fmt: skip
    checks.number("max_auto_ratio", "a number >= 1 or null", low=1, optional=True)
    checks.positive_int("max_per_class", "max_targets_per_aux", optional=True)
    checks.positive_int("top_up", minimum=0)
    if args.backend in NEIGHBOR_BACKENDS:
        try:
            args.options = backend_options(args)
        except ConfigError as e:
            checks.problems.append(str(e).removeprefix("invalid neighbors settings: "))
    return checks.problems


def backend_options(args):
    """The chosen backend's ``Options``: its keys set in the section, the stage keys it shares (``wordnet_dir``),
    then ``backend_kwargs``. An option of another backend (a YAML for openai run with ``--neighbors.backend
    wordnet``) is ignored with a note and dropped from the resolved configuration; a key of no backend is an error."""
    where = f"neighbors.backend_kwargs ({args.backend})"
    if not isinstance(args.backend_kwargs, dict):
        raise ConfigError(f"{where} must be a mapping of option names to values (got {args.backend_kwargs!r})")
    backend = NEIGHBOR_BACKENDS[args.backend]
    takes = set(option_names(backend))
    section = {key: getattr(args, key) for key in OPTION_KEYS if getattr(args, key) is not None}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(_StageArguments) if f.name in takes}
    for source, given in (("neighbors", section), ("neighbors.backend_kwargs", dict(args.backend_kwargs))):
        for key, value in given.items():
            owners = [name for name, other in NEIGHBOR_BACKENDS.items() if key in option_names(other)]
            if key in takes or not owners:
                values[key] = value  # a key of no backend is reported below, with the valid ones
                continue
            logger.info("%s.%s is an option of the %s backend, not of %s: ignored", source, key, " / ".join(owners),
                        args.backend)  # fmt: skip
            if source == "neighbors":
                setattr(args, key, None)
            else:
                del args.backend_kwargs[key]
    options = build_options(backend, values, where)
    for key in takes & OPTION_KEYS.keys():  # the resolved configuration shows every option of the backend
        setattr(args, key, getattr(options, key))
    return options


def _fixed_ratios(ratios) -> bool:
    return (
        isinstance(ratios, (list, tuple)) and len(ratios) == 3 and all(is_number(r) and r >= 0 for r in ratios)
        and sum(ratios) > 0
    )  # fmt: skip


def group_ratios(
    ratios, counts: list[int], max_auto_ratio: float | None = None, thresholds: tuple[int, int] | None = None
) -> dict[str, float]:
    """Neighbor multiplier per group: fixed ``[h, m, t]`` or ``auto`` from the training counts (paper, sec. 4.2).

    ``auto`` is ``1 : ceil(Nh/Nm) : ceil(Nh/Nt)`` with N the total training images of each group, each ratio at most
    ``max_auto_ratio``; an empty group gets 1. ``thresholds`` are the target's ``(many_threshold, few_threshold)``
    (default: the paper's 100 / 20).

    Example:
        >>> group_ratios("auto", [500, 400, 50, 10])
        {'many': 1, 'medium': 18, 'few': 90}
        >>> group_ratios("auto", [500, 400, 50, 10], max_auto_ratio=5)
        {'many': 1, 'medium': 5, 'few': 5}
    """
    if isinstance(ratios, str):
        if ratios != "auto":
            raise ConfigError(f"neighbors.ratios must be [head, medium, tail] or 'auto', got {ratios!r}")
        totals = {g: 0 for g in GROUPS}
        for c in counts:
            totals[group_of(int(c), *(thresholds or ()))] += int(c)
        head = totals["many"]
        out = {g: (1 if g == "many" or not totals[g] or not head else math.ceil(head / totals[g])) for g in GROUPS}
        if max_auto_ratio is not None:
            out = {g: min(r, max_auto_ratio) for g, r in out.items()}
        return out
    if not _fixed_ratios(ratios):
        raise ConfigError(f"neighbors.ratios must be three non-negative numbers with a positive sum, got {ratios!r}")
    return dict(zip(GROUPS, ratios))


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
        path = context.path(args.class_names)
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
    target_args = getattr(context, "target_args", None)  # the card groups by the same thresholds
    thresholds = (target_args.many_threshold, target_args.few_threshold) if target_args is not None else None
    ratios = group_ratios(args.ratios, counts, args.max_auto_ratio, thresholds)
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
        if args.class_names and readable.get(name):  # the user's words for a folder name such as tabby_cat
            query = readable[name][0]
        group = group_of(count, *(thresholds or ()))
        n = math.ceil(args.k * ratios[group] - 1e-9)
        if args.max_per_class is not None:
            n = min(n, args.max_per_class)
        queries.append(TargetQuery(i, name, query, synonyms, wnid, int(count), group, n))
    return queries, ratios


def top_up(backend, queries, proposals, guard, vocabulary=None, cache=None, rounds: int = 1) -> None:
    """Ask a class again for the neighbors it is short of (after the shape check, guard, vocabulary and de-dup),
    naming the names already proposed; the new candidates are appended to its proposal, ``proposal.top_up`` records
    what was asked and what came back.

    Args:
        rounds: extra requests per class at most.
    """
    if not getattr(backend, "can_top_up", False):
        return
    for _ in range(rounds):
        asks = []
        for i, (q, p) in enumerate(zip(queries, proposals)):
            if p.status != "ok" or (p.top_up and p.top_up["error"]):
                continue
            missing = q.num_requested - len(screen(q, p, guard, vocabulary)[0])
            if missing > 0:
                avoid = list(dict.fromkeys(c.name for c in p.candidates))
                asks.append((i, dataclasses.replace(q, num_requested=missing, avoid=avoid)))
        if not asks:
            return
        logger.info("top-up: %d classes short of neighbors, asking each for the missing number", len(asks))
        answers = backend.propose([a for _, a in asks], vocabulary=vocabulary, cache=cache)
        for (i, ask), extra in zip(asks, answers):
            p = proposals[i]
            record = p.top_up or {"asked": 0, "proposed": [], "error": None}
            record["asked"] += ask.num_requested
            record["proposed"] += [c.name for c in extra.candidates]
            record["error"] = extra.error
            p.top_up = record
            p.candidates = p.candidates + extra.candidates
            p.rejected = p.rejected + extra.rejected


def run(section: NeighborsArguments | dict, context: CurateContext) -> dict:
    """Run neighbor search for every target class and write ``<output_dir>/neighbors/neighbors.json``.

    Example:
        >>> run({"backend": "wordnet", "vocabulary": "classes.tsv"}, context)  # doctest: +SKIP

    Args:
        section: the YAML ``neighbors:`` section (see ``NeighborsArguments``).
        context: ``output_dir`` and ``target`` (a DatasetDict with a ``train`` split and a ClassLabel label).

    Returns:
        The manifest (or, with ``dry_run``, the request / token estimate).

    Raises:
        NeighborsConfigError: (a ``ConfigError``) an invalid setting, found before any request; a missing, malformed
            or rejected API key; a wrong ``base_url`` or ``model``.
        NeighborsStageError: (a ``NeighborSearchError``) the endpoint stopped answering (finished classes stay
            cached), or no class got a usable neighbor (the manifest is written first).
        KeyboardInterrupt: Ctrl-C; no request is sent after it, finished classes stay cached.
    """
    install_log_redaction()
    try:
        return _run(section, context)
    except (NeighborsConfigError, NeighborsStageError):
        raise
    except ConfigError as e:  # one line, no secret, for recipes/curate.py
        raise NeighborsConfigError(redact(e)) from e
    except NeighborSearchError as e:
        raise NeighborsStageError(redact(e)) from e


def _resolve_paths(options, context: CurateContext):
    """The backend's file options (``metadata={"path": True}``) looked up next to the YAML file."""
    if options is None:
        return None
    paths = {f.name: context.path(getattr(options, f.name)) for f in dataclasses.fields(options)
             if f.metadata.get("path") and isinstance(getattr(options, f.name), str)}  # fmt: skip
    return dataclasses.replace(options, **paths)


def _prepare(args, context: CurateContext):
    """WordNet (when used), the target queries with their group ratios, the vocabulary and the leak guard."""
    backend_class = NEIGHBOR_BACKENDS[args.backend]
    wordnet = None
    if args.use_wordnet or backend_class.uses_wordnet:
        try:
            wordnet = WordNet.load(args.wordnet_dir or os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
        except FileNotFoundError as e:
            if backend_class.uses_wordnet:
                raise
            logger.warning("%s; the leak guard matches names only", e)
    names_needed = f"the {args.backend} neighbor backend" if backend_class.asks_by_name else None  # not class "17"
    target = context.load_target(require_names=names_needed)
    queries, ratios = build_queries(target, args, context, wordnet, context.label_column)
    vocabulary = (
        load_vocabulary(context.path(args.vocabulary) if isinstance(args.vocabulary, str) else args.vocabulary)
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
    return queries, ratios, vocabulary, guard


def _dry_run(backend, asked: list[TargetQuery], cache) -> dict:
    """Log and return what a run would take: requests, tokens and, when the price is known, dollars."""
    if not hasattr(backend, "estimate"):
        logger.info("dry run: backend %s makes no requests", backend.name)
        return {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}
    e = backend.estimate(asked, cache)
    logger.info(
        "dry run: %d classes, %d requests (%d answered by the cache), ~%d prompt + ~%d completion tokens "
        "(at most %d completion tokens)", len(asked), e["requests"], e["cached"], e["prompt_tokens"],
        e["completion_tokens"], e["max_completion_tokens"],
    )  # fmt: skip
    if "cost_usd" in e:
        price_in, price_out = e["price_per_million"]
        hidden = " plus its hidden reasoning tokens, billed as output:" if e.get("reasoning") else ""
        logger.info(
            "dry run: ~$%.2f for %s at $%.2f / $%.2f per 1M input / output tokens%s at most $%.2f if every reply "
            "used max_completion_tokens; top-ups add up to top_up requests per short class",
            e["cost_usd"], e["model"], price_in, price_out, hidden, e["max_cost_usd"],
        )  # fmt: skip
    else:
        logger.info("dry run: no price known for %s at this endpoint: set neighbors.price_per_million [input, output] "
                    "(USD per 1M tokens) to price the run", e.get("model"))  # fmt: skip
    return e


def _run(section: NeighborsArguments | dict, context: CurateContext) -> dict:
    args = section if isinstance(section, NeighborsArguments) else from_dict(NeighborsArguments, section, "neighbors")
    out_dir = os.path.join(context.output_dir, "neighbors")
    queries, ratios, vocabulary, guard = _prepare(args, context)
    backend = NEIGHBOR_BACKENDS[args.backend](_resolve_paths(args.options, context))
    cache = RequestCache(args.cache_path or os.path.join(out_dir, "cache.jsonl")) if backend.cacheable else None
    # the backend proposes candidate_factor x what each class keeps; top-up and screening count the wide number, so
    # nothing cuts the candidates before the rank stage sees them (the per-auxiliary cap applies to the final choice)
    wide = [dataclasses.replace(q, num_requested=q.num_requested * args.candidate_factor) for q in queries]
    asked = [q for q in wide if q.num_requested > 0]  # a group with ratio 0 is not asked
    if args.dry_run:
        return _dry_run(backend, asked, cache)
    logger.info(
        "neighbors: %d target classes (%d asked), backend %s, k=%d, ratios %s, vocabulary %s",
        len(queries), len(asked), args.backend, args.k, ratios, len(vocabulary) if vocabulary is not None else "none",
    )  # fmt: skip
    limit = getattr(backend, "max_candidates", None)
    if args.candidate_factor > 1 and limit and max(q.num_requested for q in wide) > limit:
        logger.warning("candidate_factor %d asks up to %d candidates per class, more than the backend's "
                       "max_candidates=%d", args.candidate_factor, max(q.num_requested for q in wide), limit)  # fmt: skip
    answers = iter(backend.propose(asked, vocabulary=vocabulary, cache=cache))
    proposals = [next(answers) if q.num_requested > 0 else Proposal(status="skipped") for q in queries]
    top_up(backend, wide, proposals, guard, vocabulary, cache, args.top_up)
    return _write(args, backend, queries, wide, proposals, guard, vocabulary, ratios, out_dir)


def _write(args, backend, queries, wide, proposals, guard, vocabulary, ratios, out_dir: str) -> dict:
    """neighbors.json, candidates.json and the run log; the summary logged, failures named."""
    settings = {
        "k": args.k, "ratios": args.ratios, "group_ratios": ratios, "max_auto_ratio": args.max_auto_ratio,
        "max_per_class": args.max_per_class,
        "vocabulary": args.vocabulary if isinstance(args.vocabulary, str) else (len(args.vocabulary or []) or None),
        "vocabulary_size": len(vocabulary) if vocabulary else None, "max_targets_per_aux": args.max_targets_per_aux,
        "leak_guard_nested": args.leak_guard_nested, "top_up": args.top_up,
        **({"candidate_factor": args.candidate_factor} if args.candidate_factor > 1 else {}), **backend.settings(),
    }  # fmt: skip
    header = {
        "backend": args.backend,
        "model": backend.model,
        "template_hash": backend.template_hash,
        "settings": settings,
    }
    manifest = assemble(queries, proposals, guard, vocabulary, args.max_targets_per_aux, header)
    candidates = assemble(wide, proposals, guard, vocabulary, None, header)
    for entry, q in zip(candidates["targets"], queries):
        entry["num_neighbors"] = q.num_requested  # what the rank stage keeps of the num_requested candidates
    save_manifest(candidates, os.path.join(out_dir, CANDIDATES_NAME))
    path = os.path.join(out_dir, MANIFEST_NAME)
    if not save_manifest(manifest, path):
        logger.info("manifest unchanged: %s", path)
    # request figures differ between a first run and a cached rerun, so they go to a log beside the manifest
    run_stats = {"created": manifest["created"], "backend": args.backend, **backend.stats}
    with open(os.path.join(out_dir, "runs.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(run_stats) + "\n")
    if backend.stats.get("completion_tokens"):
        prompt, completion = backend.stats.get("prompt_tokens", 0), backend.stats["completion_tokens"]
        cost = backend.cost(prompt, completion) if hasattr(backend, "cost") else None
        logger.info("tokens used by this run: %d prompt + %d completion%s", prompt, completion,
                    f" (~${cost:.2f})" if cost is not None else "")  # fmt: skip
    s = manifest["summary"]
    logger.info(
        "neighbors done: %d/%d classes ok, %d failed, %d skipped, %d with >= 1 neighbor, %d short of k x ratio "
        "(%d topped up); %d names proposed, %d kept, dropped %s; %d auxiliary classes (one serves at most %d "
        "targets), %d read in a sense other than WordNet's first, %d suspect; %d requests, %d cache hits -> %s",
        s["ok"], s["targets"], s["failed"], s["skipped"], s["with_neighbors"], s["short"], s["topped_up"],
        s["proposed"], s["kept"], s["dropped"] or "none", s["auxiliary_classes"], s["max_targets_per_aux_class"],
        s["senses_corrected"], s["suspect_senses"], backend.stats["requests"], backend.stats["cache_hits"], path,
    )  # fmt: skip
    failed = [e for e in manifest["targets"] if e["status"] == "failed"]
    for entry in failed:
        logger.warning("class %s (%s) failed: %s", entry["name"], entry["query"], entry["error"])
    for aux in manifest["auxiliary"]:
        if aux["suspect"]:
            logger.warning("auxiliary class %r (%s) is a %s, not a thing a photo shows: check it", aux["name"],
                           aux["wnid"], aux["suspect"])  # fmt: skip
    if not s["with_neighbors"]:
        first = f" (first error: {failed[0]['error']})" if failed else ""
        raise NeighborsStageError(
            f"no target class got a usable neighbor: {s['failed']} of {s['targets']} classes failed{first}, "
            f"{s['kept']} names kept of {s['proposed']} proposed; see {path}"
        )
    if failed:
        logger.warning("%d of %d classes failed; rerun the stage to ask them again (answered classes come from the "
                       "cache)", len(failed), s["targets"])  # fmt: skip
    return {**manifest, "run": run_stats}
