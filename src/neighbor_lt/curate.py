"""Curation, steps 1-2 of the method, as one pipeline: neighbors -> retrieve -> filter -> build.

Each step is a *stage*: a typed settings dataclass (the YAML section of the same name, every key with its ``help``)
and a function ``run(arguments, context)``. :data:`STAGES` lists them in order:

- ``neighbors`` (:mod:`neighbor_lt.neighbors.stage`): neighbor classes of every target class -> ``neighbors.json``;
- ``rank`` (:mod:`neighbor_lt.neighbors.rank`, optional): the name backend's wider candidate list re-ranked by how
  confusable a probe of each candidate's images looks with the target's images -> ``neighbors.json`` again;
- ``retrieve`` / ``filter`` / ``build`` (:mod:`neighbor_lt.retrieval.stages`): images of the neighbor classes, the
  filters of step 2, and the auxiliary dataset (``aux_dataset/``).

A curation YAML file has ``output_dir``, ``stages``, a ``target`` section (the target set, the ``# Data`` keys of a
training YAML, :class:`~neighbor_lt.configs.DataArguments`) and one section per stage. Any key can be overridden on the
command line with its dotted path (``--neighbors.k 3 --retrieve.backend brave --retrieve.download.num_workers 8``).
An unknown key, an invalid value, or a backend option the backend does not take is a :class:`ConfigError` that names
the valid keys, raised before any stage runs. The resolved configuration (secrets redacted) is written to
``<output_dir>/curate_config.yaml`` and reruns the same curation as ``--config``.

Example:
    >>> config = load_config("recipes/demo/curate.yaml", ["--neighbors.k", "3"], output_dir="/tmp/c")
    >>> config.arguments("neighbors").k
    3
    >>> context = config.context()
    >>> for name in config.stages:  # doctest: +SKIP
    ...     run_stage(name, config, context)

This module imports no stage module at import time (the stages import it for :class:`StageError` and
:class:`CurateContext`); :data:`STAGES` names them as ``"module:attribute"`` and loads them on first use.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any

from .config_schema import ConfigSchema, build, parse_value, plain, save_resolved, split_overrides
from .configs import DEBUG_ENV, ConfigError, DataArguments, debug_requested
from .secrets import install_log_redaction, redact, redact_mapping
from .sources import check_data_paths

logger = logging.getLogger(__name__)

#: The resolved configuration, written in the output folder before the first stage runs.
CONFIG_NAME = "curate_config.yaml"


class StageError(RuntimeError):
    """A stage produced nothing usable (or cannot start); the message is one line saying why and what to do.

    ``recipes/curate.py`` logs it and exits 1; the stages after it do not run.
    """


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its settings dataclass and its run function, as ``"module:attribute"``."""

    name: str
    arguments: str
    run: str
    help: str
    #: Runs by default only when the YAML file has its section (``rank:``); ``--stages`` names it explicitly.
    optional: bool = False

    def arguments_class(self) -> type:
        return _load(self.arguments)

    def function(self):
        return _load(self.run)


#: The stages in the order they run; ``recipes/curate.py --stages`` picks some of them.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "neighbors", "neighbor_lt.neighbors.stage:NeighborsArguments", "neighbor_lt.neighbors.stage:run",
            "Step 1: neighbor classes of each target class (LLM, WordNet or a mapping) -> neighbors/neighbors.json.",
        ),
        Stage(
            "rank", "neighbor_lt.neighbors.rank:RankArguments", "neighbor_lt.neighbors.rank:run",
            "Optional step 1b: probe images of each candidate (neighbors.candidate_factor x k x ratio), scored by how "
            "confusable they look with the target -> the top k x ratio in neighbors/neighbors.json, rank/report.*. "
            "Runs when the YAML has a rank: section.",
            optional=True,
        ),
        Stage(
            "retrieve", "neighbor_lt.retrieval.stages:RetrieveArguments", "neighbor_lt.retrieval.stages:run_retrieve",
            "Step 2a: search every neighbor class (web API, URL list or local pool) and download its images.",
        ),
        Stage(
            "filter", "neighbor_lt.retrieval.stages:FilterArguments", "neighbor_lt.retrieval.stages:run_filter",
            "Step 2b: caption match, prototype similarity window and leak check -> filter/decisions.parquet.",
        ),
        Stage(
            "build", "neighbor_lt.retrieval.stages:BuildArguments", "neighbor_lt.retrieval.stages:run_build",
            "Cap per class and write aux_dataset/ (Parquet shards + dataset card); push if asked.",
        ),
    )
}  # fmt: skip


