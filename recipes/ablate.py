"""Do neighbors help on YOUR data? Curate once, then train every variant x seed with the real recipe, and report.

Usage:
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml --seeds 0 --variants a c   # a subset
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml --development true          # dev split
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml --report_only true         # table so far
    python recipes/ablate.py --config my_ablate.yaml --train.num_train_epochs 10 --curate.neighbors.k 3
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml --variants c_v \
        --visual.rank.model_name_or_path outputs/tiny_imagenet_lt/ablate/runs/a/seed0   # (c+v), opt-in
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml --variants a a_steps c \
        --aux_datasets.neighbors outputs/tiny_imagenet_lt/ablate/curate/neighbors/aux_dataset   # curated already

What it does, all through the product:
1. Curation, once: ``recipes/curate.py`` (neighbors -> retrieve -> filter -> build) for the real neighbor set, and a
   random-class control with the same bipartite shape (every target keeps its number of auxiliary classes, every
   auxiliary class its number of targets) through the same retrieve / filter / build stages. Curated elsewhere
   already (e.g. on a machine without the image pool or WordNet): ``aux_datasets: {neighbors: DIR, random: DIR,
   visual: DIR}`` names the build stage's ``aux_dataset`` folders (or their Parquet files) and curation is skipped;
   each variant's set must be given (``a_steps`` needs ``neighbors`` for its step count), and the report's neighbor
   statistics come from the ``neighbors.json`` of the curation layout beside each folder
   (``<dir>/../neighbors/neighbors.json``, or a ``neighbors.json`` in or beside it), left out when there is none.
2. Every variant x seed by calling ``recipes/train.py``'s ``main()`` (the Trainer, data path, masking and
   evaluation users run): (a) balanced softmax, target only; (a=) the same for as many optimizer steps as (c);
   (b) auxiliary classes merged, balanced softmax (eq. 3); (c) neighbor silencing + mask (ours); (d) random
   auxiliary classes, as (c). Seeds are the outer loop, so a run cut short still has whole seeds.
3. The report: mean +- sd per group, train vs evaluation accuracy of every run (which regime it is in), a paired
   per-class test of (c) against (a=), (b), (d) and (a) (sign counts and Wilcoxon p), a chart, ``summary.json``,
   and optionally a section appended to a results file.

Resumable: a finished run (its ``eval_results.json``) is skipped; curation stages skip finished work. Any key can be
overridden on the command line: top-level keys (``--seeds 0 1 2``), train-recipe keys (``--train.KEY VALUE``,
including the data files and the class-subset seed ``--train.lt_seed``) and curation keys
(``--curate.SECTION.KEY VALUE``). The curation target set is always the training config's, so one override changes
both. ``--development true`` evaluates on a development split (images of the target classes the long-tail subsample
left out) to choose settings; keep the evaluation split for the final table.
"""

from __future__ import annotations

import copy
import datetime
import glob
import importlib.util
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
import yaml

from neighbor_lt import ablation
from neighbor_lt.configs import (
    ConfigError,
    DataArguments,
    ModelArguments,
    NeighborLTTrainingArguments,
    parse_args,
    pop_config_path,
    read_yaml_mapping,
)
from neighbor_lt.files import write_json_atomic

