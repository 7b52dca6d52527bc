"""The ablation's auxiliary sets: the real neighbor set, the random-class control and (opt-in) the visually ranked set,
each curated in this process by :func:`neighbor_lt.curate.run`; or sets curated elsewhere (``aux_datasets``)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import logging
import os
import time
from collections import Counter

import numpy as np

from ..config_schema import write_yaml
from ..neighbors.manifest import default_manifest_path, find_manifest, load_manifest, save_manifest
from .config import AblationConfig, resolved_curate_config
from .variants import VARIANTS, random_control_manifest, read_vocabulary

logger = logging.getLogger(__name__)

CURATE_STAGES = ("neighbors", "retrieve", "filter", "build")
#: The summary key of each set's statistics.
STATS_KEYS = {"neighbors": "manifest", "random": "control", "visual": "visual_manifest"}


@contextlib.contextmanager
def curation_lock(folder: str):
    """Hold ``<folder>/.curate.lock`` exclusively: ablations started side by side (other variants, other seeds) on
    one output folder curate it one at a time, and the later ones find it up to date (two curations of one folder at
    once overwrote each other's files).

    Example:
        >>> with curation_lock("outputs/ablate/curate/neighbors"):  # doctest: +SKIP
        ...     run_curate(...)
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".curate.lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is curating %s: waiting for it to finish", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_curate(config_path: str, stages, log_path: str) -> None:
    """The curation of ``config_path`` (``stages`` in pipeline order), in this process; its log lines also go to
    ``log_path``.

    Raises:
        RuntimeError: a stage failed (its name, the reason and the log file).
        ConfigError: the curation config is wrong; nothing ran.
    """
    from .. import curate
    from ..secrets import install_log_redaction

    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ neighbor-lt curate --config {config_path} --stages {' '.join(stages)}\n")
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    install_log_redaction()  # API keys and URL credentials never reach the file
    try:
        with curation_lock(os.path.dirname(os.path.abspath(config_path))):
            curate.run(curate.load_config(config_path, stages=list(stages)))
    except curate.StageError as err:
        if isinstance(err, curate.ConfigError):  # a setting to fix (a rejected API key): one line, exit status 2
            raise
        raise RuntimeError(f"curation stage {err.stage} failed: {err}; see {log_path}") from err
    finally:
        root.removeHandler(handler)
        handler.close()


def manifest_stats(manifest: dict) -> dict:
    """Auxiliary classes, (target, auxiliary) pairs, targets with neighbors and the WordNet distances of a manifest."""
    aux = manifest["auxiliary"]
    dist = [d for a in aux for d in (a.get("distance") or []) if d is not None]
    per_target: dict[str, int] = {}
    for a in aux:
        for t in a["neighbor_of"]:
            per_target[t] = per_target.get(t, 0) + 1
    out = {"aux_classes": len(aux), "pairs": sum(per_target.values()), "targets_with_neighbors": len(per_target)}
    if dist:
        out.update(distance_mean=round(float(np.mean(dist)), 2), distance_median=float(np.median(dist)))
    return out


def images_per_class(aux_dir: str) -> dict:
    """``{"classes", "min", "max"}`` images per class of a built auxiliary set (its label column only)."""
    from ..data import load_aux_dataset

    counts = list(Counter(load_aux_dataset(aux_dir, "train")["label"]).values()) or [0]
    return {"classes": len(counts) if counts != [0] else 0, "min": int(min(counts)), "max": int(max(counts))}


def given_sets(config: AblationConfig) -> dict:
    """The auxiliary sets of ``aux_datasets`` (curated elsewhere) in the shape :func:`curate_sets` returns; the
    statistics come from a ``neighbors.json`` found beside each set, when there is one."""
    sets = {}
    for name, path in config.aux_datasets.items():
        sets[name] = path
        manifest_path = find_manifest(path)
        stats = {"aux_dataset": path}
        if manifest_path:
            stats.update(manifest_stats(load_manifest(manifest_path)), manifest=manifest_path)
        sets[STATS_KEYS[name]] = stats
    logger.info("curation skipped (aux_datasets): %s", config.aux_datasets)
    return sets


def curate_sets(config: AblationConfig, train: dict, out: str) -> dict:
    """The neighbor set and the random control, curated; returns their aux_dataset folders and the control stats."""
    real_dir, control_dir = os.path.join(out, "curate", "neighbors"), os.path.join(out, "curate", "random")
    real_cfg = resolved_curate_config(config, train, real_dir)
    real_yaml = write_yaml(os.path.join(real_dir, "curate.yaml"), real_cfg)
    t0 = time.time()
    run_curate(real_yaml, CURATE_STAGES, os.path.join(real_dir, "curate.log"))
    manifest = load_manifest(default_manifest_path(real_dir))
    vocab_path = config.control_vocabulary or (real_cfg.get("neighbors") or {}).get("vocabulary")
    if vocab_path:
        vocabulary = read_vocabulary(vocab_path)
    else:  # no vocabulary: re-pair the real auxiliary classes with random targets
        vocabulary = [{"name": a["name"], "wnid": a.get("wnid")} for a in manifest["auxiliary"]]
    control, stats = random_control_manifest(
        manifest, vocabulary, seed=config.control_seed, fresh_only=bool(config.control_fresh_only)
    )
    stats["vocabulary"] = vocab_path or "the real auxiliary classes (re-paired)"
    control_path = default_manifest_path(control_dir)
    if not os.path.exists(control_path):
        save_manifest(control, control_path)
    control_yaml = write_yaml(
        os.path.join(control_dir, "curate.yaml"), resolved_curate_config(config, train, control_dir)
    )
    run_curate(control_yaml, CURATE_STAGES[1:], os.path.join(control_dir, "curate.log"))
    sets = {
        "neighbors": os.path.join(real_dir, "aux_dataset"),
        "random": os.path.join(control_dir, "aux_dataset"),
        "control": stats,
        "manifest": manifest_stats(manifest),
    }
    stats["images_per_class"] = {k: images_per_class(sets[k]) for k in ("neighbors", "random")}
    if stats["images_per_class"]["neighbors"] != stats["images_per_class"]["random"]:
        logger.warning("the control's images per class differ from the neighbor set's: %s", stats["images_per_class"])
    if any(VARIANTS[v].aux == "visual" for v in config.variants):
        sets.update(curate_visual_set(config, train, out))
    logger.info("curation done in %.0f s; control: %s", time.time() - t0, stats)
    return sets


def curate_visual_set(config: AblationConfig, train: dict, out: str) -> dict:
    """The (c+v) set: the neighbor set's curation with the ``visual`` overrides and the rank stage (curate/visual)."""
    visual_dir = os.path.join(out, "curate", "visual")
    curate = copy.deepcopy(config.curate)
    visual = copy.deepcopy(config.visual)
    visual.setdefault("neighbors", {}).setdefault("candidate_factor", 3)
    for section, values in visual.items():
        curate[section] = {**(curate.get(section) or {}), **(values or {})}
    overrides = dataclasses.replace(config, curate=curate)
    visual_yaml = write_yaml(
        os.path.join(visual_dir, "curate.yaml"), resolved_curate_config(overrides, train, visual_dir)
    )
    stages = (CURATE_STAGES[0], "rank", *CURATE_STAGES[1:])
    run_curate(visual_yaml, stages, os.path.join(visual_dir, "curate.log"))
    manifest = load_manifest(default_manifest_path(visual_dir))
    return {"visual": os.path.join(visual_dir, "aux_dataset"), "visual_manifest": manifest_stats(manifest)}