def _schema_keys() -> dict:
    """What a curation file holds: the ``target`` section, one section per stage, ``output_dir`` and ``stages``."""
    stages = {name: stage.arguments_class() for name, stage in STAGES.items()}
    return {"target": DataArguments, **stages, "output_dir": "str", "stages": "list[str]"}


#: The curation's configuration file, for :mod:`neighbor_lt.config_schema` (the front-end train and ablate share).
SCHEMA = ConfigSchema(
    "curation",
    _schema_keys,
    usage=f"--SECTION.KEY VALUE with SECTION one of {', '.join(('target', *STAGES))}",
    hint="on the command line, output_dir and stages are --output_dir and --stages",
)


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


# ---- backend options ---------------------------------------------------------------------------------------------
def backend_parameters(cls) -> dict[str, inspect.Parameter]:
    """The keyword arguments a backend class's constructor takes (empty for ``**kwargs`` only)."""
    params = inspect.signature(cls.__init__).parameters
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name: p for name, p in params.items() if name != "self" and p.kind not in skip}


def check_backend_options(cls, options: dict, where: str) -> dict:
    """``options`` when the backend's constructor takes every one of them, else a :class:`ConfigError` naming the
    valid keys. The one check every stage applies to its ``backend_kwargs``.

    Example:
        >>> from neighbor_lt.retrieval.search import BraveImageSearch
        >>> check_backend_options(BraveImageSearch, {"pagesize": 10}, "retrieve.backend_kwargs")
        Traceback (most recent call last):
        ...
        neighbor_lt.configs.ConfigError: unknown option(s) pagesize in retrieve.backend_kwargs for BraveImageSearch \
(valid: api_key, endpoint, api_key_env, timeout, extra_params, price_per_1000)
    """
    if not isinstance(options, dict):
        raise ConfigError(f"{where} must be a mapping of option names to values (got {options!r})")
    params = backend_parameters(cls)
    accepts_any = any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
    )
    unknown = [k for k in options if k not in params]
    if unknown and not accepts_any:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(str, unknown))} in {where} for {cls.__name__} "
            f"(valid: {', '.join(params) or 'none'})"
        )
    return dict(options)