logger = logging.getLogger("ablate")
RECIPES = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = {
    "output_dir": None,  # everything goes here: curate/, runs/ (or runs-dev/), summary.json, ablation.png
    "train_config": None,  # the train recipe YAML every run starts from
    "train": {},  # overrides of train-recipe keys, for every run
    "curate_config": None,  # the curate recipe YAML (its target section is replaced by the train config's data keys)
    # Curated already, elsewhere: {neighbors: DIR, random: DIR, visual: DIR}, the `aux_dataset` folders of the curate
    # recipe's build stage (or Parquet files); when set, curation is skipped and curate_config / curate / visual /
    # control_* are not used. Only the sets the variants need: b, c and a_steps need neighbors, d random, c_v visual.
    "aux_datasets": {},
    "curate": {},  # overrides: {section: {key: value}}
    # (c+v) only: curate overrides of the visually ranked set, on top of `curate`: {rank: {model_name_or_path: ...}}
    # (required), neighbors.candidate_factor 3 unless set
    "visual": {},
    "variants": ["a", "c", "a_steps", "b", "d"],
    "seeds": [0, 1, 2],
    "control_seed": 0,  # seed of the random-class control
    "control_vocabulary": None,  # candidate classes of the control; default: the neighbors section's vocabulary
    "development": False,  # evaluate on a development split (heldout_per_class images per class), not eval_files
    "heldout_per_class": 50,
    "figure": None,  # default <output_dir>/ablation[-dev].png
    "results_md": None,  # append the report to this Markdown file (e.g. benchmarks/RESULTS.md)
    "title": "ablation",
    "report_only": False,  # report the finished runs, train nothing (e.g. while other processes run other seeds)
}
# DataArguments keys that define the target set: shared by the train runs and the curation's `target` section.
TARGET_KEYS = (
    "dataset_name", "dataset_config_name", "train_files", "eval_files", "train_split", "eval_split", "image_column",
    "label_column", "lt_train_list", "lt_eval_list", "lt_image_root", "lt_class_names", "num_classes",
    "imbalance_factor", "lt_max_per_class", "lt_seed",
)  # fmt: skip
CURATE_STAGES = ("neighbors", "retrieve", "filter", "build")


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------
def _set_dotted(config: dict, key: str, value) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{key}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_config(argv: list[str]) -> dict:
    """The YAML of ``--config`` with ``--key value`` / ``--section.key value`` overrides; unknown top-level keys fail."""
    argv = list(argv)
    path = pop_config_path(
        argv, required="--config needs the ablation YAML, e.g. recipes/tiny_imagenet_lt/ablate.yaml"
    )
    loaded = read_yaml_mapping(path)
    config = copy.deepcopy(DEFAULTS)
    config.update(loaded)
    overrides: list[tuple[str, list[str]]] = []
    for token in argv:
        if token.startswith("--"):
            overrides.append((token[2:], []))
        elif overrides:
            overrides[-1][1].append(token)
        else:
            raise ConfigError(f"unexpected argument {token!r}: overrides are --key value")
    for key, values in overrides:
        if not values:
            raise ConfigError(f"--{key} needs a value")
        parsed = [yaml.safe_load(v) for v in values]
        value = parsed[0] if len(parsed) == 1 and key.split(".")[0] not in ("seeds", "variants") else parsed
        _set_dotted(config, key, value)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; known: {sorted(DEFAULTS)} (train keys go under train.)")
    given = check_aux_datasets(config)
    for key in ("output_dir", "train_config") if given else ("output_dir", "train_config", "curate_config"):
        if not config[key]:
            raise ConfigError(f"{path} must set {key}")
    bad = [v for v in config["variants"] if v not in ablation.VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; choose from {list(ablation.VARIANTS)}")
    if given:
        needs = {v: ablation.VARIANTS[v].aux or ("neighbors" if ablation.VARIANTS[v].equal_steps else None)
                 for v in config["variants"]}  # fmt: skip
        missing = {v: s for v, s in needs.items() if s and s not in given}
        if missing:
            raise ConfigError(
                "aux_datasets skips curation, so every variant's set must be given: "
                + "; ".join(f"variant {v} needs aux_datasets.{s}" for v, s in missing.items())
                + f" (given: {sorted(given) or 'none'})"
            )
    elif "c_v" in config["variants"] and not ((config["visual"] or {}).get("rank") or {}).get("model_name_or_path"):
        raise ConfigError(
            "variant c_v needs visual.rank.model_name_or_path: the image model that ranks the candidates (a Hub id, "
            "or a folder from recipes/train.py, e.g. the (a) run of a first pass with --variants a)"
        )
    if not config["seeds"] or not all(isinstance(s, int) for s in config["seeds"]):
        raise ConfigError(f"seeds must be a list of integers, got {config['seeds']!r}")
    config["config_path"] = path
    return config


AUX_SETS = ("neighbors", "random", "visual")


def check_aux_datasets(config: dict) -> dict:
    """The ``aux_datasets`` mapping (curated elsewhere), checked: known set names, paths that exist."""
    given = config["aux_datasets"]
    if given is None:
        given = config["aux_datasets"] = {}
    if not isinstance(given, dict):
        raise ConfigError(
            f"aux_datasets must be a mapping {{neighbors: DIR, random: DIR, visual: DIR}}, got {given!r}"
        )
    unknown = sorted(set(given) - set(AUX_SETS))
    if unknown:
        raise ConfigError(f"aux_datasets: unknown set(s) {unknown}; known: {list(AUX_SETS)}")
    for name, path in given.items():
        if not path or not isinstance(path, str):
            raise ConfigError(f"aux_datasets.{name} must be a path, got {path!r}")
        if not (os.path.exists(path) or (any(ch in path for ch in "*?[") and glob.glob(path))):
            raise ConfigError(
                f"aux_datasets.{name}: {path} does not exist (an aux_dataset folder of the curate recipe's build "
                "stage, or its Parquet files)"
            )
    return given


def find_manifest(aux_path: str) -> str | None:
    """The ``neighbors.json`` of an auxiliary set curated elsewhere, if one can be found next to it."""
    folder = aux_path if os.path.isdir(aux_path) else os.path.dirname(aux_path)
    folder = os.path.normpath(folder)
    parents = [os.path.dirname(folder)]
    if os.path.basename(folder) == "data":  # <set>/aux_dataset/data/*.parquet
        parents.append(os.path.dirname(parents[0]))
    candidates = [os.path.join(folder, "neighbors.json")]
    for parent in parents:
        candidates += [os.path.join(parent, "neighbors", "neighbors.json"), os.path.join(parent, "neighbors.json")]
    return next((c for c in candidates if os.path.isfile(c)), None)


def given_sets(config: dict) -> dict:
    """The auxiliary sets of ``aux_datasets`` (curated elsewhere) in the shape :func:`curate_sets` returns."""
    sets = {}
    for name, path in config["aux_datasets"].items():
        sets[name] = path
        manifest_path = find_manifest(path)
        stats = {"aux_dataset": path}
        if manifest_path:
            with open(manifest_path) as f:
                stats.update(manifest_stats(json.load(f)), manifest=manifest_path)
        key = {"neighbors": "manifest", "random": "control", "visual": "visual_manifest"}[name]
        sets[key] = stats
    logger.info("curation skipped (aux_datasets): %s", config["aux_datasets"])
    return sets


def resolved_train_config(config: dict) -> dict:
    with open(config["train_config"]) as f:
        train = yaml.safe_load(f) or {}
    train.update(config["train"] or {})
    if config["development"]:
        train["heldout_eval_per_class"] = config["heldout_per_class"]
    return train


def resolved_curate_config(config: dict, train: dict, output_dir: str) -> dict:
    with open(config["curate_config"]) as f:
        curate = yaml.safe_load(f) or {}
    for section, values in (config["curate"] or {}).items():
        if isinstance(values, dict) and isinstance(curate.get(section), dict):
            curate[section] = {**curate[section], **values}
        else:
            curate[section] = values
    curate["target"] = {k: train[k] for k in TARGET_KEYS if train.get(k) is not None}
    curate["output_dir"] = output_dir
    curate.pop("stages", None)
    return curate


def _write_yaml(path: str, value: dict) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(value, f, sort_keys=False)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Curation
# --------------------------------------------------------------------------------------------------------------------
def run_curate(config_path: str, stages, log_path: str) -> None:
    """``recipes/curate.py`` as a user runs it; its log goes to ``log_path``; a failure raises with the log's tail."""
    cmd = [sys.executable, os.path.join(RECIPES, "curate.py"), "--config", config_path, "--stages", *stages]
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-5:])
        raise RuntimeError(f"curation {' '.join(stages)} failed (exit {done.returncode}); see {log_path}:\n{tail}")


