"""Train a long-tail image classifier on target + neighbor classes, then publish a masked, target-only model.

Usage:
    accelerate launch recipes/train.py                                   # built-in demo (recipes/demo/train.yaml)
    accelerate launch recipes/train.py --config recipes/imagenet_lt/dinov2/train.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/train.py --config ...

Any key of the YAML can be overridden on the command line, e.g. `--num_train_epochs 1 --loss balanced_softmax`.
The same code runs as `neighbor-lt train` from a pip install (neighbor_lt/cli.py); this file adds the demo default.
"""

import os
import sys

from neighbor_lt import cli
from neighbor_lt.cli import train

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo", "train.yaml")


def main(argv=None):
    return train(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    sys.exit(cli.run_command("train", sys.argv[1:], default_config=DEFAULT_CONFIG))  # a config error: one line, exit 2
