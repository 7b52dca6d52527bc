"""The neighbor manifest: one JSON file that retrieval and training read, and that a rerun reproduces exactly.

Format (version 1)::

    {"version": 1, "backend": "wordnet", "model": null, "template_hash": null, "created": "...", "settings": {...},
     "targets": [{"index", "name", "query", "count", "group", "num_requested", "status", "error", "proposed",
                  "kept", "got", "dropped": [{"name", "reason"}], "raw_reply", "backend", "model", "template_hash",
                  "top_up": null | {"asked", "proposed", "error"},
                  "scores": [{"name", "wnid", "similarity", "distance", "sense_corrected", "suspect"}]}],
     "auxiliary": [{"name", "neighbor_of": [...], "wnid", "similarity": [...], "distance": [...],
                    "sense_corrected", "suspect"}],
     "summary": {...}}

``status`` is ``ok``, ``failed`` (``error`` says why; ``raw_reply`` holds the first 200 characters of a reply that was
not a list of names) or ``skipped`` (the class's group ratio is 0). ``num_requested`` is what the class asked for and
``got`` what it kept. ``auxiliary[i].similarity`` / ``distance`` are aligned with its ``neighbor_of`` list (None where
unknown); ``wnid`` is the synset the name was read in (``sense_corrected``: not its most frequent sense; ``suspect``:
the lexicographer file of a sense a photo does not show). An auxiliary name never matches a target class name in
any spelling, and one synset is one auxiliary class.

After the ``rank`` stage (:mod:`neighbor_lt.neighbors.rank`) the manifest also has a top-level ``ranking`` record
(``model``, ``pooling``, ``score``, ``min_score``, ``probe_images``, ``candidate_factor``, ``status``: ``ran`` or
``not_run`` with its ``reason``, counts); every target a ``ranking`` record (``status``: ``ranked`` or ``name_ranked``
with its ``reason``; ``candidates``: each candidate with ``name_rank``, ``backend``, ``distance``, ``name_similarity``,
``probe_images``, ``prototype``, ``confusion``, ``score``, ``visual_rank``, ``kept`` and the ``reason`` it was not);
its ``scores`` and each auxiliary entry ``prototype`` / ``confusion`` aligned like ``similarity``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter

from neighbor_lt.neighbors.base import Candidate, Proposal, TargetQuery
from neighbor_lt.neighbors.guard import LeakGuard, Vocabulary
from neighbor_lt.neighbors.names import NameIndex, name_problem, normalize

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_NAME = "neighbors.json"
#: Every screened candidate of the name backend, ranked (``candidate_factor`` x what a class keeps): the rank stage's
#: input, same format (each target also has ``num_neighbors``, the number the final manifest keeps).
CANDIDATES_NAME = "candidates.json"


class ManifestError(ValueError):
    """A neighbor manifest that cannot be used (missing, not JSON, another version, malformed entries); one line."""


def default_manifest_path(output_dir: str) -> str:
    """Where the curate recipe's neighbors stage writes the manifest: ``<output_dir>/neighbors/neighbors.json``."""
    return os.path.join(output_dir, "neighbors", MANIFEST_NAME)


