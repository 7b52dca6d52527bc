"""The ablation's configuration: a YAML file (``--config``) with ``--key value`` / ``--section.key value`` overrides,
checked before any work, and the train and curate configs every run and curation starts from."""

from __future__ import annotations

import copy
import glob
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..config_schema import (
    ConfigError,
    ConfigSchema,
    Keys,
    build,
    parse_value,
    pop_config_path,
    read_yaml_mapping,
    section_keys,
    unknown_key_error,
)
from .variants import VARIANTS


def _key(default, help: str):
    """A key of the ablation file: its default (a list or mapping is copied for each config) and its help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class AblationConfig:
    """The ablation's settings: the keys of an ablation YAML file, each with its default and help.

    ``train`` holds train recipe keys (checked against the train recipe's arguments), ``curate`` and ``visual``
    curate recipe sections (``{neighbors: {k: 3}}``, checked against the stages' settings). ``aux_datasets`` names
    the build stage's ``aux_dataset`` folders (or Parquet files) of sets curated elsewhere: curation is skipped and
    ``curate_config`` / ``curate`` / ``visual`` / ``control_*`` are not used; only the sets the variants need are
    required (b, c and a_steps need neighbors, d random, c_v visual). ``control_fresh_only`` makes (c) - (d) compare
    neighbors with other classes rather than the same images re-paired (an error when the neighbor set leaves too
    few classes that are nobody's neighbor). ``sweep`` (``KEY=V1,V2`` or ``{KEY: [V1, V2]}``) trains every value x
    variant x seed on the development split and plots each group's accuracy against the value (:mod:`.sweep`).
    ``runs_from`` reuses the runs recorded in earlier ``summary.json`` files (another machine's, or a run folder that
    is gone): a variant x seed without a finished run here is read from them, provided each summary has this
    ablation's split, (c) steps and set statistics (:func:`neighbor_lt.ablation.runner.earlier_runs`).
    """

    output_dir: str | None = _key(None, "Everything goes here: curate/, runs/ (or runs-dev/), summary.json, charts.")
    train_config: str | None = _key(None, "The train recipe YAML every run starts from.")
    train: dict = _key({}, "Train recipe keys for every run: {KEY: VALUE}.")
    curate_config: str | None = _key(None, "The curate recipe YAML (its target: the train config's data keys).")
    aux_datasets: dict = _key({}, "Sets curated elsewhere: {neighbors: DIR, random: DIR, visual: DIR}; no curation.")
    curate: dict = _key({}, "Curate recipe overrides: {SECTION: {KEY: VALUE}}.")
    visual: dict = _key({}, "(c+v): curate overrides of its set, e.g. {rank: {model_name_or_path: ...}} (required).")
    variants: list[str] = _key(["a", "c", "a_steps", "b", "d"], "Variants to train; c_v only when named.")
    seeds: list[int] = _key([0, 1, 2], "Seeds of every variant.")
    control_seed: int = _key(0, "Seed of the random-class control.")
    control_vocabulary: str | None = _key(None, "Candidate classes of the control; default: neighbors.vocabulary.")
    control_fresh_only: bool = _key(False, "The control only from classes that are nobody's neighbor.")
    development: bool = _key(False, "Evaluate on a development split (heldout_per_class a class), not eval_files.")
    heldout_per_class: int = _key(50, "Images per class of the development split.")
    figure: str | None = _key(None, "The chart; default: <output_dir>/ablation[-dev].png.")
    results_md: str | None = _key(None, "Append the report to this Markdown file (e.g. benchmarks/RESULTS.md).")
    title: str = _key("ablation", "Title of the report and the chart.")
    sweep: Any = _key(None, "A training key swept on the development split: 'lambda_s=0.01,0.1,0.3,1'.")
    report_only: bool = _key(False, "Report the finished runs, train nothing (while other processes train).")
    runs_from: list[str] = _key(
        [], "summary.json files of earlier invocations: a variant x seed found there is taken, not trained again."
    )
    #: The YAML file and the command line it came from (the summary records the command); not keys of the file.
    config_path: str | None = field(default=None, init=False, repr=False)
    argv: list[str] = field(default_factory=list, init=False, repr=False)

    def resolved(self) -> dict:
        """The keys of the file, as resolved (what ``ablate.yaml`` in the output folder holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


#: Every key of an ablation YAML and its default.
DEFAULTS = {
    f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(AblationConfig) if f.init
}
# DataArguments keys that define the target set: shared by the train runs and the curation's `target` section.
TARGET_KEYS = (
    "dataset_name", "dataset_config_name", "train_files", "eval_files", "train_split", "eval_split", "image_column",
    "label_column", "lt_train_list", "lt_eval_list", "lt_image_root", "lt_class_names", "num_classes",
    "imbalance_factor", "lt_max_per_class", "lt_seed",
)  # fmt: skip


def _schema_keys() -> dict:
    """The ablation file's keys: its own values, the train recipe's keys under ``train``, the curate recipe's
    sections under ``curate`` and ``visual``."""
    from ..configs import DataArguments, ModelArguments, NeighborLTTrainingArguments
    from ..curate import STAGES

    stages = {name: Keys(stage.arguments_class()) for name, stage in STAGES.items()}
    keys = {f.name: f.type for f in fields(AblationConfig) if f.init}
    keys.update(train=Keys(ModelArguments, DataArguments, NeighborLTTrainingArguments), curate=stages, visual=stages)
    return keys


#: The ablation's configuration file, for :mod:`neighbor_lt.config_schema` (the front-end train and curate share).
SCHEMA = ConfigSchema(
    "ablation",
    _schema_keys,
    usage="--key value (--train.KEY VALUE, --curate.SECTION.KEY VALUE)",
    several=("seeds", "variants", "runs_from"),
    hint="train recipe keys go under train., curate recipe keys under curate.SECTION.",
)


def parse_config(argv: list[str]) -> AblationConfig:
    """The YAML of ``--config`` with ``--key value`` / ``--section.key value`` overrides, every key checked.

    Example:
        >>> parse_config(["--config", "recipes/tiny_imagenet_lt/ablate.yaml", "--seeds", "0", "1"]).seeds
        [0, 1]

    Args:
        argv: ``--config YAML`` and overrides; the summary records them as the command.
    """
    argv = list(argv)
    argv_given = list(argv)  # the summary's command line
    path = pop_config_path(
        argv, required="--config needs the ablation YAML, e.g. recipes/tiny_imagenet_lt/ablate.yaml"
    )
    values = SCHEMA.load(path, argv, expected="a mapping of ablation keys to values")
    values = {k: {} if v is None and isinstance(DEFAULTS[k], dict) else v for k, v in values.items()}  # `train:`
    config = build(AblationConfig, values, "the ablation config")
    given = check_aux_datasets(config)
    for key in ("output_dir", "train_config") if given else ("output_dir", "train_config", "curate_config"):
        if not getattr(config, key):
            raise ConfigError(f"{path} must set {key}")
    bad = [v for v in config.variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    if given:
        needs = {v: VARIANTS[v].aux or ("neighbors" if VARIANTS[v].equal_steps else None)
                 for v in config.variants}  # fmt: skip
        missing = {v: s for v, s in needs.items() if s and s not in given}
        if missing:
            raise ConfigError(
                "aux_datasets skips curation, so every variant's set must be given: "
                + "; ".join(f"variant {v} needs aux_datasets.{s}" for v, s in missing.items())
                + f" (given: {sorted(given) or 'none'})"
            )
    elif "c_v" in config.variants and not (config.visual.get("rank") or {}).get("model_name_or_path"):
        raise ConfigError(
            "variant c_v needs visual.rank.model_name_or_path: the image model that ranks the candidates (a Hub id, "
            "or a folder from recipes/train.py, e.g. the (a) run of a first pass with --variants a)"
        )
    if not config.seeds or not all(isinstance(s, int) for s in config.seeds):
        raise ConfigError(f"seeds must be a list of integers, got {config.seeds!r}")
    if config.sweep is not None:
        key, _ = parse_sweep(config.sweep)
        train_keys = section_keys(SCHEMA.specs()["train"])
        if key not in train_keys:
            raise unknown_key_error(
                "train", [key], train_keys, dotted=True, hint="the sweep key is a train recipe key"
            )
    config.runs_from = check_runs_from(config)
    config.config_path, config.argv = path, argv_given
    return config


def parse_sweep(spec) -> tuple[str, list]:
    """``"key=v1,v2,..."`` or ``{key: [v1, v2, ...]}`` -> ``(key, [values])`` (at least two distinct values).

    Raises:
        ConfigError: not that shape, fewer than two values, or a repeated value.
    """
    if isinstance(spec, dict) and len(spec) == 1:
        key, values = next(iter(spec.items()))
        values = list(values) if isinstance(values, (list, tuple)) else [values]
    elif isinstance(spec, str) and "=" in spec:
        key, _, text = spec.partition("=")
        values = [_number(parse_value(v.strip())) for v in text.split(",") if v.strip()]
    else:
        raise ConfigError(f"sweep must be 'KEY=V1,V2,...' (e.g. lambda_s=0.01,0.1,0.3,1), got {spec!r}")
    key = str(key).strip()
    if key.startswith("train."):
        key = key[len("train.") :]
    if not key or "." in key:
        raise ConfigError(
            f"sweep key {key!r}: sweep a training recipe key (lambda_s, max_aux_per_class, ...); curation keys "
            "(curate.neighbors.k) need one ablation per value (--curate.SECTION.KEY V --output_dir DIR)"
        )
    if len(values) < 2 or len(set(map(repr, values))) != len(values):
        raise ConfigError(f"sweep {key}: give at least two distinct values, got {values!r}")
    return key, values


def _number(value):
    """YAML reads ``1e-4`` as text; a sweep value that is a number is one."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_runs_from(config: AblationConfig) -> list[str]:
    """The ``runs_from`` summaries (one path or a list), checked: files that exist, and no sweep."""
    paths = [config.runs_from] if isinstance(config.runs_from, str) else config.runs_from
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f"runs_from must be a list of summary.json paths, got {config.runs_from!r}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"runs_from: {', '.join(missing)} not found (the summary.json of an earlier ablation)")
    if paths and config.sweep is not None:
        raise ConfigError("runs_from cannot be combined with sweep: a summary's runs do not record the swept value")
    return paths


AUX_SETS = ("neighbors", "random", "visual")


def check_aux_datasets(config: AblationConfig) -> dict:
    """The ``aux_datasets`` mapping (curated elsewhere), checked: known set names, paths that exist."""
    given = config.aux_datasets
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


def resolved_train_config(config: AblationConfig) -> dict:
    """The train recipe YAML with the ``train`` overrides (and the development split when asked for)."""
    train = read_yaml_mapping(config.train_config)
    train.update(config.train)
    if config.development:
        train["heldout_eval_per_class"] = config.heldout_per_class
    return train


def resolved_curate_config(config: AblationConfig, train: dict, output_dir: str) -> dict:
    """The curate recipe YAML with the ``curate`` overrides, the training config's target set and ``output_dir``."""
    curate = read_yaml_mapping(config.curate_config)
    for section, values in config.curate.items():
        if isinstance(values, dict) and isinstance(curate.get(section), dict):
            curate[section] = {**curate[section], **values}
        else:
            curate[section] = values
    curate["target"] = {k: train[k] for k in TARGET_KEYS if train.get(k) is not None}
    curate["output_dir"] = output_dir
    curate.pop("stages", None)
    return curate
