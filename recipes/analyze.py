"""Plots of trained runs, written as PNG files into the first run's folder (its model card shows them).

1. per_class_accuracy.png: per-class accuracy against training-image count (log scale), Many / Medium / Few colors,
   one marker per run.
2. feature_map.png: 2-D UMAP / PCA map of features of a head class, a confusable tail class and their neighbor
   classes, before and after training (first run only).
3. group_accuracy.png: Overall / Many / Medium / Few bars for every run.

Usage (from the folder training ran in, so the data paths of args.yaml resolve):
    python recipes/analyze.py outputs/demo outputs/demo-baseline
    python recipes/analyze.py outputs/demo --labels "neighbors" --head_class "black widow" --tail_class lemon \
        --before outputs/demo/unmasked --projection pca --output_dir outputs/demo/plots
"""

import argparse
import logging
import os
import sys

from neighbor_lt.hub import write_model_card
from neighbor_lt.plots import feature_map_for_run, load_run, plot_group_accuracy, plot_per_class_accuracy

logger = logging.getLogger("analyze")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="output_dir folders of recipes/train.py; the first is analyzed")
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: folder name and loss)")
    parser.add_argument("--output_dir", help="where the PNG files go (default: the first run's folder)")
    parser.add_argument("--head_class", help="head class of the feature map (default: most images, has neighbors)")
    parser.add_argument("--tail_class", help="tail class of the feature map (default: most confusable Few class)")
    parser.add_argument("--before", help="checkpoint for the 'before' features (default: fresh model, same config)")
    parser.add_argument("--max_images_per_class", type=int, default=40, help="images per class in the feature map")
    parser.add_argument("--projection", choices=("auto", "umap", "pca"), default="auto", help="2-D projection")
    parser.add_argument("--no_feature_map", action="store_true", help="skip the feature map (no data or model pass)")
    parser.add_argument("--no_card", action="store_true", help="do not re-render the first run's README.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one name per run ({len(args.runs)})")
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    ################
    # Runs
    ################
    runs = [load_run(folder, label) for folder, label in zip(args.runs, args.labels or [None] * len(args.runs))]
    output_dir = args.output_dir or runs[0].folder
    os.makedirs(output_dir, exist_ok=True)

    ################
    # Plots
    ################
    written = [
        plot_per_class_accuracy(runs, os.path.join(output_dir, "per_class_accuracy.png")),
        plot_group_accuracy(runs, os.path.join(output_dir, "group_accuracy.png")),
    ]
    if not args.no_feature_map:
        written.append(
            feature_map_for_run(
                runs[0],
                os.path.join(output_dir, "feature_map.png"),
                head=args.head_class,
                tail=args.tail_class,
                before=args.before,
                max_images_per_class=args.max_images_per_class,
                method=args.projection,
                seed=args.seed,
            )
        )

    ################
    # Card
    ################
    if not args.no_card and os.path.abspath(output_dir) == os.path.abspath(runs[0].folder):
        write_model_card(runs[0].folder)  # now shows the plots
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
