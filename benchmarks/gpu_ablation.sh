#!/usr/bin/env bash
# The Tiny-ImageNet-LT ablation (recipes/ablate.py: five variants through the real recipes) at GPU scale: a
# ViT-S-size encoder from config (recipes/tiny_imagenet_lt/vit_s/train.yaml), 60 epochs, RandAugment + Mixup /
# CutMix, bf16, the tensor input pipeline, one seed. Meant for one GPU in under 8 minutes; its table is appended to
# benchmarks/RESULTS.md. CI never runs this. On a bare machine without ../shared or internet (the lent GPU machine),
# benchmarks/gpu_device.sh runs this script on the data that benchmarks/gpu_pack.sh packs into .gpu/.
#
# Usage (repository root, ../shared beside it):  bash benchmarks/gpu_ablation.sh [extra ablate.py overrides]
#   e.g. bash benchmarks/gpu_ablation.sh --seeds 0 1 2 --train.num_train_epochs 100
# Later overrides win (--output_dir, --results_md, --variants, --aux_datasets.neighbors DIR to skip curation, ...).
# Environment: PYTHON (default python3); NEIGHBOR_LT_ALLOW_CPU=1 runs without a GPU (a smoke check only).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
if ! nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; then
  [ -n "${NEIGHBOR_LT_ALLOW_CPU:-}" ] || { echo "no GPU visible" >&2; exit 1; }
  echo "no GPU visible; NEIGHBOR_LT_ALLOW_CPU is set, so going on without one" >&2
fi
"$PYTHON" -c "import neighbor_lt" 2>/dev/null || "$PYTHON" -m pip install -q -e ".[dev]"
start=$(date +%s)
"$PYTHON" recipes/ablate.py --config recipes/tiny_imagenet_lt/ablate.yaml \
  --output_dir outputs/tiny_imagenet_lt/ablate_gpu \
  --train_config recipes/tiny_imagenet_lt/vit_s/train.yaml \
  --title "Tiny-ImageNet-LT (100 classes, IF 100), ViT-S/8 from scratch at 64 px, 60 epochs, one GPU" \
  --seeds 0 --results_md benchmarks/RESULTS.md "$@"
echo "gpu_ablation.sh: $(( $(date +%s) - start )) s wall"
