"""The ablation's variants, the random-class control and the step count of the equal-steps baseline.

The variants (the paper's ablation, Table 5, plus an equal-steps baseline and a control):

- ``a``: balanced softmax, target only.
- ``a_steps``: the same for as many optimizer steps as ``c`` (auxiliary images make an epoch longer: is the gain
  only more steps?).
- ``b``: auxiliary classes merged, balanced softmax (eq. 3).
- ``c``: neighbor silencing + masking (ours, eq. 4).
- ``d``: random auxiliary classes with the same bipartite shape as the real neighbors, trained as ``c`` (is the gain
  from *neighbors*, or from any extra classes?).
- ``c_v`` (opt-in): neighbors chosen by how confusable they look (the curation's ``rank`` stage over a wider name-ranked
  candidate list), trained as ``c``.

A new variant is one more :class:`Variant` in :data:`VARIANTS` (a loss from :data:`neighbor_lt.losses.LOSSES` and an
auxiliary set); ``tests/test_ablation.py`` shows how to check it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..configs import ConfigError


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a loss and the auxiliary set it trains beside (None: target only)."""

    name: str
    label: str
    loss: str
    aux: str | None  # "neighbors", "random" or None (target only)
    equal_steps: bool = False  # run for as many optimizer steps as ``c``


VARIANTS = {
    v.name: v
    for v in (
        Variant("a", "(a) BalCE, target only", "balanced_softmax", None),
        Variant("a_steps", "(a=) BalCE, target only, steps of (c)", "balanced_softmax", None, equal_steps=True),
        Variant("b", "(b) aux merged, BalCE (eq. 3)", "balanced_softmax", "neighbors"),
        Variant("c", "(c) neighbor silencing + mask (ours)", "neighbor_silencing", "neighbors"),
        Variant("d", "(d) random aux classes, as (c)", "neighbor_silencing", "random"),
        Variant("c_v", "(c+v) visually ranked neighbors, as (c)", "neighbor_silencing", "visual"),
    )
}
#: Variants a recipe curates only when asked for (their auxiliary set needs more than the neighbor set's settings).
OPT_IN = ("c_v",)
COMPARISONS = ("a_steps", "b", "d", "a")  # what (c) is compared with, per class
VISUAL_COMPARISONS = ("c", "d", "a_steps")  # what (c+v) is compared with


# --------------------------------------------------------------------------------------------------------------------
# The control
# --------------------------------------------------------------------------------------------------------------------


def read_vocabulary(path: str) -> list[dict]:
    """Candidate classes for the random control: ``[{"name": ..., "wnid": ...}]``.

    Formats: a TSV with a header holding ``wnid`` and ``words`` (or ``name``) columns, such as Tiny-ImageNet's
    ``classes.tsv`` (the first lemma is the name); or a text file with one class name per line.
    """
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not lines:
        raise ConfigError(f"vocabulary {path} is empty")
    header = lines[0].split("\t")
    if len(header) > 1 and ("wnid" in header or "name" in header or "words" in header):
        name_col = header.index("name") if "name" in header else header.index("words")
        wnid_col = header.index("wnid") if "wnid" in header else None
        out = []
        for line in lines[1:]:
            cells = line.split("\t")
            name = cells[name_col].split(",")[0].strip()
            out.append({"name": name, "wnid": cells[wnid_col] if wnid_col is not None else None})
        return out
    return [{"name": line.strip(), "wnid": None} for line in lines]


def random_control_manifest(
    manifest: dict, vocabulary: list[dict], seed: int = 0, fresh_only: bool = False
) -> tuple[dict, dict]:
    """The control neighbor manifest: the real one's bipartite graph, each auxiliary class swapped for a random class.

    Every target keeps its number of auxiliary classes and every auxiliary class its number of targets (its
    ``neighbor_of`` list); only *which* class it is changes. Candidates are the vocabulary minus the target classes
    (by WordNet id and by name); classes that are not among the real neighbors are drawn first, then the rest (on a
    small pool the control then mostly re-pairs the real auxiliary classes with other targets).

    With ``fresh_only`` the control is drawn only from classes that are nobody's neighbor, so (c) against (d) compares
    neighbors with other classes, not the same images re-paired; that needs a neighbor set no larger than the pool
    minus itself (e.g. one neighbor per target).

    Example:
        >>> control, stats = random_control_manifest(manifest, read_vocabulary("classes.tsv"), fresh_only=True)
        >>> stats["real_neighbor_classes"]
        0

    Returns:
        (control manifest, stats: auxiliary classes, how many are real neighbor classes, how many keep their real
        assignment, how many candidates were nobody's neighbor).

    Raises:
        ConfigError: fewer candidates than auxiliary classes (with ``fresh_only``: fewer that are nobody's neighbor).
    """
    targets = manifest.get("targets") or []
    target_keys = set()
    for t in targets:
        name = t["name"] if isinstance(t, dict) else str(t)
        target_keys.add(name.casefold())
        if isinstance(t, dict) and t.get("wnid"):
            target_keys.add(str(t["wnid"]).casefold())
    aux = manifest["auxiliary"]
    real = {(a.get("wnid") or a["name"]).casefold() for a in aux}
    seen, candidates = set(), []
    for c in vocabulary:
        key = (c.get("wnid") or c["name"]).casefold()
        if key in seen or key in target_keys or c["name"].casefold() in target_keys:
            continue
        seen.add(key)
        candidates.append(c)
    if len(candidates) < len(aux):
        raise ConfigError(
            f"the random control needs {len(aux)} candidate classes but the vocabulary has {len(candidates)} "
            "outside the target classes"
        )
    rng = np.random.default_rng(seed)
    fresh = [c for c in candidates if (c.get("wnid") or c["name"]).casefold() not in real]
    used = [c for c in candidates if (c.get("wnid") or c["name"]).casefold() in real]
    if fresh_only and len(fresh) < len(aux):
        raise ConfigError(
            f"control_fresh_only: the neighbor set uses {len(aux)} of the vocabulary's {len(candidates)} non-target "
            f"classes, so only {len(fresh)} are nobody's neighbor; use fewer neighbors per target (curate "
            "neighbors.k, ratios) or a larger control_vocabulary"
        )
    order = [fresh[i] for i in rng.permutation(len(fresh))] + [used[i] for i in rng.permutation(len(used))]
    chosen = order[: len(aux)]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    entries = []
    for entry, c in zip(aux, chosen):
        item = {"name": c["name"], "neighbor_of": list(entry["neighbor_of"]), "similarity": None, "distance": None}
        if c.get("wnid"):
            item["wnid"] = c["wnid"]
        entries.append(item)
    control = {**manifest, "backend": "random-control", "auxiliary": entries}
    control.pop("summary", None)
    key = lambda a: (a.get("wnid") or a["name"]).casefold()  # noqa: E731
    stats = {
        "aux_classes": len(entries),
        "real_neighbor_classes": sum(key(e) in real for e in entries),
        "same_assignment": sum(key(e) == key(a) for e, a in zip(entries, aux)),
        "fresh_candidates": len(fresh),
        "fresh_only": bool(fresh_only),
        "seed": seed,
    }
    return control, stats


# --------------------------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------------------------


def optimizer_steps(epoch_images: int, batch_size: int, epochs: float, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimizer steps the Trainer takes for ``epochs`` epochs of ``epoch_images`` images (last batch kept)."""
    batches = math.ceil(epoch_images / (batch_size * processes))
    per_epoch = max(batches // grad_accum, 1)
    return math.ceil(epochs * per_epoch)
