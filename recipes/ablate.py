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
    python recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml --report_only true \
        --runs_from benchmarks/results/tiny_imagenet_lt.json   # runs recorded in an earlier summary, not retrained

What it does (neighbor_lt.ablation): curate the neighbor set and a random-class control once (or take `aux_datasets`
curated elsewhere), train every variant x seed with neighbor_lt.train.run, and report (mean +- sd per group, paired
per-class tests, a chart, summary.json, optionally a section appended to `results_md`). Resumable: finished runs and
curation stages are reused. Top-level keys, train keys (`--train.KEY VALUE`) and curate keys
(`--curate.SECTION.KEY VALUE`) can be overridden on the command line.
"""

import sys

from neighbor_lt import ablation, cli


def main(argv=None) -> dict:
    return ablation.main(argv)


if __name__ == "__main__":
    sys.exit(cli.run_command("ablate", sys.argv[1:]))  # a config error: one line, exit 2; failed runs: exit 1
