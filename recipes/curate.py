"""Curate an auxiliary (neighbor) dataset: neighbors -> retrieve -> filter -> build.

Usage:
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml --stages neighbors
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml --stages retrieve --retry_failed

The YAML file has a top-level `output_dir`, `stages`, a `target` section (the target set, same keys as the
`# Data` keys of recipes/*/train.yaml) and one section per stage. Every stage reads what the previous one wrote
under `output_dir` and is resumable: rerunning a finished stage does no new work.

Exit status: 0 when every stage produced something (a partial failure is logged with how to retry it), 1 when a stage
produced nothing usable (its one-line reason is logged), 130 on Ctrl-C (a rerun resumes).
"""

import argparse
import importlib
import logging
import os
import sys

import yaml

from neighbor_lt.configs import ConfigError, DataArguments, from_dict
from neighbor_lt.retrieval.stages import StageError
from neighbor_lt.secrets import install_log_redaction

logger = logging.getLogger("curate")

# Stage name -> "module:function". Each function takes (section: dict, context: CurateContext).
STAGES = {
    "neighbors": "neighbor_lt.neighbors.stage:run",
    "retrieve": "neighbor_lt.retrieval.stages:run_retrieve",
    "filter": "neighbor_lt.retrieval.stages:run_filter",
    "build": "neighbor_lt.retrieval.stages:run_build",
}


class CurateContext:
    """What every stage shares: the output folder and the target set (loaded once, on first use)."""

    def __init__(self, output_dir: str, target: DataArguments, config_path: str | None = None):
        self.output_dir = output_dir
        self.target_args = target
        self.config_path = config_path
        self._target = None

    @property
    def target(self):
        """The target `DatasetDict` (train, and eval when configured), long-tail subsampling applied."""
        if self._target is None:
            from neighbor_lt.data import load_target_dataset

            self._target = load_target_dataset(self.target_args)
        return self._target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Curation YAML file.")
    parser.add_argument("--stages", nargs="+", default=None, help=f"Stages to run, from {list(STAGES)}.")
    parser.add_argument("--output_dir", default=None, help="Override the YAML's output_dir.")
    parser.add_argument(
        "--retry_failed",
        action="store_true",
        help="retrieve: ask again the searches with zero results and fetch again only the URLs that failed with a "
        "retryable outcome (timeout, 429 / 5xx, network or DNS error, robots.txt unreachable).",
    )
    args = parser.parse_args(argv)

    ################
    # Logging
    ################
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    install_log_redaction()  # API keys and URL credentials never reach the log; HTTP request lines at WARNING

    ################
    # Config
    ################
    with open(args.config) as f:
        config = yaml.safe_load(f) or {}
    known = {"output_dir", "stages", "target", *STAGES}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {args.config}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    output_dir = args.output_dir or config.get("output_dir")
    if not output_dir:
        raise ConfigError(f"{args.config} must set output_dir")
    stages = args.stages or config.get("stages") or list(STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
    if args.retry_failed:
        config["retrieve"] = {**(config.get("retrieve") or {}), "retry_failed": True}
    os.makedirs(output_dir, exist_ok=True)
    context = CurateContext(output_dir, from_dict(DataArguments, config.get("target"), "target"), args.config)

    ################
    # Stages
    ################
    for name in stages:
        module_name, func_name = STAGES[name].split(":")
        run = getattr(importlib.import_module(module_name), func_name)
        logger.info("stage %s", name)
        try:
            run(config.get(name) or {}, context)
        except StageError as e:
            logger.error("stage %s failed: %s", name, e)
            return 1
        except KeyboardInterrupt:
            logger.error("stage %s interrupted: what finished is recorded; rerun the same command to resume", name)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