# ---- context -----------------------------------------------------------------------------------------------------
class CurateContext:
    """What every stage shares: the output folder, the target set (loaded once, on first use) and where relative
    paths of the configuration are looked up.

    Example:
        >>> context = CurateContext("outputs/curate", DataArguments(dataset_name="parquet", train_files=["t.parquet"]))
        >>> context.target["train"]  # doctest: +SKIP

    Args:
        output_dir: every stage reads and writes under it.
        target_args: how to load the target set (the ``target:`` section).
        config_path: the YAML file; a relative path that does not exist from the working directory is looked up
            next to it.
        target: an already loaded target ``DatasetDict`` (tests, notebooks), used instead of ``target_args``.
        sections: stage name -> its settings (a :class:`CurateConfig`'s sections), for a stage that reuses another's
            (the rank stage searches and downloads its probes with the ``retrieve:`` settings).
    """

    def __init__(
        self,
        output_dir: str,
        target_args: DataArguments | None = None,
        config_path: str | None = None,
        target=None,
        sections: dict | None = None,
    ):
        self.output_dir = output_dir
        self.target_args = target_args
        self.config_path = config_path
        self._target = target
        self.sections = sections if sections is not None else {}

    def arguments(self, stage: str):
        """The settings of ``stage`` (its section, or its defaults when the configuration has none)."""
        section = self.sections.get(stage)
        cls = STAGES[stage].arguments_class()
        if isinstance(section, cls):
            return section
        return build(cls, section, stage)

    @property
    def has_target(self) -> bool:
        """Whether a target set is given (loaded, or named by ``target_args``)."""
        if self._target is not None:
            return True
        a = self.target_args
        return a is not None and bool(a.dataset_name or a.train_files or a.lt_train_list)

    @property
    def target(self):
        """The target ``DatasetDict`` (train, and eval when configured), long-tail subsampling applied."""
        return self.load_target()

    def load_target(self, require_names: str | None = None):
        """:attr:`target`; with ``require_names`` (what asks about the classes by name, e.g. ``"the openai neighbor
        backend"``), numeric class names ('0'..'364', split files without ``lt_class_names``) are a ``ConfigError``."""
        from .data import check_class_names, load_target_dataset

        if self._target is None:
            if not self.has_target:
                raise StageError(
                    "this stage needs the target set: set target.dataset_name, target.train_files or "
                    "target.lt_train_list"
                )
            self._target = load_target_dataset(self.target_args, require_names=require_names)
        elif require_names:
            train = self._target["train"]
            check_class_names(getattr(train.features[self.label_column], "names", None) or [], require_names)
        return self._target

    @property
    def label_column(self) -> str:
        return self.target_args.label_column if self.target_args is not None else "label"

    def path(self, path: str | None) -> str | None:
        """``path`` as given when it exists (from the working directory), else next to the config file if it is
        there, else as given."""
        if path is None or os.path.exists(path) or self.config_path is None:
            return path
        candidate = os.path.join(os.path.dirname(os.path.abspath(self.config_path)), path)
        return candidate if os.path.exists(candidate) else path

    def stage_dir(self, name: str) -> str:
        """``<output_dir>/<name>``, created."""
        path = os.path.join(self.output_dir, name)
        os.makedirs(path, exist_ok=True)
        return path


# ---- configuration -----------------------------------------------------------------------------------------------
def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """``["--neighbors.k", "3", "--retrieve.backend=bing"]`` -> ``[("neighbors.k", "3"), ("retrieve.backend", "bing")]``.

    Raises:
        ConfigError: an argument that is not ``--dotted.key value``.
    """
    pairs = split_overrides(argv, SCHEMA.usage)
    for key, _ in pairs:
        if "." not in key:
            raise ConfigError(f"unknown argument {'--' + key!r}: overrides are {SCHEMA.usage}")
    return [(key, values[0]) for key, values in pairs]


@dataclass
class CurateConfig:
    """A resolved curation configuration: the YAML file with its command-line overrides, every key checked.

    Attributes:
        output_dir: where every stage writes.
        stages: the stages to run, in pipeline order.
        target: the target set.
        sections: stage name -> its checked settings object (for every stage that runs or has a section).
        config_path: the YAML file it came from (relative paths of the sections are also looked up next to it).
    """

    output_dir: str
    stages: list[str]
    target: DataArguments
    sections: dict[str, Any]
    config_path: str | None = None

    def arguments(self, stage: str):
        """The settings object of ``stage`` (e.g. ``NeighborsArguments``)."""
        if stage not in self.sections:
            self.sections[stage] = STAGES[stage].arguments_class()()
        return self.sections[stage]

    def context(self) -> CurateContext:
        return CurateContext(self.output_dir, self.target, self.config_path, sections=self.sections)

    def resolved(self) -> dict:
        """The configuration as one mapping, every default filled in (secrets are redacted when saved)."""
        out = {"output_dir": self.output_dir, "stages": list(self.stages), "target": self.target}
        out.update((name, self.sections[name]) for name in STAGES if name in self.sections)
        return redact_mapping(plain(out))

    def save(self) -> str:
        """Write :meth:`resolved` to ``<output_dir>/curate_config.yaml``; ``--config`` on it reruns this curation."""
        header = "Resolved by recipes/curate.py (secrets redacted); rerun with --config this file."
        return save_resolved(os.path.join(self.output_dir, CONFIG_NAME), self.resolved(), header=header)


