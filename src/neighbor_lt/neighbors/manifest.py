"""The neighbor manifest: one JSON file that retrieval and training read, and that a rerun reproduces exactly.

Format (version 1)::

    {"version": 1, "backend": "wordnet", "model": null, "template_hash": null, "created": "...", "settings": {...},
     "targets": [{"index", "name", "query", "count", "group", "num_requested", "status", "error", "proposed",
                  "kept", "dropped": [{"name", "reason"}], "raw_reply", "backend", "model", "template_hash",
                  "scores": [{"name", "wnid", "similarity", "distance"}]}],
     "auxiliary": [{"name", "neighbor_of": [...], "wnid", "similarity": [...], "distance": [...]}],
     "summary": {...}}

``auxiliary[i].similarity`` / ``distance`` are aligned with its ``neighbor_of`` list (None where unknown). An
auxiliary name never equals a target class name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter

from neighbor_lt.neighbors.base import Candidate, Proposal, TargetQuery
from neighbor_lt.neighbors.guard import LeakGuard, Vocabulary, normalize

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_NAME = "neighbors.json"


def load_manifest(path: str) -> dict:
    """Read a neighbor manifest (a ``neighbors.json`` file, or the folder holding one).

    Example:
        >>> manifest = load_manifest("outputs/tiny_imagenet_lt/neighbors/neighbors.json")  # doctest: +SKIP
        >>> manifest["auxiliary"][0]["neighbor_of"]  # doctest: +SKIP
        ['n01443537']
    """
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: unsupported neighbor manifest version {manifest.get('version')!r}")
    return manifest


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


def write_manifest(manifest: dict, path: str) -> bool:
    """Write atomically; keep the file (and its ``created`` stamp) when nothing but the stamp would change.

    Returns:
        True when the file was (re)written, False when the existing one already held this manifest.
    """
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


def assemble(
    queries: list[TargetQuery],
    proposals: list[Proposal],
    guard: LeakGuard,
    vocabulary: Vocabulary | None = None,
    max_targets_per_aux: int | None = None,
    header: dict | None = None,
) -> dict:
    """Apply vocabulary, leak guard, de-duplication and the per-auxiliary cap; build the manifest.

    Candidates are taken in rounds, one per target per round in rank order, rarest targets first within a round: an
    auxiliary class at ``max_targets_per_aux`` goes to the targets it ranks highest for, ties to the tail classes.

    Args:
        queries: the target classes.
        proposals: the backend's proposal per query.
        guard: rejects names that leak a target class.
        vocabulary: when set, every kept name is mapped onto (and named after) a vocabulary entry.
        max_targets_per_aux: cap on the targets one auxiliary class serves; None for no cap.
        header: top-level fields (backend, model, template_hash, settings).
    """
    wordnet = guard.wordnet
    entries, survivors = [], []
    for q, p in zip(queries, proposals):
        entry = {
            "index": q.index, "name": q.name, "query": q.query, "count": q.count, "group": q.group,
            "num_requested": q.num_requested, "status": p.status, "error": p.error,
            "proposed": [c.name for c in p.candidates], "kept": [], "dropped": [], "raw_reply": p.raw_reply,
            "backend": (header or {}).get("backend"), "model": (header or {}).get("model"),
            "template_hash": (header or {}).get("template_hash"), "scores": [],
        }  # fmt: skip
        target_synset = None
        if wordnet is not None:
            target_synset = wordnet.resolve(q.wnid or q.name) or wordnet.resolve(q.query)
        seen, ok = set(), []
        for c in p.candidates:
            name, wnid = c.name, c.wnid
            reason = guard.check(name, wnid)
            if reason:
                entry["dropped"].append({"name": c.name, "reason": reason})
                continue
            if vocabulary is not None:
                match = vocabulary.match(name, wnid)
                if match is None:
                    entry["dropped"].append({"name": c.name, "reason": "not in vocabulary"})
                    continue
                name, wnid = match.name, wnid or match.wnid
                reason = guard.check(name, wnid)
                if reason:
                    entry["dropped"].append({"name": c.name, "reason": reason})
                    continue
            ident = wnid or normalize(name)
            if ident in seen:
                entry["dropped"].append({"name": c.name, "reason": "duplicate"})
                continue
            seen.add(ident)
            sim, dist = c.similarity, c.distance
            if sim is None and target_synset is not None:
                found = wordnet.resolve(wnid) if wnid else wordnet.resolve(name)
                if found is not None:
                    wnid = wnid or found.wnid
                    sim, dist = wordnet.similarity(target_synset.offset, found.offset)
                    sim = round(sim, 4)
            ok.append(Candidate(name, wnid, sim, dist))
        entries.append(entry)
        survivors.append(ok)

    # round-robin assignment, rarest targets first, under the per-auxiliary cap
    order = sorted(range(len(queries)), key=lambda i: (queries[i].count, queries[i].index))
    position = [0] * len(queries)
    kept: list[list[Candidate]] = [[] for _ in queries]
    served: Counter = Counter()
    progress = True
    while progress:
        progress = False
        for i in order:
            if len(kept[i]) >= queries[i].num_requested:
                continue
            while position[i] < len(survivors[i]):
                c = survivors[i][position[i]]
                position[i] += 1
                ident = c.wnid or normalize(c.name)
                if max_targets_per_aux is not None and served[ident] >= max_targets_per_aux:
                    reason = f"cap: auxiliary class already serves {max_targets_per_aux} targets"
                    entries[i]["dropped"].append({"name": c.name, "reason": reason})
                    continue
                kept[i].append(c)
                served[ident] += 1
                progress = True
                break

    # one auxiliary class per distinct name / synset, named uniquely
    aux: dict[str, dict] = {}
    used_names: dict[str, str] = {}
    for i, entry in enumerate(entries):
        for c in kept[i]:
            ident = c.wnid or normalize(c.name)
            if ident not in aux:
                name = c.name
                if used_names.get(normalize(name), ident) != ident:
                    name = f"{name} ({c.wnid or len(aux)})"
                used_names[normalize(name)] = ident
                aux[ident] = {"name": name, "neighbor_of": [], "wnid": c.wnid, "similarity": [], "distance": []}
            a = aux[ident]
            a["neighbor_of"].append(entry["name"])
            a["similarity"].append(c.similarity)
            a["distance"].append(c.distance)
            entry["kept"].append(a["name"])
            entry["scores"].append(
                {"name": a["name"], "wnid": c.wnid, "similarity": c.similarity, "distance": c.distance}
            )

    target_names = {q.name for q in queries}
    clash = [a["name"] for a in aux.values() if a["name"] in target_names]
    if clash:  # the guard makes this impossible; a manifest with it would silently merge classes
        raise RuntimeError(f"auxiliary names equal target names: {clash[:5]}")

    dropped = Counter(_reason_kind(d["reason"]) for e in entries for d in e["dropped"])
    with_neighbor = sum(1 for e in entries if e["kept"])
    summary = {
        "targets": len(entries),
        "ok": sum(e["status"] == "ok" for e in entries),
        "failed": sum(e["status"] != "ok" for e in entries),
        "with_neighbors": with_neighbor,
        "proposed": sum(len(e["proposed"]) for e in entries),
        "kept": sum(len(e["kept"]) for e in entries),
        "dropped": dict(sorted(dropped.items())),
        "auxiliary_classes": len(aux),
        "max_targets_per_aux_class": max((len(a["neighbor_of"]) for a in aux.values()), default=0),
        "with_neighbors_by_group": dict(sorted(Counter(e["group"] for e in entries if e["kept"]).items())),
    }
    sims = [s for a in aux.values() for s in a["similarity"] if s is not None]
    if sims:
        summary["mean_similarity"] = round(sum(sims) / len(sims), 4)
    return {
        "version": MANIFEST_VERSION,
        **(header or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": entries,
        "auxiliary": list(aux.values()),
        "summary": summary,
    }
