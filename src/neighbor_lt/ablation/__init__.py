"""Do neighbors help on YOUR data? The ablation: curate once, train every variant x seed, and report.

1. Curation, once (:mod:`.curation`): :func:`neighbor_lt.curate.run` (neighbors -> retrieve -> filter -> build) for
   the real neighbor set, and a random-class control with the same bipartite shape (every target keeps its number of
   auxiliary classes, every auxiliary class its number of targets) through the same retrieve / filter / build stages.
   Curated elsewhere already: ``aux_datasets: {neighbors: DIR, random: DIR, visual: DIR}`` names the build stage's
   ``aux_dataset`` folders and curation is skipped.
2. Every variant x seed (:mod:`.runner`) by :func:`neighbor_lt.train.run`, the training users run; the variants are
   in :mod:`.variants`. Seeds are the outer loop, so a run cut short still has whole seeds; a finished run is reused.
3. The report (:mod:`.report`): mean +- sd per group, train vs evaluation accuracy, paired per-class tests of (c)
   against the others, the bars, a chart, ``summary.json`` and optionally a section appended to a results file.

The configuration (:mod:`.config`) is a YAML file with dotted command-line overrides.

Example:
    >>> from neighbor_lt import ablation
    >>> config = ablation.parse_config(["--config", "recipes/tiny_imagenet_lt/ablate.yaml"])  # doctest: +SKIP
    >>> summary = ablation.run(config)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys

from ..metrics import ACCURACY_KEYS as GROUPS
from .config import DEFAULTS, parse_config
from .report import chart, check_targets, format_paired, markdown_table, paired_test, paired_tests, summarize
from .runner import AblationRunsFailed, run
from .variants import (
    COMPARISONS,
    OPT_IN,
    VARIANTS,
    VISUAL_COMPARISONS,
    Variant,
    optimizer_steps,
    random_control_manifest,
    read_vocabulary,
)


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line (``--config YAML`` and overrides), set up logging, run the ablation; the summary.
    ``recipes/ablate.py`` and ``neighbor-lt ablate`` run this.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    config = parse_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return run(config)


__all__ = [
    "COMPARISONS",
    "DEFAULTS",
    "GROUPS",
    "OPT_IN",
    "VARIANTS",
    "VISUAL_COMPARISONS",
    "AblationRunsFailed",
    "Variant",
    "chart",
    "check_targets",
    "format_paired",
    "main",
    "markdown_table",
    "optimizer_steps",
    "paired_test",
    "paired_tests",
    "parse_config",
    "random_control_manifest",
    "read_vocabulary",
    "run",
    "summarize",
]