def curate_sets(config: dict, train: dict, out: str) -> dict:
    """The neighbor set and the random control, curated; returns their aux_dataset folders and the control stats."""
    real_dir, control_dir = os.path.join(out, "curate", "neighbors"), os.path.join(out, "curate", "random")
    real_cfg = resolved_curate_config(config, train, real_dir)
    real_yaml = _write_yaml(os.path.join(real_dir, "curate.yaml"), real_cfg)
    t0 = time.time()
    run_curate(real_yaml, CURATE_STAGES, os.path.join(real_dir, "curate.log"))
    manifest_path = os.path.join(real_dir, "neighbors", "neighbors.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    vocab_path = config["control_vocabulary"] or (real_cfg.get("neighbors") or {}).get("vocabulary")
    if vocab_path:
        vocabulary = ablation.read_vocabulary(vocab_path)
    else:  # no vocabulary: re-pair the real auxiliary classes with random targets
        vocabulary = [{"name": a["name"], "wnid": a.get("wnid")} for a in manifest["auxiliary"]]
    control, stats = ablation.random_control_manifest(manifest, vocabulary, seed=config["control_seed"])
    stats["vocabulary"] = vocab_path or "the real auxiliary classes (re-paired)"
    control_path = os.path.join(control_dir, "neighbors", "neighbors.json")
    if not os.path.exists(control_path):
        os.makedirs(os.path.dirname(control_path), exist_ok=True)
        write_json_atomic(control_path, control, indent=1)
    control_yaml = _write_yaml(
        os.path.join(control_dir, "curate.yaml"), resolved_curate_config(config, train, control_dir)
    )
    run_curate(control_yaml, CURATE_STAGES[1:], os.path.join(control_dir, "curate.log"))
    sets = {
        "neighbors": os.path.join(real_dir, "aux_dataset"),
        "random": os.path.join(control_dir, "aux_dataset"),
        "control": stats,
        "manifest": manifest_stats(manifest),
    }
    if any(ablation.VARIANTS[v].aux == "visual" for v in config["variants"]):
        sets.update(curate_visual_set(config, train, out))
    logger.info("curation done in %.0f s; control: %s", time.time() - t0, stats)
    return sets


def curate_visual_set(config: dict, train: dict, out: str) -> dict:
    """The (c+v) set: the neighbor set's curation with the ``visual`` overrides and the rank stage, in curate/visual."""
    visual_dir = os.path.join(out, "curate", "visual")
    overrides = {**config, "curate": copy.deepcopy(config["curate"] or {})}
    visual = copy.deepcopy(config["visual"] or {})
    visual.setdefault("neighbors", {}).setdefault("candidate_factor", 3)
    for section, values in visual.items():
        overrides["curate"][section] = {**(overrides["curate"].get(section) or {}), **(values or {})}
    visual_yaml = _write_yaml(
        os.path.join(visual_dir, "curate.yaml"), resolved_curate_config(overrides, train, visual_dir)
    )
    stages = (CURATE_STAGES[0], "rank", *CURATE_STAGES[1:])
    run_curate(visual_yaml, stages, os.path.join(visual_dir, "curate.log"))
    with open(os.path.join(visual_dir, "neighbors", "neighbors.json")) as f:
        manifest = json.load(f)
    return {"visual": os.path.join(visual_dir, "aux_dataset"), "visual_manifest": manifest_stats(manifest)}


def manifest_stats(manifest: dict) -> dict:
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


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------
def load_train_main():
    spec = importlib.util.spec_from_file_location("neighbor_lt_train_recipe", os.path.join(RECIPES, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def steps_of_c(train_yaml: str, aux_dir: str) -> int:
    """Optimizer steps of (c): epochs x (target images + per-epoch auxiliary draws) / global batch."""
    from neighbor_lt.data import AuxiliaryCappedSampler, load_aux_dataset, load_target_dataset

    _, data_args, args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments), ["--config", train_yaml]
    )
    target = load_target_dataset(data_args)
    aux = load_aux_dataset(aux_dir, data_args.aux_split)
    sampler = AuxiliaryCappedSampler(len(target["train"]), aux["label"], data_args.max_aux_per_class)
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    return ablation.optimizer_steps(
        len(sampler), args.per_device_train_batch_size, args.num_train_epochs, args.gradient_accumulation_steps,
        args.world_size,
    )  # fmt: skip


def read_run(run_dir: str, variant: str, seed: int) -> dict | None:
    path = os.path.join(run_dir, "eval_results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    result = {k: (float("nan") if v is None and k in ablation.GROUPS else v) for k, v in result.items()}
    meta_path = os.path.join(run_dir, "ablation_run.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    per_class, counts, groups = ablation.read_per_class(os.path.join(run_dir, "per_class_accuracy.csv"))
    return {
        "variant": variant, "seed": seed, **{k: result.get(k) for k in ablation.GROUPS},
        **{f"train_{k}": result.get(f"train_{k}") for k in ablation.GROUPS},
        "train_steps": result.get("train_steps"), "train_images": result.get("train_images"),
        "wall_s": meta.get("wall_s", float("nan")), "split": result.get("split"),
        "per_class": per_class.tolist(), "groups": groups, "train_counts": counts.tolist(),
    }  # fmt: skip


def _line(i, total, r) -> str:
    groups = " ".join(f"{g.capitalize()} {100 * r[g]:.2f}" for g in ablation.GROUPS)
    train = f" | train {100 * r['train_overall']:.1f}" if r.get("train_overall") is not None else ""
    return (
        f"[{i}/{total}] {ablation.VARIANTS[r['variant']].label.split(' ')[0]} seed {r['seed']}: {groups}{train} | "
        f"{r['train_steps']} steps, {r['train_images']:,} images, {r['wall_s']:.0f} s"
    )


# --------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    out = config["output_dir"]
    os.makedirs(out, exist_ok=True)
    wall = time.time()

    ################
    # Configs, checked before any work
    ################
    train = resolved_train_config(config)
    train_yaml = _write_yaml(os.path.join(out, "train.yaml"), train)
    parse_args((ModelArguments, DataArguments, NeighborLTTrainingArguments), ["--config", train_yaml])
    _write_yaml(os.path.join(out, "ablate.yaml"), {k: v for k, v in config.items() if k != "config_path"})

    ################
    # Curation (once)
    ################
    if config["aux_datasets"]:  # curated already, elsewhere
        sets = given_sets(config)
    else:
        sets = curate_sets(config, train, out)  # every stage skips finished work
    steps_c = steps_of_c(train_yaml, sets["neighbors"]) if "neighbors" in sets else None
    print(
        f"auxiliary sets ready: {sets.get('manifest')}; control {sets.get('control')}; (c) takes {steps_c} steps",
        flush=True,
    )

    ################
    # Runs: seeds outermost
    ################
    runs_dir = os.path.join(out, "runs-dev" if config["development"] else "runs")
    plan = [(s, v) for s in config["seeds"] for v in config["variants"]]
    train_main, runs, failed = None, [], []
    for i, (seed, name) in enumerate(plan, 1):
        variant = ablation.VARIANTS[name]
        run_dir = os.path.join(runs_dir, name, f"seed{seed}")
        result = read_run(run_dir, name, seed)
        if result is None and config["report_only"]:
            print(f"[{i}/{len(plan)}] {variant.label}, seed {seed}: not run yet (report_only)", flush=True)
            continue
        if result is None:
            args = [
                "--config", train_yaml, "--output_dir", run_dir, "--seed", str(seed), "--loss", variant.loss,
                "--aux_dataset", sets[variant.aux] if variant.aux else "", "--report_train_accuracy", "true",
            ]  # fmt: skip
            if variant.equal_steps:
                args += ["--max_steps", str(steps_c)]
            train_main = train_main or load_train_main()
            print(f"[{i}/{len(plan)}] {variant.label}, seed {seed}: training -> {run_dir}", flush=True)
            t0 = time.time()
            try:
                train_main(args)
            except Exception as err:  # one failed run does not lose the others; the rerun retries it
                logger.exception("run %s seed %d failed", name, seed)
                failed.append(f"{name} seed {seed}: {type(err).__name__}: {err}")
                continue
            write_json_atomic(
                os.path.join(run_dir, "ablation_run.json"), {"wall_s": round(time.time() - t0, 1)}, indent=1
            )
            result = read_run(run_dir, name, seed)
            print(_line(i, len(plan), result), flush=True)
        else:
            print(_line(i, len(plan), result) + " (done before)", flush=True)
        runs.append(result)

    ################
    # Report
    ################
    summary = report(config, argv, runs, sets, steps_c, time.time() - wall)
    if failed:
        sys.exit(
            f"{len(failed)} of {len(plan)} runs failed ({'; '.join(failed)}); rerun the same command to retry them"
        )
    return summary


def report(config, argv, runs, sets, steps_c, wall_s) -> dict:
    out = config["output_dir"]
    variants = [v for v in ablation.VARIANTS if v in config["variants"]]
    table = ablation.summarize(runs, variants)
    per_class = {}
    for r in runs:
        per_class.setdefault(r["variant"], {})[r["seed"]] = np.asarray(r["per_class"], dtype=float)
    groups = runs[0]["groups"] if runs else None
    paired = ablation.paired_tests(per_class, groups=groups) if runs else {}
    targets = ablation.check_targets(table)
    split = "development" if config["development"] else "evaluation"
    suffix = "-dev" if config["development"] else ""
    figure = config["figure"] or os.path.join(out, f"ablation{suffix}.png")
    if table:
        ablation.chart(table, figure, f"{config['title']} ({split} split); seeds {config['seeds']}")
    command = "python recipes/ablate.py " + shlex.join(argv)
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU threads, torch {_torch_version()}"
    summary = {
        "command": command, "date": datetime.date.today().isoformat(), "machine": machine, "split": split,
        "wall_s": round(wall_s, 1), "steps_of_c": steps_c,
        **({"aux_datasets": config["aux_datasets"]} if config["aux_datasets"] else {}),
        **({"neighbors": sets["manifest"]} if "manifest" in sets else {}),
        **({"control": sets["control"]} if "control" in sets else {}),
        **({"visual": sets["visual_manifest"]} if "visual_manifest" in sets else {}),
        "variants": {
            v: {
                "label": ablation.VARIANTS[v].label,
                "mean_sd": {k: table[v][k] for k in (*ablation.GROUPS, "train_overall")},
                "runs": [{k: r[k] for k in r if k not in ("groups", "train_counts")} for r in runs if r["variant"] == v],
            }
            for v in table
        },
        "paired": paired, "targets": targets, "figure": figure,
    }  # fmt: skip
    write_json_atomic(os.path.join(out, f"summary{suffix}.json"), summary, indent=1)
    text = ablation.markdown_table(table)
    print(f"\n{text}\n\n{ablation.format_paired(paired) if paired else ''}\n")
    for line in targets:
        print(line)
    print(f"summary: {os.path.join(out, f'summary{suffix}.json')}; chart: {figure}; wall {wall_s / 60:.1f} min")
    if config["results_md"] and table:
        rel = os.path.relpath(figure, os.path.dirname(os.path.abspath(config["results_md"])))
        section = "\n".join([
            f"## {config['title']}: does learning from neighbors help? ({summary['date']}, {split} split)",
            "",
            f"- Command: `{command}`",
            f"- Machine: {machine}; wall time {wall_s / 60:.1f} min for this invocation (runs done before are reused)",
            f"- Neighbors: {json.dumps(sets.get('manifest'))}; control: {json.dumps(sets.get('control'))}"
            + ("; curated elsewhere (aux_datasets)" if config["aux_datasets"] else "")
            + (f"; (c+v) visually ranked: {json.dumps(sets['visual_manifest'])}" if sets.get("visual_manifest") else ""),
            f"- (c) and (a=) take {steps_c} optimizer steps; every run is `recipes/train.py`'s `main()`",
            "",
            text,
            "",
            "Paired per-class accuracy, (c) (and (c+v)) minus each other variant (class means over the seeds both have):",
            "",
            ablation.format_paired(paired) if paired else "(no pairs)",
            "",
            *[f"- {t}" for t in targets],
            "",
            f"![ablation]({rel})",
        ])  # fmt: skip
        ablation.append_results(config["results_md"], section)
    return summary


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"configuration error: {err}")