def load_config(
    path: str | None,
    overrides: list[str] | list[tuple[str, str]] = (),
    output_dir: str | None = None,
    stages: list[str] | None = None,
    retry_failed: bool = False,
    values: dict | None = None,
) -> CurateConfig:
    """Read a curation YAML file, apply dotted command-line overrides and check every key and value.

    Example:
        >>> config = load_config("recipes/tiny_imagenet_lt/curate.yaml", ["--neighbors.k", "3"])
        >>> config.arguments("neighbors").k, config.arguments("retrieve").backend
        (3, 'pool')

    Args:
        path: the YAML file (None with ``values``).
        overrides: ``["--neighbors.k", "3", ...]`` (or parsed ``(key, value)`` pairs).
        output_dir: replaces the file's ``output_dir``.
        stages: replaces the file's ``stages`` (default: all, in order; ``rank`` only when the file has its section).
        retry_failed: ``retrieve.retry_failed`` (the neighbors stage always asks failed classes again).
        values: the mapping itself instead of a file.

    Raises:
        ConfigError: a missing file, an unknown section / key / stage / backend option or an invalid value, with the
            valid keys; nothing has run yet.
    """
    values = SCHEMA.load(path, values=values, expected=f"a mapping (output_dir, stages, target, {', '.join(STAGES)})")
    in_file = {name for name in STAGES if name in values}  # an optional stage runs by default when its section is
    pairs = parse_overrides(list(overrides)) if overrides and isinstance(list(overrides)[0], str) else overrides
    for dotted, raw in pairs:
        SCHEMA.override(values, dotted, raw)
    if retry_failed:
        values["retrieve"] = {**(values.get("retrieve") or {}), "retry_failed": True}

    output_dir = output_dir or values.get("output_dir")
    if not output_dir:
        raise ConfigError(f"{path}: set output_dir (or pass --output_dir)")
    chosen = stages or values.get("stages") or [n for n, s in STAGES.items() if not s.optional or n in in_file]
    if isinstance(chosen, str):
        chosen = [chosen]
    bad = [s for s in chosen if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(map(str, bad))}; choose from {', '.join(STAGES)}")
    chosen = [s for s in STAGES if s in chosen]  # pipeline order

    classes = SCHEMA.specs()
    sections = {
        name: build(classes[name], values.get(name), name, dotted=True)
        for name in ("target", *STAGES)
        if name == "target" or name in chosen or name in in_file  # a stage that does not run and has no section
    }
    target = sections.pop("target")
    return CurateConfig(str(output_dir), chosen, target, sections, path)


def run_stage(name: str, config: CurateConfig, context: CurateContext):
    """Run one stage with its checked settings; returns what the stage returns.

    Raises:
        StageError: the stage produced nothing usable (one line, no secret).
        ConfigError: a setting found wrong while running (a missing file ...).
        KeyboardInterrupt: Ctrl-C; what finished is recorded and a rerun resumes.
    """
    return STAGES[name].function()(config.arguments(name), context)


# ---- command line ------------------------------------------------------------------------------------------------
def run(config: CurateConfig) -> CurateContext:
    """Save the resolved configuration (``curate_config.yaml``), then run ``config.stages`` in pipeline order; every
    stage skips the work it finished before. ``recipes/curate.py``, ``neighbor-lt curate`` and the ablation run this.

    Example:
        >>> run(load_config("recipes/tiny_imagenet_lt/curate.yaml", stages=["neighbors"]))  # doctest: +SKIP

    Args:
        config: from :func:`load_config`.

    Raises:
        StageError, ConfigError, KeyboardInterrupt: as :func:`run_stage`, with the failing stage's name in ``.stage``.
    """
    cli_logger.info("resolved configuration: %s", config.save())
    check_data_paths(config.target)  # a wrong folder is one line before any stage starts (load_config reads no file)
    context = config.context()
    for name in config.stages:
        cli_logger.info("stage %s", name)
        try:
            run_stage(name, config, context)
        except (StageError, ConfigError, KeyboardInterrupt) as e:
            e.stage = name  # the caller's message names it
            raise
    return context


