"""MAE pre-training of a ViT on the target images (optionally plus the auxiliary images): LiVT's first stage.

Usage:
    accelerate launch recipes/pretrain_mae.py --config recipes/tiny_imagenet_lt/scratch/pretrain_mae.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/pretrain_mae.py \
        --config recipes/imagenet_lt/scratch/pretrain_mae.yaml
    # a preempted run continues from its newest checkpoint-* with the same line plus:
    #   --resume_from_checkpoint last
Then fine-tune from the output folder:
    accelerate launch recipes/train.py --config recipes/tiny_imagenet_lt/scratch/train.yaml

Any key of the YAML can be overridden on the command line, e.g. `--num_train_epochs 1 --mask_ratio 0.6`.
The output folder holds the MAE (`config.json` with `model_type: vit_mae`), its image processor, `args.yaml` and
`reconstructions.png` (original | masked | reconstruction | reconstruction + visible patches, one image a row).
"""

import sys

from neighbor_lt.configs import ConfigError
from neighbor_lt.pretrain import pretrain


def main(argv=None):
    return pretrain(argv)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        sys.exit(2)