def load_manifest(path: str | os.PathLike, validate: bool = False) -> dict:
    """Read a neighbor manifest (a ``neighbors.json`` file, or the folder holding one): the one reader of the format.

    Example:
        >>> manifest = load_manifest("outputs/tiny_imagenet_lt/neighbors/neighbors.json")  # doctest: +SKIP
        >>> manifest["auxiliary"][0]["neighbor_of"]  # doctest: +SKIP
        ['n01443537']

    Args:
        path: the file, or a folder holding ``neighbors.json``.
        validate: also check every auxiliary entry (:func:`check_auxiliary`), as the stages that fetch images do.

    Raises:
        ManifestError: the file is missing, is not JSON, is another format version, or (``validate``) names an
            auxiliary class without a name or with unknown targets; the message names the file and the entries.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"neighbor manifest {path} not found: run the neighbors stage first")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"neighbor manifest {path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise ManifestError(f"{path}: unsupported neighbor manifest version {version!r}")
    if validate:
        check_auxiliary(manifest, path)
    return manifest


def check_auxiliary(manifest: dict, path: str = "neighbor manifest") -> None:
    """Check that every auxiliary entry has a ``name`` and a ``neighbor_of`` list naming targets of ``targets``.

    Raises:
        ManifestError: naming the first three problems (and how many more), before any request is sent.
    """
    if not isinstance(manifest.get("auxiliary"), list):
        raise ManifestError(f"neighbor manifest {path} has no 'auxiliary' list")
    targets = manifest.get("targets") or []
    known = {str(t["name"]) for t in targets if isinstance(t, dict) and t.get("name") not in (None, "")}
    problems, names = [], set()
    for i, entry in enumerate(manifest["auxiliary"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip():
            problems.append(f"auxiliary[{i}] has no 'name' ({json.dumps(entry)[:80]})")
            continue
        if name in names:
            logger.warning("neighbor manifest: auxiliary class %r appears more than once; its images are merged", name)
        names.add(name)
        neighbor_of = entry.get("neighbor_of")
        if not isinstance(neighbor_of, list) or not neighbor_of:
            problems.append(f"auxiliary class {name!r} has no 'neighbor_of' list")
        elif known and (unknown := [t for t in neighbor_of if t not in known]):
            problems.append(f"auxiliary class {name!r} is a neighbor of unknown target(s) {unknown[:3]}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ManifestError(f"neighbor manifest {path}: {'; '.join(problems[:3])}{more}")
    if not known:
        logger.warning("neighbor manifest %s has no 'targets' list: 'neighbor_of' names are not checked", path)


def find_manifest(aux_dataset: str | os.PathLike) -> str | None:
    """The ``neighbors.json`` of an auxiliary set folder (or of its Parquet files), if one lies in or beside it.

    Looked for in the folder, in its ``neighbors/`` subfolder, and in the curate recipe's layout around it
    (``<output_dir>/aux_dataset`` beside ``<output_dir>/neighbors/neighbors.json``, also from ``aux_dataset/data``).

    Example:
        >>> find_manifest("outputs/tiny_imagenet_lt/aux_dataset")  # doctest: +SKIP
        'outputs/tiny_imagenet_lt/neighbors/neighbors.json'
    """
    import glob

    aux_dataset = os.fspath(aux_dataset)
    if not (os.path.exists(aux_dataset) or glob.glob(aux_dataset)):
        return None  # a Hub id, or nothing: no local folder to look beside
    folder = os.path.normpath(aux_dataset if os.path.isdir(aux_dataset) else os.path.dirname(aux_dataset))
    parents = [os.path.dirname(folder)]
    if os.path.basename(folder) == "data":  # <output_dir>/aux_dataset/data/*.parquet
        parents.append(os.path.dirname(parents[0]))
    candidates = [os.path.join(folder, MANIFEST_NAME), os.path.join(folder, "neighbors", MANIFEST_NAME)]
    for parent in parents:
        candidates += [os.path.join(parent, "neighbors", MANIFEST_NAME), os.path.join(parent, MANIFEST_NAME)]
    return next((c for c in candidates if os.path.isfile(c)), None)


def neighbor_map(path_or_manifest) -> dict[str, list[str]]:
    """Auxiliary class name -> the target class names it was queried from.

    Example:
        >>> neighbor_map({"version": 1, "auxiliary": [{"name": "koi", "neighbor_of": ["n01443537"]}]})
        {'koi': ['n01443537']}
    """
    manifest = path_or_manifest if isinstance(path_or_manifest, dict) else load_manifest(path_or_manifest)
    return {aux["name"]: list(aux["neighbor_of"]) for aux in manifest["auxiliary"]}


def neighbor_pairs(path_or_manifest) -> list[tuple[str, str]]:
    """(auxiliary name, target name) pairs, the pairs the neighbor-silencing loss silences."""
    return [(aux, target) for aux, targets in neighbor_map(path_or_manifest).items() for target in targets]


def save_manifest(manifest: dict, path: str | os.PathLike) -> bool:
    """Write a neighbor manifest atomically (the one writer of the format); keep the file (and its ``created`` stamp)
    when nothing but the stamp would change.

    Example:
        >>> save_manifest(manifest, "outputs/tiny_imagenet_lt/neighbors/neighbors.json")  # doctest: +SKIP
        True

    Returns:
        True when the file was (re)written, False when the existing one already held this manifest.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except ValueError:
            old = None
        if old is not None and {**old, "created": None} == {**manifest, "created": None}:
            return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return True


def _reason_kind(reason: str) -> str:
    return re.sub(r" target .*$", " target", reason).split(":")[0].strip()


