#!/usr/bin/env bash
# benchmarks/gpu_ablation.sh on the lent GPU machine: bare (torch, transformers, accelerate, pyarrow, but no
# `datasets` / `evaluate`), offline, without ../shared. Everything it needs travels in the git-ignored .gpu/ that
# benchmarks/gpu_pack.sh makes here: wheels, Tiny-ImageNet-200 trimmed to the rows the LT selection uses (the same
# selection), and the auxiliary sets curated on the full data (given as aux_datasets: nothing is curated there).
#
# Device command (repository root; carry [".gpu"]): a 20-step smoke of every variant first (API mismatches show in
# about a minute), then the real runs:
#   bash benchmarks/gpu_device.sh --smoke && bash benchmarks/gpu_device.sh
# Options: --smoke (20 steps per variant, into outputs/tiny_imagenet_lt/ablate_gpu_smoke, started afresh);
#   --variants V ... (default: c a_steps a; d needs .gpu/curate/random); --budget S (default 420: a variant is not
#   started when the seconds since the start plus the last variant's time would pass S; the table then reports the
#   runs done); --local (this machine's Python environment: no wheel install, e.g. a CPU check with
#   NEIGHBOR_LT_ALLOW_CPU=1); anything else goes to recipes/ablate.py (later overrides win).
# Each variant is one recipes/ablate.py call on the same output folder (finished runs are reused; a smoke is one
# call), then one call over all variants writes the table. Back in $OUT (at most 8 files): smoke.log, device.log,
# RESULTS_gpu.md, summary.json, ablation.png, eval_results.json (every run's, keyed variant/seedN) and runs.tar.gz
# (the run folders minus weights).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0 local_env=0 budget=420 variants=(c a_steps a) extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; shift ;;
    --local) local_env=1; shift ;;
    --budget) budget=$2; shift 2 ;;
    --variants) shift; variants=(); while [ $# -gt 0 ] && [[ "$1" != --* ]]; do variants+=("$1"); shift; done ;;
    *) extra+=("$1"); shift ;;
  esac
