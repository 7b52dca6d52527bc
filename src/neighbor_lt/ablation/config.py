"""The ablation's configuration: a YAML file (``--config``) with ``--key value`` / ``--section.key value`` overrides,
checked before any work, and the train and curate configs every run and curation starts from."""

from __future__ import annotations

import copy
import glob
import os

from ..configs import ConfigError, parse_value, pop_config_path, read_yaml_mapping, split_overrides
from .variants import VARIANTS

#: Every key of an ablation YAML and its default.
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
    # the control only from classes that are nobody's neighbor (an error when the neighbor set leaves too few): then
    # (c) - (d) compares neighbors with other classes, not the same images re-paired
    "control_fresh_only": False,
    "development": False,  # evaluate on a development split (heldout_per_class images per class), not eval_files
    "heldout_per_class": 50,
    "figure": None,  # default <output_dir>/ablation[-dev].png
    "results_md": None,  # append the report to this Markdown file (e.g. benchmarks/RESULTS.md)
    "title": "ablation",
    # train one swept training key instead of the plain ablation: "lambda_s=0.01,0.1,0.3,1" (or {lambda_s: [...]}),
    # each value x variant x seed on the development split, plotted with error bars (neighbor_lt.ablation.sweep)
    "sweep": None,
    "report_only": False,  # report the finished runs, train nothing (e.g. while other processes run other seeds)
}
# DataArguments keys that define the target set: shared by the train runs and the curation's `target` section.
TARGET_KEYS = (
    "dataset_name", "dataset_config_name", "train_files", "eval_files", "train_split", "eval_split", "image_column",
    "label_column", "lt_train_list", "lt_eval_list", "lt_image_root", "lt_class_names", "num_classes",
    "imbalance_factor", "lt_max_per_class", "lt_seed",
)  # fmt: skip


def _set_dotted(config: dict, key: str, value) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{key}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_config(argv: list[str]) -> dict:
    """The YAML of ``--config`` with ``--key value`` / ``--section.key value`` overrides; unknown top-level keys fail.

    Example:
        >>> parse_config(["--config", "recipes/tiny_imagenet_lt/ablate.yaml", "--seeds", "0", "1"])["seeds"]
        [0, 1]

    Args:
        argv: ``--config YAML`` and overrides; the summary records them as the command.
    """
    argv = list(argv)
    argv_given = list(argv)  # the summary's command line
    path = pop_config_path(
        argv, required="--config needs the ablation YAML, e.g. recipes/tiny_imagenet_lt/ablate.yaml"
    )
    loaded = read_yaml_mapping(path)
    config = copy.deepcopy(DEFAULTS)
    config.update(loaded)
    for key, values in split_overrides(
        argv, "--key value (--train.KEY VALUE, --curate.SECTION.KEY VALUE)", greedy=True
    ):
        parsed = [parse_value(v) for v in values]
        value = parsed[0] if len(parsed) == 1 and key.split(".")[0] not in ("seeds", "variants") else parsed
        _set_dotted(config, key, value)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; known: {sorted(DEFAULTS)} (train keys go under train.)")
    given = check_aux_datasets(config)
    for key in ("output_dir", "train_config") if given else ("output_dir", "train_config", "curate_config"):
        if not config[key]:
            raise ConfigError(f"{path} must set {key}")
    bad = [v for v in config["variants"] if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    if given:
        needs = {v: VARIANTS[v].aux or ("neighbors" if VARIANTS[v].equal_steps else None)
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
    config["argv"] = argv_given
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


def resolved_train_config(config: dict) -> dict:
    """The train recipe YAML with the ``train`` overrides (and the development split when asked for)."""
    train = read_yaml_mapping(config["train_config"])
    train.update(config["train"] or {})
    if config["development"]:
        train["heldout_eval_per_class"] = config["heldout_per_class"]
    return train


def resolved_curate_config(config: dict, train: dict, output_dir: str) -> dict:
    """The curate recipe YAML with the ``curate`` overrides, the training config's target set and ``output_dir``."""
    curate = read_yaml_mapping(config["curate_config"])
    for section, values in (config["curate"] or {}).items():
        if isinstance(values, dict) and isinstance(curate.get(section), dict):
            curate[section] = {**curate[section], **values}
        else:
            curate[section] = values
    curate["target"] = {k: train[k] for k in TARGET_KEYS if train.get(k) is not None}
    curate["output_dir"] = output_dir
    curate.pop("stages", None)
    return curate