def screen(query: TargetQuery, proposal: Proposal, guard: LeakGuard, vocabulary: Vocabulary | None = None):
    """One target's candidates through the shape check, leak guard, vocabulary, WordNet sense and de-duplication.

    Returns:
        ``(survivors, dropped)``: the candidates that may become auxiliary classes, in rank order, with their wnid,
        similarity / distance to the target and sense flags; and ``{"name", "reason"}`` for every other one.
    """
    wordnet = guard.wordnet
    near = guard.target_offset(query.name)
    dropped = [{"name": item, "reason": f"not a name: {why}"} for item, why in proposal.rejected]
    survivors: list[Candidate] = []
    seen_names, seen_synsets = NameIndex(), {}

    def closeness(entry):  # several vocabulary entries share a name: the one nearest the target wins
        found = wordnet.given_sense(entry.wnid, near) if entry.wnid else wordnet.choose_sense(entry.name, near)
        return -(found.similarity or 0.0) if found is not None else 0.0

    prefer = closeness if wordnet is not None and near is not None else None
    for c in proposal.candidates:
        name, wnid = c.name, c.wnid
        problem = None if wnid else name_problem(name)
        if problem:
            dropped.append({"name": c.name, "reason": f"not a name: {problem}"})
            continue
        verdict = guard.screen(name, wnid, query.name)
        if verdict.reason is None and vocabulary is not None:
            match = vocabulary.match(name, wnid, prefer)
            if match is None:
                dropped.append({"name": c.name, "reason": "not in vocabulary"})
                continue
            name, wnid = match.name, wnid or match.wnid
            verdict = guard.screen(name, wnid, query.name)
        if verdict.reason:
            dropped.append({"name": c.name, "reason": verdict.reason})
            continue
        sense = verdict.sense
        sim, dist, corrected, suspect = c.similarity, c.distance, False, None
        if sense is not None:
            wnid = sense.synset.wnid
            corrected, suspect = sense.corrected, sense.suspect
            if sim is None:
                sim, dist = sense.similarity, sense.distance
        if name in seen_names:
            dropped.append({"name": c.name, "reason": "duplicate"})
            continue
        if wnid in seen_synsets:
            dropped.append({"name": c.name, "reason": f"duplicate: same synset as {seen_synsets[wnid]}"})
            continue
        seen_names.add(name, name)
        if wnid:
            seen_synsets[wnid] = name
        survivors.append(Candidate(name, wnid, sim, dist, corrected, suspect))
    return survivors, dropped


def round_robin(order_keys, ranked: list[list], wanted: list[int], ident, cap: int | None = None):
    """Give each target its first ``wanted[i]`` items of ``ranked[i]``, one per target per round, targets in the order
    of ``order_keys`` (e.g. ``(count, index)``: rarest first), no item (by ``ident(item)``) serving more than ``cap``
    targets: a capped item goes to the targets it ranks highest for, ties to the rarest.

    Returns:
        ``(kept, capped)``: the kept items per target, and ``(target, item)`` for every item the cap turned away.
    """
    order = sorted(range(len(ranked)), key=lambda i: order_keys[i])
    position = [0] * len(ranked)
    kept: list[list] = [[] for _ in ranked]
    capped: list[tuple[int, object]] = []
    served: Counter = Counter()
    progress = True
    while progress:
        progress = False
        for i in order:
            if len(kept[i]) >= wanted[i]:
                continue
            while position[i] < len(ranked[i]):
                item = ranked[i][position[i]]
                position[i] += 1
                key = ident(item)
                if cap is not None and served[key] >= cap:
                    capped.append((i, item))
                    continue
                kept[i].append(item)
                served[key] += 1
                progress = True
                break
    return kept, capped


def summarize(entries: list[dict], aux: list[dict]) -> dict:
    """The manifest's ``summary``: counts of classes, names proposed / kept / dropped by reason, auxiliary classes."""
    dropped = Counter(_reason_kind(d["reason"]) for e in entries for d in e["dropped"])
    with_neighbor = sum(1 for e in entries if e["kept"])
    asked = [e for e in entries if e["status"] == "ok"]
    summary = {
        "targets": len(entries),
        "ok": len(asked),
        "failed": sum(e["status"] == "failed" for e in entries),
        "skipped": sum(e["status"] == "skipped" for e in entries),
        "with_neighbors": with_neighbor,
        "proposed": sum(len(e["proposed"]) for e in entries),
        "kept": sum(len(e["kept"]) for e in entries),
        "dropped": dict(sorted(dropped.items())),
        "short": sum(e["got"] < e["num_requested"] for e in asked),
        "topped_up": sum(e["top_up"] is not None for e in entries),
        "auxiliary_classes": len(aux),
        "max_targets_per_aux_class": max((len(a["neighbor_of"]) for a in aux), default=0),
        "with_neighbors_by_group": dict(sorted(Counter(e["group"] for e in entries if e["kept"]).items())),
        "senses_corrected": sum(bool(a["sense_corrected"]) for a in aux),
        "suspect_senses": sum(a["suspect"] is not None for a in aux),
    }
    sims = [s for a in aux for s in a["similarity"] if s is not None]
    if sims:
        summary["mean_similarity"] = round(sum(sims) / len(sims), 4)
    dists = [d for a in aux for d in a["distance"] if d is not None]
    if dists:
        summary["mean_distance"] = round(sum(dists) / len(dists), 3)
    return summary