done
export PYTHONUNBUFFERED=1 PYTHON=${PYTHON:-python3}
[ -d .gpu/data/tiny-imagenet-200 ] || { echo ".gpu/ is missing: run bash benchmarks/gpu_pack.sh here first" >&2; exit 1; }
if [ "$local_env" = 0 ]; then
  if [ ! -f /tmp/site/.gpu_wheels ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .gpu/whl/*.whl
    touch /tmp/site/.gpu_wheels
  fi
  export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
# The configs read ../shared/data/tiny-imagenet-200: point it at the packed copy (a real folder is left alone).
data=../shared/data/tiny-imagenet-200
if [ -L "$data" ] || [ ! -e "$data" ]; then
  mkdir -p ../shared/data
  ln -sfn "$PWD/.gpu/data/tiny-imagenet-200" "$data"
else
  echo "using the existing $data (a real folder), not .gpu/data"
fi
"$PYTHON" -c 'import neighbor_lt, datasets, evaluate, transformers, torch, pyarrow, fsspec, accelerate
mods = (datasets, evaluate, transformers, torch, pyarrow, fsspec, accelerate)
print("versions:", {m.__name__: m.__version__ for m in mods}, "| cuda:", torch.cuda.is_available(),
      "| neighbor_lt:", neighbor_lt.__file__)'
nvidia-smi || true

aux=(--aux_datasets.neighbors .gpu/curate/neighbors/aux_dataset)
for set in random visual; do
  if [ -d ".gpu/curate/$set/aux_dataset" ]; then aux+=("--aux_datasets.$set" ".gpu/curate/$set/aux_dataset"); fi
done
OUT=${OUT:-outputs/tiny_imagenet_lt/gpu_device_out}
mkdir -p "$OUT"
if [ "$smoke" = 1 ]; then
  run_dir=outputs/tiny_imagenet_lt/ablate_gpu_smoke log=$OUT/smoke.log
  rm -rf "$run_dir"  # a smoke reuses nothing
  extra=(--train.max_steps 20 "${extra[@]}")
else
  run_dir=outputs/tiny_imagenet_lt/ablate_gpu log=$OUT/device.log
fi
ablate() {  # ablate ARGS: benchmarks/gpu_ablation.sh on run_dir with the packed sets, logged to $log
  bash benchmarks/gpu_ablation.sh --output_dir "$run_dir" "${aux[@]}" "$@" "${extra[@]}" 2>&1 | tee -a "$log"
}
collect() {  # per-run times; unless a smoke, summary.json, every eval_results.json and the run folders to $OUT
  "$PYTHON" - "$run_dir" "$OUT" "$smoke" <<'PY' 2>&1 | tee -a "$log"
import glob, json, os, shutil, sys, tarfile

run_dir, out, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
runs = sorted(glob.glob(os.path.join(run_dir, "runs*", "*", "seed*")))
results = {}
for d in runs:
    name = os.path.relpath(d, os.path.dirname(os.path.dirname(d)))
    for f, key in (("eval_results.json", "eval"), ("ablation_run.json", "run")):
        if os.path.exists(os.path.join(d, f)):
            with open(os.path.join(d, f)) as fh:
                results.setdefault(name, {})[key] = json.load(fh)
for name, r in results.items():
    e, pct = r.get("eval", {}), lambda x: "nan" if x is None else f"{100 * x:.2f}"
    print(f"time {name}: {r.get('run', {}).get('wall_s', float('nan')):.0f} s, {e.get('train_steps')} steps, "
          f"overall {pct(e.get('overall'))}, few {pct(e.get('few'))}")
if not smoke:
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        shutil.copy(os.path.join(run_dir, "summary.json"), out)
    with open(os.path.join(out, "eval_results.json"), "w") as fh:
        json.dump({k: v.get("eval") for k, v in results.items()}, fh, indent=1)
    with tarfile.open(os.path.join(out, "runs.tar.gz"), "w:gz") as tar:
        for d in runs:
            for f in sorted(os.listdir(d)):
                if not f.endswith((".safetensors", ".bin", ".pt")):
                    tar.add(os.path.join(d, f), os.path.relpath(os.path.join(d, f), run_dir))
PY
}

start=$(date +%s)
if [ "$smoke" = 1 ]; then  # one call over every variant
  ablate --variants "${variants[@]}" --results_md null || { echo "gpu_device.sh: the smoke failed" | tee -a "$log"; exit 1; }
  collect
  echo "gpu_device.sh: smoke passed in $(( $(date +%s) - start )) s" | tee -a "$log"
  exit 0
fi
last=0 skipped=() failed=0
for v in "${variants[@]}"; do
  elapsed=$(( $(date +%s) - start ))
  if [ "$last" -gt 0 ] && [ $(( elapsed + last )) -gt "$budget" ]; then
    echo "gpu_device.sh: not starting $v: ${elapsed} s gone + ${last} s (the last variant) > budget ${budget} s" \
      | tee -a "$log"
    skipped+=("$v")
    continue
  fi
  t0=$(date +%s)
  ablate --variants "$v" --results_md null || failed=1
  last=$(( $(date +%s) - t0 ))
  echo "gpu_device.sh: variant $v took ${last} s (one recipes/ablate.py call, loading included)" | tee -a "$log"
  collect
done
# The table over every variant: the same call once all ran (each run reused), else the finished runs only.
final=(--variants "${variants[@]}" --results_md "$OUT/RESULTS_gpu.md" --figure "$OUT/ablation.png")
if [ ${#skipped[@]} -gt 0 ] || [ "$failed" = 1 ]; then final+=(--report_only true); fi
ablate "${final[@]}" || failed=1
collect
echo "gpu_device.sh: $(( $(date +%s) - start )) s; skipped: ${skipped[*]:-none}; failed: $failed" | tee -a "$log"
[ "$failed" = 0 ]
