"""Curate an auxiliary (neighbor) dataset: neighbors -> retrieve -> filter -> build (neighbor_lt.curate.main).

Usage:
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml --stages neighbors --neighbors.k 3
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml --stages retrieve --retry_failed
    python recipes/curate.py --config recipes/imagenet_lt/curate.yaml --retrieve.backend brave \\
        --retrieve.backend_kwargs.api_key_env MY_BRAVE_KEY

The YAML format, the dotted overrides, --retry_failed and the exit status are described once, in
neighbor_lt.curate (`python recipes/curate.py --help` prints it).
"""

import sys

from neighbor_lt.curate import main

if __name__ == "__main__":
    sys.exit(main())