def assemble(
    queries: list[TargetQuery],
    proposals: list[Proposal],
    guard: LeakGuard,
    vocabulary: Vocabulary | None = None,
    max_targets_per_aux: int | None = None,
    header: dict | None = None,
) -> dict:
    """Apply shape check, vocabulary, leak guard, WordNet sense, de-duplication and the per-auxiliary cap; build the
    manifest.

    Candidates are taken in rounds, one per target per round in rank order, rarest targets first within a round: an
    auxiliary class at ``max_targets_per_aux`` goes to the targets it ranks highest for, ties to the tail classes.
    One synset (or, without WordNet, one name in any spelling) is one auxiliary class.

    Args:
        queries: the target classes.
        proposals: the backend's proposal per query.
        guard: rejects names that leak a target class (and reads bare names in WordNet).
        vocabulary: when set, every kept name is mapped onto (and named after) a vocabulary entry.
        max_targets_per_aux: cap on the targets one auxiliary class serves; None for no cap.
        header: top-level fields (backend, model, template_hash, settings).
    """
    entries, survivors = [], []
    for q, p in zip(queries, proposals):
        entry = {
            "index": q.index, "name": q.name, "query": q.query, "count": q.count, "group": q.group,
            "num_requested": q.num_requested, "status": p.status, "error": p.error,
            "proposed": [c.name for c in p.candidates], "kept": [], "dropped": [], "raw_reply": p.raw_reply,
            "backend": (header or {}).get("backend"), "model": (header or {}).get("model"),
            "template_hash": (header or {}).get("template_hash"), "scores": [], "got": 0, "top_up": p.top_up,
        }  # fmt: skip
        ok, dropped = screen(q, p, guard, vocabulary)
        entry["dropped"] = dropped
        entries.append(entry)
        survivors.append(ok)

    # round-robin assignment, rarest targets first, under the per-auxiliary cap
    kept, capped = round_robin(
        [(q.count, q.index) for q in queries], survivors, [q.num_requested for q in queries],
        lambda c: c.wnid or normalize(c.name), max_targets_per_aux,
    )  # fmt: skip
    for i, c in capped:
        reason = f"cap: auxiliary class already serves {max_targets_per_aux} targets"
        entries[i]["dropped"].append({"name": c.name, "reason": reason})

    # one auxiliary class per synset (or name), named uniquely
    aux: dict[str, dict] = {}
    used_names = NameIndex()
    for i, entry in enumerate(entries):
        for c in kept[i]:
            ident = c.wnid or normalize(c.name)
            if ident not in aux:
                name = c.name
                if used_names.get(name, ident) != ident:
                    name = f"{name} ({c.wnid or len(aux)})"
                used_names.add(name, ident)
                aux[ident] = {
                    "name": name, "neighbor_of": [], "wnid": c.wnid, "similarity": [], "distance": [],
                    "sense_corrected": c.sense_corrected, "suspect": c.suspect,
                }  # fmt: skip
            a = aux[ident]
            a["neighbor_of"].append(entry["name"])
            a["similarity"].append(c.similarity)
            a["distance"].append(c.distance)
            entry["kept"].append(a["name"])
            entry["scores"].append({
                "name": a["name"], "wnid": c.wnid, "similarity": c.similarity, "distance": c.distance,
                "sense_corrected": c.sense_corrected, "suspect": c.suspect,
            })  # fmt: skip
        entry["got"] = len(entry["kept"])

    targets = NameIndex({q.name: q.name for q in queries})
    clash = [a["name"] for a in aux.values() if a["name"] in targets]
    if clash:  # the guard makes this impossible; a manifest with it would silently merge classes
        raise RuntimeError(f"auxiliary names equal target names: {clash[:5]}")

    summary = summarize(entries, list(aux.values()))
    return {
        "version": MANIFEST_VERSION,
        **(header or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": entries,
        "auxiliary": list(aux.values()),
        "summary": summary,
    }
