"""The ablation's runs: every variant x seed trained by :func:`neighbor_lt.train.run` in this process, and read back
through :class:`~neighbor_lt.run_folder.RunFolder`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from ..config_schema import ConfigError, save_resolved, write_yaml
from ..files import write_json_atomic
from ..metrics import ACCURACY_KEYS as GROUPS
from ..run_folder import RunFolder
from . import curation, sweep
from .config import AblationConfig, resolved_train_config
from .report import report
from .variants import VARIANTS, optimizer_steps

logger = logging.getLogger(__name__)
#: The ablation's own record of a run (its wall time), beside the run folder's files.
RUN_RECORD = "ablation_run.json"


class AblationRunsFailed(RuntimeError):
    """Some runs failed; the others and the report are kept, and rerunning the same command retries the failed ones."""


def run_training(argv: list[str]) -> None:
    """One training run, as ``recipes/train.py`` runs it: :func:`neighbor_lt.train.run` of these arguments."""
    from .. import train

    train.run(train.load_config(argv))


def steps_of_c(train_yaml: str, aux_dir: str) -> int:
    """Optimizer steps of (c): epochs x (target images + per-epoch auxiliary draws) / global batch."""
    from ..data import AuxiliaryCappedSampler, load_aux_dataset, load_target_dataset
    from ..train import load_config

    config = load_config(["--config", train_yaml])
    data_args, args = config.data, config.training
    target = load_target_dataset(data_args)
    aux = load_aux_dataset(aux_dir, data_args.aux_split)
    sampler = AuxiliaryCappedSampler(len(target["train"]), aux["label"], data_args.max_aux_per_class)
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    return optimizer_steps(
        len(sampler), args.per_device_train_batch_size, args.num_train_epochs, args.gradient_accumulation_steps,
        args.world_size,
    )  # fmt: skip


def read_run(run_dir: str, variant: str, seed: int) -> dict | None:
    """The record of a finished run (its accuracies, steps, per-class accuracy and groups); None when not finished."""
    folder = RunFolder(run_dir)
    result = folder.read_eval_results()
    if result is None:
        return None
    meta = {}
    if folder.has(RUN_RECORD):
        with open(folder.file(RUN_RECORD)) as f:
            meta = json.load(f)
    rows = folder.read_per_class() or []
    return {
        "variant": variant, "seed": seed, **{k: result.get(k) for k in GROUPS},
        **{f"train_{k}": result.get(f"train_{k}") for k in GROUPS},
        "train_steps": result.get("train_steps"), "train_images": result.get("train_images"),
        "wall_s": meta.get("wall_s", float("nan")), "split": result.get("split"),
        "per_class": [r["accuracy"] for r in rows], "groups": [r["group"] for r in rows],
        "names": [r["name"] for r in rows], "train_counts": [r["train_count"] for r in rows],
    }  # fmt: skip


def _plain(value):
    """``value`` as JSON gives it back (tuples as lists), so a summary's fields compare with this ablation's."""
    return json.loads(json.dumps(value))


def earlier_runs(config: AblationConfig, sets: dict, steps_c: int | None) -> dict[tuple[str, int], dict]:
    """The finished runs of the ``runs_from`` summaries, by ``(variant, seed)`` (the first file that has one wins),
    each with ``from`` (its file) and, where the summary lists its ``classes``, their names and groups.

    Raises:
        ConfigError: a file that is not an ablation summary, or one whose split, (c) steps or set statistics differ
            from this ablation's (its runs would not be comparable).
    """
    split = "development" if config.development else "evaluation"
    mine = {
        "split": split, "steps_of_c": steps_c, "neighbors": _plain(sets.get("manifest")),
        "control": _plain(sets.get("control")),
    }  # fmt: skip
    found = {}
    for path in config.runs_from:
        try:
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(f"runs_from: cannot read {path}: {err}") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("variants"), dict):
            raise ConfigError(f"runs_from: {path} is not an ablation summary.json (no 'variants' mapping)")
        for key, value in mine.items():
            if summary.get(key) != value:
                raise ConfigError(
                    f"runs_from: {path} has {key} {json.dumps(summary.get(key))}, this ablation "
                    f"{json.dumps(value)}; its runs are not comparable with these (drop it from runs_from)"
                )
        classes = summary.get("classes") or []
        for variant, entry in summary["variants"].items():
            for run in entry.get("runs", []):
                key = (variant, run.get("seed"))
                if key in found or variant not in VARIANTS:
                    continue
                record = {**run, "from": run.get("from", path)}
                if classes:
                    record.update(names=[c["name"] for c in classes], groups=[c["group"] for c in classes])
                found[key] = record
    check_classes(list(found.values()))  # before any training; the runs made here are checked after theirs
    return found


def check_classes(runs: list[dict]) -> None:
    """Every run scores the same classes: as many per-class accuracies, and the same names where both are known.

    Raises:
        ConfigError: a run (from ``runs_from`` or here) that scores other classes.
    """

    def where(r):
        return f"{r['variant']} seed {r['seed']} ({'from ' + r['from'] if r.get('from') else 'run here'})"

    first = runs[0] if runs else None
    named = next((r for r in runs if r.get("names")), None)
    for r in runs[1:]:
        if len(r["per_class"]) != len(first["per_class"]):
            raise ConfigError(
                f"{where(r)} has {len(r['per_class'])} per-class accuracies, {where(first)} "
                f"{len(first['per_class'])}: they score different classes"
            )
        if named is not None and r.get("names") and r["names"] != named["names"]:
            raise ConfigError(f"{where(r)} and {where(named)} score differently named classes")


def _line(i, total, r) -> str:
    groups = " ".join(f"{g.capitalize()} {100 * r[g]:.2f}" for g in GROUPS)
    train = f" | train {100 * r['train_overall']:.1f}" if r.get("train_overall") is not None else ""
    return (
        f"[{i}/{total}] {VARIANTS[r['variant']].label.split(' ')[0]} seed {r['seed']}: {groups}{train} | "
        f"{r['train_steps']} steps, {r['train_images']:,} images, {r['wall_s']:.0f} s"
    )


def train_runs(
    config: AblationConfig,
    train_yaml: str,
    sets: dict,
    steps_c: int | None,
    runs_dir: str | None = None,
    extra_args=(),
) -> tuple[list[dict], list[str]]:
    """Every variant x seed, seeds outermost (a run cut short still has whole seeds); a finished run is reused.
    Returns the run records and the failures (one failed run does not lose the others).

    Args:
        runs_dir: where the runs go (default ``<output_dir>/runs`` or ``runs-dev``).
        extra_args: training arguments added to every run (a sweep's ``--KEY VALUE``).
    """
    runs_dir = runs_dir or os.path.join(config.output_dir, "runs-dev" if config.development else "runs")
    plan = [(s, v) for s in config.seeds for v in config.variants]
    earlier = earlier_runs(config, sets, steps_c) if config.runs_from else {}
    runs, failed = [], []
    for i, (seed, name) in enumerate(plan, 1):
        variant = VARIANTS[name]
        run_dir = os.path.join(runs_dir, name, f"seed{seed}")
        result = read_run(run_dir, name, seed)
        if result is None and (name, seed) in earlier:
            result = earlier[(name, seed)]
            print(_line(i, len(plan), result) + f" (from {result['from']})", flush=True)
            runs.append(result)
            continue
        if result is None and config.report_only:
            print(f"[{i}/{len(plan)}] {variant.label}, seed {seed}: not run yet (report_only)", flush=True)
            continue
        if result is not None:
            print(_line(i, len(plan), result) + " (done before)", flush=True)
            runs.append(result)
            continue
        args = [
            "--config", train_yaml, "--output_dir", run_dir, "--seed", str(seed), "--loss", variant.loss,
            "--aux_dataset", sets[variant.aux] if variant.aux else "", "--report_train_accuracy", "true",
            "--overwrite_output_dir", "true",  # not in read_run's records: an earlier try of it is redone
        ]  # fmt: skip
        if variant.equal_steps:
            args += ["--max_steps", str(steps_c)]
        args += list(extra_args)
        print(f"[{i}/{len(plan)}] {variant.label}, seed {seed}: training -> {run_dir}", flush=True)
        t0 = time.time()
        try:
            run_training(args)
        except Exception as err:  # the rerun retries it
            logger.exception("run %s seed %d failed", name, seed)
            failed.append(f"{name} seed {seed}: {type(err).__name__}: {err}")
            continue
        write_json_atomic(RunFolder(run_dir).file(RUN_RECORD), {"wall_s": round(time.time() - t0, 1)}, indent=1)
        result = read_run(run_dir, name, seed)
        print(_line(i, len(plan), result), flush=True)
        runs.append(result)
    check_classes(runs)
    return runs, failed


def run(config: AblationConfig) -> dict:
    """The whole ablation: check the configs, curate the sets once (or take ``aux_datasets``), train every variant x
    seed, report; the summary (also written to ``summary.json``).

    Example:
        >>> run(parse_config(["--config", "recipes/tiny_imagenet_lt/ablate.yaml", "--seeds", "0"]))  # doctest: +SKIP

    Args:
        config: from :func:`neighbor_lt.ablation.config.parse_config`.

    Raises:
        AblationRunsFailed: some runs failed (after the report of the others).
    """
    from ..train import load_config

    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    wall = time.time()
    if config.sweep:
        sweep.parse_sweep(config.sweep)  # checked before any work
        config = dataclasses.replace(config, development=True)  # settings are chosen on the development split

    # configs, checked before any work
    train = resolved_train_config(config)
    train_yaml = write_yaml(os.path.join(out, "train.yaml"), train)
    load_config(["--config", train_yaml])
    save_resolved(os.path.join(out, "ablate.yaml"), config.resolved())

    # curation, once (every stage skips finished work)
    sets = curation.given_sets(config) if config.aux_datasets else curation.curate_sets(config, train, out)
    steps_c = steps_of_c(train_yaml, sets["neighbors"]) if "neighbors" in sets else None
    print(
        f"auxiliary sets ready: {sets.get('manifest')}; control {sets.get('control')}; (c) takes {steps_c} steps",
        flush=True,
    )

    if config.sweep:
        summary = sweep.run_sweep(config, train_yaml, sets, steps_c, train_runs)
        if summary["failed"]:
            raise AblationRunsFailed(
                f"{len(summary['failed'])} sweep runs failed ({'; '.join(summary['failed'])}); rerun to retry them"
            )
        return summary
    runs, failed = train_runs(config, train_yaml, sets, steps_c)
    summary = report(config, runs, sets, steps_c, time.time() - wall)
    if failed:
        total = len(config.seeds) * len(config.variants)
        raise AblationRunsFailed(
            f"{len(failed)} of {total} runs failed ({'; '.join(failed)}); rerun the same command to retry them"
        )
    return summary
