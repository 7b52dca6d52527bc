"""The ``rank`` stage of ``recipes/curate.py``: neighbors chosen by how confusable they look, not only by their names.

The paper's neighbors are classes a model confuses with the target in feature space; a name backend (an LLM, WordNet)
only guesses them. With ``neighbors.candidate_factor`` (e.g. 3) the neighbors stage keeps a wider, name-ranked
candidate list (``neighbors/candidates.json``); this stage then

1. fetches a small probe of each candidate's images (``probe_images``, e.g. 16) with the retrieve stage's own search
   backend and downloader (``retrieve:`` settings) into ``rank/probes/``; the retrieve stage later reuses those
   searches and images instead of fetching them again;
2. embeds the probes and the target training images with any HF image model (``model_name_or_path``: a Hub id, or a
   folder such as one written by ``recipes/train.py``);
3. scores every (target, candidate) pair two ways: ``prototype``, the cosine similarity of the target's prototype
   (mean training embedding) and the candidate's (mean probe embedding); ``confusion``, the share of the candidate's
   probe images whose nearest target prototype is this target;
4. keeps, per target, the top ``k x ratio`` by ``score`` (none below ``min_score``, even if a target ends up short),
   under ``neighbors.max_targets_per_aux``, and rewrites ``neighbors/neighbors.json`` in the format the later stages
   and the trainer read. Every target entry gets a ``ranking`` record: each candidate with its name-level source
   (backend, name rank, WordNet distance / similarity), probe count, both scores, kept or why not.

A target keeps its name-ranked neighbors (``ranking.status: name_ranked``, with the reason) when it cannot be ranked:
the embedder does not load, the probes cannot be fetched at all, the target has no training image, or none of its
candidates got a usable probe image. A candidate without probe images is dropped (it would get no auxiliary image
either) with that reason. Nothing is fetched or embedded twice: probe downloads resume from
``rank/probes/downloads.sqlite``, embeddings are cached in ``rank/embeddings-<model>.npz`` and the prototypes in
``rank/prototypes-<model>.npz``, so changing ``score`` or ``min_score`` costs nothing.

Outputs besides the manifest: ``rank/report.csv``, ``rank/report.md`` (per target, its candidates with name distance
and visual score) and ``rank/report.png`` (visual score against name distance, kept and dropped).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from neighbor_lt.configs import ConfigError, from_dict
from neighbor_lt.curate import CurateContext, StageError
from neighbor_lt.neighbors.confusability import SCORES, write_report
from neighbor_lt.neighbors.manifest import (
    CANDIDATES_NAME,
    MANIFEST_NAME,
    load_manifest,
    round_robin,
    save_manifest,
    summarize,
)

logger = logging.getLogger(__name__)

MAX_PROBE_IMAGES = 256


@dataclass
class RankArguments:
    """The ``rank:`` section of a curation YAML file (the search and download settings are the ``retrieve:`` ones)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Image embedder (required): any HF image model, a Hub id (facebook/dinov2-small) or a folder "
            "(offline: a model written by recipes/train.py on the target set)."
        },
    )
    pooling: str = field(default="cls", metadata={"help": "cls, mean or pooler."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "Torch device; CUDA when available."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model repository."})
    probe_images: int = field(
        default=16, metadata={"help": f"Probe images per candidate class (1..{MAX_PROBE_IMAGES}): the first by rank."}
    )
    score: str = field(default="prototype", metadata={"help": "What ranks the candidates: prototype or confusion."})
    min_score: float | None = field(
        default=None,
        metadata={"help": "Drop a candidate scoring below this, even if its target ends up short (null: none)."},
    )
    train_split: str = field(default="train", metadata={"help": "Target split the prototypes come from."})
    image_column: str = field(default="image", metadata={"help": "Image column of the target set."})
    label_column: str = field(default="label", metadata={"help": "Label column of the target set."})

    def __post_init__(self):
        problems = []
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path.strip():
            problems.append("model_name_or_path is required (a Hub id or a model folder)")
        if self.pooling not in ("cls", "mean", "pooler"):
            problems.append(f"pooling must be cls, mean or pooler (got {self.pooling!r})")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be a positive integer (got {self.batch_size!r})")
        if not _is_int(self.probe_images) or not 1 <= self.probe_images <= MAX_PROBE_IMAGES:
            problems.append(f"probe_images must be an integer in [1, {MAX_PROBE_IMAGES}] (got {self.probe_images!r})")
        if self.score not in SCORES:
            problems.append(f"score must be one of {', '.join(SCORES)} (got {self.score!r})")
        ok = self.min_score is None or (
            isinstance(self.min_score, (int, float)) and not isinstance(self.min_score, bool)
        )
        if not ok or (self.min_score is not None and not math.isfinite(self.min_score)):
            problems.append(f"min_score must be a number or null (got {self.min_score!r})")
        if problems:
            raise ConfigError("invalid rank settings: " + "; ".join(problems))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbedderError(RuntimeError):
    """The image embedder could not be loaded."""


def load_embedder(args: RankArguments):
    """The :class:`~neighbor_lt.retrieval.filters.ImageEmbedder` of the settings (tests swap in a fake)."""
    from neighbor_lt.retrieval.filters import ImageEmbedder

    return ImageEmbedder(args.model_name_or_path, args.pooling, args.batch_size, args.device, args.trust_remote_code)


class _LazyEmbedder:
    """Loads the model on the first image to embed: a rerun with everything cached loads nothing."""

    def __init__(self, args: RankArguments):
        from neighbor_lt.retrieval.filters import embedding_key

        self.args, self.key, self._model = args, embedding_key(args.model_name_or_path, args.pooling), None

    def embed(self, images, total=None, desc="embed"):
        if self._model is None:
            try:
                self._model = load_embedder(self.args)
            except Exception as e:  # a missing folder, no network for a Hub id, a model that is not an image model
                reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                raise EmbedderError(
                    f"the embedder {self.args.model_name_or_path!r} could not be loaded ({reason})"
                ) from e
        return self._model.embed(images, total, desc)


# ---- probes --------------------------------------------------------------------------------------------------------
def fetch_probes(candidates: dict, args: RankArguments, context: CurateContext, probe_dir: str):
    """Search every candidate class with the ``retrieve:`` backend and store its first ``probe_images`` images.

    Returns:
        ``(probes, problems)``: auxiliary name -> its usable probe records (of ``downloads.sqlite``), and
        auxiliary name -> why it has none.

    Raises:
        StageError: the search backend cannot start, or no candidate class has any search result.
    """
    from neighbor_lt.retrieval.download import DownloadConfig, Downloader, open_downloads
    from neighbor_lt.retrieval.search import search_backend_class
    from neighbor_lt.retrieval.stages import search_all, search_backend
    from neighbor_lt.secrets import redact

    retrieve = context.arguments("retrieve")
    if retrieve.img2dataset_dir:
        raise StageError("rank: retrieve.img2dataset_dir is set: probes need a search backend (pool or web)")
    os.makedirs(probe_dir, exist_ok=True)
    aux = candidates["auxiliary"]
    # a pool search is not cached and its first n hits are the first n of a longer one: ask only the probe; a web
    # search is cached at the retrieve stage's length, so the retrieve stage reuses it
    cached = search_backend_class(retrieve.backend).cacheable
    asked = retrieve if cached else dataclasses.replace(retrieve, max_results_per_query=args.probe_images)
    backend = search_backend(retrieve, candidates, context)
    hits, _ = search_all(backend, asked, aux, probe_dir)
    chosen: dict[str, list] = {}
    for hit in sorted(hits, key=lambda h: h.rank):
        if len(chosen.setdefault(hit.aux_name, [])) < args.probe_images:
            chosen[hit.aux_name].append(hit)
    download = from_dict(DownloadConfig, retrieve.download, "retrieve.download")
    downloader = Downloader(probe_dir, download)
    try:
        downloader.run([h for group in chosen.values() for h in group], desc="probe images")
    finally:
        downloader.close()
    probes, problems = {}, {}
    store = open_downloads(probe_dir)
    for entry in aux:
        name = entry["name"]
        group = chosen.get(name, [])
        keys = [f"{name}\t{h.image_url if h.image_bytes is not None else redact(h.image_url)}" for h in group]
        found = list(store.get_many(keys).values())
        probes[name] = [r for r in found if r["outcome"] == "ok"]
        if not group:
            problems[name] = "no search result (not in the pool, or its search failed: see the log)"
        elif not probes[name]:
            outcomes = Counter(r["outcome"] for r in found) or Counter({"not fetched": len(group)})
            problems[name] = f"none of its {len(group)} probe image(s) usable ({dict(outcomes)})"
    store.close()
    return probes, problems


def probe_embeddings(embedder, probes: dict, probe_dir: str, path: str) -> dict[str, np.ndarray]:
    """Unit embeddings of every probe image, cached by image key in ``path`` (only new images are embedded)."""
    from PIL import Image

    cached: dict[str, np.ndarray] = {}
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["model"]) == embedder.key:
                cached = dict(zip(saved["keys"].tolist(), saved["array"]))
    todo = [r for records in probes.values() for r in records if r["key"] not in cached]
    if todo:
        images = (Image.open(os.path.join(probe_dir, r["path"])) for r in todo)
        array = embedder.embed(images, len(todo), desc="embed probe images")
        cached.update(zip((r["key"] for r in todo), array))
        tmp = path + ".tmp.npz"
        np.savez(tmp, model=np.array(embedder.key), keys=np.array(list(cached)), array=np.stack(list(cached.values())))
        os.replace(tmp, path)
    logger.info(
        "rank: %d probe image(s) embedded now, %d from the cache",
        len(todo),
        sum(map(len, probes.values())) - len(todo),
    )
    return {name: np.stack([cached[r["key"]] for r in records]) for name, records in probes.items() if records}


def pair_scores(prototypes: np.ndarray, embeddings: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Both visual scores of every candidate against every target: auxiliary name -> {score name: (targets,)}.

    Example:
        >>> prototypes = np.eye(2, dtype=np.float32)  # two targets
        >>> scores = pair_scores(prototypes, {"koi": np.array([[1.0, 0.0], [0.8, 0.6]], np.float32)})
        >>> scores["koi"]["confusion"].tolist(), scores["koi"]["prototype"].round(3).tolist()
        ([1.0, 0.0], [0.949, 0.316])
    """
    present = np.linalg.norm(prototypes, axis=1) > 0  # a target with no training image is nobody's nearest
    out = {}
    for name, emb in embeddings.items():
        mean = emb.mean(axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        sims = emb @ prototypes.T
        sims[:, ~present] = -np.inf
        nearest = sims.argmax(axis=1)
        out[name] = {
            "prototype": prototypes @ mean,
            "confusion": np.bincount(nearest, minlength=len(prototypes)) / len(emb),
        }
    return out


# ---- choice ------------------------------------------------------------------------------------------------------
def _round(value) -> float | None:
    return None if value is None else round(float(value), 4)


def _rank_entry(i: int, entry: dict, args, visual: dict, present: dict, problem, probe_counts, probe_problems):
    """One target's candidates as ranking rows, its status, and the order they are kept in: (order, wanted, rows)."""
    n = entry.pop("num_neighbors", entry["num_requested"])
    rows = []
    for rank, s in enumerate(entry["scores"], 1):
        row = {
            "name": s["name"], "wnid": s.get("wnid"), "backend": entry.get("backend"), "name_rank": rank,
            "distance": s.get("distance"), "name_similarity": s.get("similarity"),
            "probe_images": probe_counts.get(s["name"], 0), "prototype": None, "confusion": None, "score": None,
            "visual_rank": None, "kept": False, "reason": None,
        }  # fmt: skip
        scores = visual.get(s["name"])
        if problem is None and scores is not None and present.get(entry["name"]):
            row["prototype"] = _round(scores["prototype"][i])
            row["confusion"] = _round(scores["confusion"][i])
            row["score"] = row[args.score]
        rows.append(row)
    status, reason = "ranked", None
    if problem is not None:
        status, reason = "name_ranked", problem
    elif rows and not present.get(entry["name"]):
        status, reason = "name_ranked", "the target has no training image (no prototype)"
    elif rows and all(r["score"] is None for r in rows):
        first = probe_problems.get(rows[0]["name"], "no usable probe image")
        status, reason = (
            "name_ranked",
            f"no candidate has a usable probe image (e.g. {rows[0]['name']!r}: {first})",
        )
    if status == "ranked":
        order = []
        for r in rows:
            if r["score"] is None:
                r["reason"] = f"no probe images: {probe_problems.get(r['name'], 'none usable')}"
            elif args.min_score is not None and r["score"] < args.min_score:
                r["reason"] = f"{args.score} score {r['score']} below min_score {args.min_score}"
            else:
                order.append(r)
        order.sort(key=lambda r: (-r["score"], -(r["prototype"] or 0.0), r["name_rank"]))
        for position, r in enumerate(order, 1):
            r["visual_rank"] = position
    else:
        order = list(rows)
    entry["num_requested"] = n
    entry["ranking"] = {"status": status, "reason": reason, "score": args.score, "candidates": rows}
    return order, n, rows


def _kept_auxiliary(auxiliary: list[dict], pairs: set, rows_of: list[list[dict]], index: dict) -> list[dict]:
    """The auxiliary records of the kept (target, auxiliary) pairs, with their visual scores."""
    aux = []
    for a in auxiliary:
        keep = [j for j, t in enumerate(a["neighbor_of"]) if (t, a["name"]) in pairs]
        if not keep:
            continue
        row = {t: r for t in a["neighbor_of"] for r in rows_of[index[t]] if r["name"] == a["name"]}
        a = {
            **a, **{key: [a[key][j] for j in keep] for key in ("neighbor_of", "similarity", "distance")},
        }  # fmt: skip
        a["prototype"] = [row[t]["prototype"] for t in a["neighbor_of"]]
        a["confusion"] = [row[t]["confusion"] for t in a["neighbor_of"]]
        aux.append(a)
    return aux


def choose(candidates: dict, args: RankArguments, visual: dict, present: dict[str, bool], problem: str | None,
           probe_counts: dict[str, int], probe_problems: dict[str, str], header: dict) -> dict:  # fmt: skip
    """The final manifest: per target the top ``num_neighbors`` candidates by visual score (or by name rank when the
    target cannot be ranked), with a ``ranking`` record of every candidate.

    Args:
        candidates: ``neighbors/candidates.json``.
        visual: auxiliary name -> :func:`pair_scores` of it (empty when the ranking could not run).
        present: target name -> whether it has a prototype.
        problem: why the ranking could not run at all (every target keeps its name-ranked neighbors), or None.
        probe_counts / probe_problems: usable probe images per candidate, and why a candidate has none.
        header: the manifest's top-level ``ranking`` record (settings).
    """
    manifest = copy.deepcopy(candidates)
    entries = manifest["targets"]
    index = {e["name"]: i for i, e in enumerate(entries)}
    orders, wanted, rows_of = [], [], []
    for i, entry in enumerate(entries):
        order, n, rows = _rank_entry(i, entry, args, visual, present, problem, probe_counts, probe_problems)
        orders.append(order)
        wanted.append(n)
        rows_of.append(rows)

    cap = (candidates.get("settings") or {}).get("max_targets_per_aux")
    kept, capped = round_robin([(e["count"], e["index"]) for e in entries], orders, wanted, lambda r: r["name"], cap)
    for _, r in capped:
        r["reason"] = f"cap: auxiliary class already serves {cap} targets"
    pairs = set()
    for i, entry in enumerate(entries):
        by = "visual score" if entry["ranking"]["status"] == "ranked" else "name rank"
        for r in kept[i]:
            r["kept"], r["reason"] = True, None
            pairs.add((entry["name"], r["name"]))
        for r in orders[i]:
            if not r["kept"] and r["reason"] is None:
                r["reason"] = f"beyond the {wanted[i]} kept by {by}"
        old = {s["name"]: s for s in entry["scores"]}
        entry["kept"] = [r["name"] for r in kept[i]]
        entry["scores"] = [
            {**old[r["name"]], "prototype": r["prototype"], "confusion": r["confusion"], "visual_rank": r["visual_rank"]}
            for r in kept[i]
        ]  # fmt: skip
        entry["got"] = len(entry["kept"])

    aux = _kept_auxiliary(manifest["auxiliary"], pairs, rows_of, index)
    manifest["auxiliary"] = aux
    manifest["summary"] = summarize(entries, aux)
    statuses = Counter(e["ranking"]["status"] for e in entries if e["ranking"]["candidates"])
    scored = [r for rows in rows_of for r in rows if r["score"] is not None]
    manifest["ranking"] = {
        **header, "status": "ran" if problem is None else "not_run", "reason": problem,
        "targets_ranked": statuses.get("ranked", 0), "targets_name_ranked": statuses.get("name_ranked", 0),
        "pairs": sum(map(len, rows_of)), "pairs_scored": len(scored), "pairs_kept": len(pairs),
        "candidates_without_probes": sorted(probe_problems),
    }  # fmt: skip
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return manifest


# ---- the stage ---------------------------------------------------------------------------------------------------
def run(section: RankArguments | dict, context: CurateContext) -> dict:
    """Rank every target's name-ranked candidates by how confusable they look; rewrite ``neighbors/neighbors.json``.

    Example:
        >>> run({"model_name_or_path": "facebook/dinov2-small", "probe_images": 16}, context)  # doctest: +SKIP

    Args:
        section: the ``rank:`` YAML section (:class:`RankArguments` keys).
        context: ``output_dir`` (``neighbors/candidates.json`` from the neighbors stage), the target set (its
            training images give the prototypes) and the ``retrieve:`` settings (probe search and download).

    Returns:
        The final manifest (its ``ranking`` record says what ran).

    Raises:
        StageError: no ``neighbors/candidates.json`` (run the neighbors stage first). Every other problem (the
            embedder does not load, the probes cannot be fetched, a target without training images, a candidate
            without probe images) is logged and recorded: the targets concerned keep their name-ranked neighbors.
    """
    from neighbor_lt.retrieval.filters import cached_array, compute_prototypes, dataset_key
    from neighbor_lt.retrieval.stages import PROBE_DIR

    args = section if isinstance(section, RankArguments) else from_dict(RankArguments, section, "rank")
    neighbors_dir = os.path.join(context.output_dir, "neighbors")
    candidates_path = os.path.join(neighbors_dir, CANDIDATES_NAME)
    if not os.path.exists(candidates_path):
        raise StageError(
            f"rank: {candidates_path} not found: run the neighbors stage first (with neighbors.candidate_factor, "
            "e.g. 3, for candidates to choose from)"
        )
    candidates = load_manifest(candidates_path)
    factor = (candidates.get("settings") or {}).get("candidate_factor", 1)
    if factor == 1:
        logger.warning("rank: neighbors.candidate_factor is 1: the ranking can reorder and drop (min_score) but not "
                       "choose other neighbors; set it to 3 and rerun the neighbors stage")  # fmt: skip
    out = context.stage_dir("rank")
    probe_dir = os.path.join(out, PROBE_DIR)
    embedder = _LazyEmbedder(args)
    scorer = embedder.key.replace(os.sep, "_").replace("|", "-")[-60:]
    names = [e["name"] for e in candidates["targets"]]
    problem, visual, present, counts, problems = None, {}, {}, {}, {}
    try:
        probes, problems = fetch_probes(candidates, args, context, probe_dir)
        counts = {name: len(records) for name, records in probes.items()}
        for name, why in problems.items():
            logger.warning("rank: candidate %r has no probe image: %s", name, why)
        target = context.target
        if args.train_split not in target:
            raise StageError(f"rank: the target set has no {args.train_split!r} split (rank.train_split)")
        train = target[args.train_split]
        labels = list(train.features[args.label_column].names)
        prototypes = cached_array(
            os.path.join(out, f"prototypes-{scorer}.npz"),
            dataset_key(train, embedder.key),
            lambda: compute_prototypes(embedder, train, len(labels), args.image_column, args.label_column),
        )
        by_label = dict(zip(labels, prototypes))
        dim = prototypes.shape[1]
        prototypes = np.stack([by_label.get(n, np.zeros(dim, np.float32)) for n in names])  # manifest order
        present = {n: bool(np.linalg.norm(p) > 0) for n, p in zip(names, prototypes)}
        embeddings = probe_embeddings(embedder, probes, probe_dir, os.path.join(out, f"embeddings-{scorer}.npz"))
        visual = pair_scores(prototypes, embeddings)
    except KeyboardInterrupt:
        raise
    except (StageError, EmbedderError, ConfigError) as e:
        problem = " ".join(str(e).split())
    except Exception as e:  # an unreadable probe image, a model that does not take images: never a crash
        logger.debug("rank failed", exc_info=True)
        problem = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    if problem is not None:
        logger.error("rank: %s; every target keeps its name-ranked neighbors (rerun the stage to retry)", problem)
    header = {
        "model": args.model_name_or_path, "pooling": args.pooling, "score": args.score, "min_score": args.min_score,
        "probe_images": args.probe_images, "candidate_factor": factor,
    }  # fmt: skip
    manifest = choose(candidates, args, visual, present, problem, counts, problems, header)
    path = os.path.join(neighbors_dir, MANIFEST_NAME)
    if not save_manifest(manifest, path):
        logger.info("manifest unchanged: %s", path)
    paths = write_report(manifest, out)
    r = manifest["ranking"]
    logger.info(
        "rank (%s): %d target(s) ranked visually, %d kept their name-ranked neighbors; %d of %d pairs scored, %d kept; "
        "%d candidate(s) without probe images -> %s; report %s",
        args.score, r["targets_ranked"], r["targets_name_ranked"], r["pairs_scored"], r["pairs"], r["pairs_kept"],
        len(r["candidates_without_probes"]), path, paths["md"],
    )  # fmt: skip
    return manifest


__all__ = ["RankArguments", "choose", "pair_scores", "run"]