CLI_HELP = """Curate an auxiliary (neighbor) dataset: neighbors -> [rank] -> retrieve -> filter -> build.

The YAML file has a top-level `output_dir`, `stages`, a `target` section (the target set, same keys as the
`# Data` keys of recipes/*/train.yaml) and one section per stage. Every stage reads what the previous one wrote
under `output_dir` and is resumable: rerunning a finished stage does no new work. The resolved configuration
(secrets redacted) is written to `<output_dir>/curate_config.yaml`.

Any key of the YAML file can be overridden on the command line by its dotted path (--SECTION.KEY VALUE,
--SECTION.KEY.SUBKEY VALUE), e.g. --neighbors.k 3 --retrieve.backend brave --retrieve.download.num_workers 8.

--retry_failed: the retrieve stage asks again the searches with zero results and fetches again only the URLs that
failed with a retryable outcome or were refused by the address guard. The neighbors stage always asks again the classes whose request failed (only usable
replies are cached), with or without the flag.

Exit status: 0 when every stage produced something (a partial failure is logged with how to retry it), 1 when a stage
produced nothing usable (its one-line reason is logged; the later stages do not run), 2 for a configuration error
(one line naming the valid keys; nothing ran), 130 on Ctrl-C (a rerun resumes).
"""


cli_logger = logging.getLogger("curate")


def _one_line(error) -> str:
    return " ".join(redact(error).split())


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=CLI_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Stages:\n" + "\n".join(f"  {s.name:<10} {s.help}" for s in STAGES.values()),
    )
    parser.add_argument("--config", required=True, help="Curation YAML file.")
    parser.add_argument("--stages", nargs="+", default=None, help=f"Stages to run, from {list(STAGES)}.")
    parser.add_argument("--output_dir", default=None, help="Override the YAML's output_dir.")
    parser.add_argument(
        "--retry_failed",
        action="store_true",
        help="retrieve: ask again the searches with zero results and fetch again only the URLs that failed with a "
        "retryable outcome (timeout, 429 / 5xx, network or DNS error, robots.txt unreachable) or that the address "
        "guard refused (checked again under the current retrieve.download.allowed_networks). neighbors: failed "
        "classes are asked again on every rerun.",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"Show the traceback behind a configuration error (or {DEBUG_ENV}=1)."
    )
    args, overrides = parser.parse_known_args(argv)
    debug = debug_requested(args.debug)

    ################
    # Logging
    ################
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    install_log_redaction()  # API keys and URL credentials never reach the log; HTTP request lines at WARNING

    ################
    # Config
    ################
    try:
        config = load_config(args.config, overrides, args.output_dir, args.stages, args.retry_failed)
    except ConfigError as e:
        cli_logger.error("configuration error: %s", _one_line(e), exc_info=debug)
        return 2

    ################
    # Stages
    ################
    try:
        run(config)
    except StageError as e:  # before ConfigError: a key the endpoint rejects is both, and the stage ran
        cli_logger.error("stage %s failed: %s", getattr(e, "stage", None), _one_line(e))
        return 1
    except ConfigError as e:
        cli_logger.error("stage %s: configuration error: %s", getattr(e, "stage", None), _one_line(e), exc_info=debug)
        return 2
    except KeyboardInterrupt as e:
        cli_logger.error(
            "stage %s interrupted: what finished is recorded; rerun the same command to resume",
            getattr(e, "stage", None),
        )
        return 130
    return 0


__all__ = [
    "CONFIG_NAME",
    "STAGES",
    "ConfigError",
    "CurateConfig",
    "CurateContext",
    "Stage",
    "StageError",
    "check_backend_options",
    "load_config",
    "main",
    "parse_overrides",
    "parse_value",
    "run",
    "run_stage",
]
