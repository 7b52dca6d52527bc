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

The configuration (:mod:`.config`) is a YAML file with dotted command-line overrides, read by the front-end train and
curate share (:mod:`neighbor_lt.config_schema`) into an :class:`AblationConfig`, every key checked before any work.

Example:
    >>> from neighbor_lt import ablation
    >>> config = ablation.parse_config(["--config", "recipes/tiny_imagenet_lt/ablate.yaml"])  # doctest: +SKIP
    >>> summary = ablation.run(config)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import textwrap

from ..metrics import ACCURACY_KEYS as GROUPS
from .config import DEFAULTS, AblationConfig, parse_config
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


def help_text() -> str:
    """``neighbor-lt ablate --help``: usage, what it does and every top-level key with its default."""
    about = re.sub(r":\w+:`~?([^`]*)`", r"\1", __doc__.split("\n\nExample:")[0]).replace("``", "`")
    keys = "\n".join(
        "\n".join(textwrap.wrap(f"{f.metadata['help']} (default: {DEFAULTS[f.name]!r})", 116,
                                initial_indent=f"  --{f.name:<20} ", subsequent_indent=" " * 25))
        for f in dataclasses.fields(AblationConfig) if f.init
    )  # fmt: skip
    return (
        "usage: neighbor-lt ablate --config ABLATE_YAML [--KEY VALUE ...] [--train.KEY VALUE ...] "
        "[--curate.SECTION.KEY VALUE ...]\n       (from the checkout: python recipes/ablate.py ...)\n\n"
        f"{about}\n\nkeys of the YAML (README: Does it help on your data?):\n"
        f"{keys}\n  --train.KEY          a train recipe key for every run (e.g. --train.num_train_epochs 10)\n"
        "  --curate.SECTION.KEY a curate recipe key (e.g. --curate.neighbors.k 3)"
    )


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line (``--config YAML`` and overrides), set up logging, run the ablation; the summary.
    ``recipes/ablate.py`` and ``neighbor-lt ablate`` run this.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(help_text())
        return {}
    config = parse_config(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return run(config)


__all__ = [
    "COMPARISONS",
    "DEFAULTS",
    "AblationConfig",
    "GROUPS",
    "OPT_IN",
    "VARIANTS",
    "VISUAL_COMPARISONS",
    "AblationRunsFailed",
    "Variant",
    "chart",
    "check_targets",
    "format_paired",
    "help_text",
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
