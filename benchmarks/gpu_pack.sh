#!/usr/bin/env bash
# Packs what benchmarks/gpu_device.sh needs on a bare GPU machine (no internet, no ../shared, no `datasets`) into the
# git-ignored folder .gpu/ of the repository root, under 58 MiB:
#   .gpu/whl/                         wheels of datasets, evaluate and the requirements the device image lacks
#   .gpu/data/tiny-imagenet-200/      Tiny-ImageNet-200 with every row that the Tiny-ImageNet-LT selection
#                                     (num_classes 100, imbalance_factor 100, lt_seed 0) leaves out replaced by a 1x1
#                                     JPEG: labels and row order are kept, so the selected train / evaluation rows
#                                     are exactly those of the full set (checked below, image bytes included)
#   .gpu/curate/{neighbors,random}/   the curated auxiliary sets (aux_dataset/ + neighbors/neighbors.json), made by
#                                     recipes/ablate.py on the full data; random only while the total stays small
# Usage (repository root, ../shared beside it, after a CPU run of recipes/ablate.py has curated the sets):
#   bash benchmarks/gpu_pack.sh [CURATE_DIR]      # default outputs/tiny_imagenet_lt/ablate/curate
# Then: device command `bash benchmarks/gpu_device.sh --smoke && bash benchmarks/gpu_device.sh`, carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
CURATE=${1:-outputs/tiny_imagenet_lt/ablate/curate}
SRC=../shared/data/tiny-imagenet-200
BUDGET_MIB=${GPU_PACK_BUDGET_MIB:-58}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
mkdir -p .gpu/whl .gpu/data/tiny-imagenet-200 .gpu/curate

# Wheels: the device image has torch, transformers, accelerate, pyarrow, pandas, xxhash, huggingface-hub but not
# datasets / evaluate / dill / multiprocess; fsspec is pinned to what datasets 5.2.0 accepts (<= 2026.9.0).
WHEELS="datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl $WHEELS 2>&1 | grep -v "is ignored" || true

cp "$SRC"/classes.tsv "$SRC"/README.md .gpu/data/tiny-imagenet-200/
python3 - "$SRC" .gpu/data/tiny-imagenet-200 <<'EOF'
import glob, hashlib, io, os, sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from PIL import Image

from neighbor_lt.configs import DataArguments
from neighbor_lt.data import load_target_dataset, make_long_tailed, select_classes

src, dst = sys.argv[1:]
with open("recipes/tiny_imagenet_lt/vit_s/train.yaml") as f:
    cfg = yaml.safe_load(f)
keys = ("num_classes", "imbalance_factor", "lt_seed")
print("selection:", {k: cfg[k] for k in keys})
buf = io.BytesIO()
Image.new("RGB", (1, 1), (127, 127, 127)).save(buf, "JPEG")
placeholder = buf.getvalue()

def shards(split):
    return sorted(glob.glob(os.path.join(src, f"{split}-*.parquet")))

# The rows the training recipe uses, through the library's own selection functions (same order: the sorted shards).
labels = {s: np.concatenate([pq.read_table(p, columns=["label"])["label"].to_numpy() for p in shards(s)])
          for s in ("train", "valid")}
names = Features.from_arrow_schema(pq.read_schema(shards("train")[0]))["label"].names
feats = Features({"label": ClassLabel(names=names), "row": Value("int64")})
dd = DatasetDict({s: Dataset.from_dict({"label": labels[s], "row": np.arange(len(labels[s]))}, features=feats)
                  for s in labels})
dd = select_classes(dd, cfg["num_classes"], seed=cfg["lt_seed"])
train = make_long_tailed(dd["train"], cfg["imbalance_factor"], seed=cfg["lt_seed"])
keep = {"train": set(train["row"]), "valid": set(dd["valid"]["row"])}
print({s: f"{len(keep[s])} of {len(labels[s])} rows keep their image" for s in keep})

for split in ("train", "valid"):
    offset = 0
    for path in shards(split):
        table = pq.read_table(path)
        image = table.column("image").combine_chunks()
        n = len(table)
        mask = np.array([offset + i in keep[split] for i in range(n)])
        old = image.field("bytes").to_pylist()
        new = pa.array([b if m else placeholder for b, m in zip(old, mask)], pa.binary())
        image = pa.StructArray.from_arrays([new, image.field("path")], fields=list(image.type))
        table = table.set_column(table.schema.get_field_index("image"), "image", image)
        out = os.path.join(dst, os.path.basename(path))
        pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), out, compression="zstd")
        print(f"{out}: {n} rows, {mask.sum()} real images, {os.path.getsize(out) / 2**20:.1f} MiB")
        offset += n

# Check: the recipe's own loader gives the same rows (labels, image bytes, order) on the trimmed and the full data.
def rows(root):
    args = DataArguments(dataset_name="parquet", train_files=[f"{root}/train-*.parquet"],
                         eval_files=[f"{root}/valid-*.parquet"], **{k: cfg[k] for k in keys})
    ds = load_target_dataset(args)
    out = {}
    for split in ("train", "validation"):
        t = ds[split].with_format("arrow")[:]
        digest = hashlib.sha256()
        for b in t.column("image").combine_chunks().field("bytes").to_pylist():
            digest.update(hashlib.sha256(b).digest())
        out[split] = (len(t), t.column("label").to_pylist(), digest.hexdigest(), ds[split].features["label"].names)
    return out

full, trimmed = rows(src), rows(dst)
for split in full:
    assert full[split] == trimmed[split], f"{split}: the trimmed data selects other rows"
    print(f"verified {split}: {full[split][0]} rows, labels, class names and image bytes identical "
          f"(sha256 {full[split][2][:16]})")
EOF

mib() { du -sm "$@" | awk '{s += $1} END {print s}'; }
copy_set() {  # copy_set NAME: aux_dataset/ + neighbors/neighbors.json of the curated set NAME
  mkdir -p ".gpu/curate/$1/neighbors"
  cp -r "$CURATE/$1/aux_dataset" ".gpu/curate/$1/"
  cp "$CURATE/$1/neighbors/neighbors.json" ".gpu/curate/$1/neighbors/"
}
tracked=$(( $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) / 1048576 + 1 ))
rm -rf .gpu/curate/neighbors .gpu/curate/random
copy_set neighbors
total=$(( $(mib .gpu) + tracked ))
extra=$(mib "$CURATE/random/aux_dataset")
if [ -d "$CURATE/random/aux_dataset" ] && [ $(( total + extra )) -le "$BUDGET_MIB" ]; then
  copy_set random
else
  echo "random control left out: ${total} + ${extra} MiB would pass ${BUDGET_MIB} MiB (variant d needs it)"
fi
du -sh .gpu/*; du -sh .gpu
echo "with the tracked files (${tracked} MiB): about $(( $(mib .gpu) + tracked )) MiB travel"
