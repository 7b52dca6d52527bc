"""Plots of trained runs, written as PNG files into the first run's folder (its model card shows them).

1. per_class_accuracy.png: per-class accuracy against training-image count (log scale), Many / Medium / Few colors,
   one marker per run.
2. feature_map.png: 2-D UMAP / PCA map of features of a head class, a confusable tail class and their neighbor
   classes, before and after training (first run only).
3. group_accuracy.png: Overall / Many / Medium / Few bars for every run, each labelled with its training budget.

Usage (from the folder training ran in, so the data paths of args.yaml resolve):
    python recipes/analyze.py outputs/demo outputs/demo-baseline
    python recipes/analyze.py outputs/demo --labels "neighbors" --head_class "black widow" --tail_class lemon \
        --before outputs/demo/unmasked --projection pca --output_dir outputs/demo/plots

The same code runs as `neighbor-lt analyze` from a pip install (neighbor_lt/cli.py).
"""

import sys

from neighbor_lt import cli
from neighbor_lt.cli import analyze


def main(argv=None):
    return analyze(argv)


if __name__ == "__main__":
    sys.exit(cli.run_command("analyze", sys.argv[1:]))
