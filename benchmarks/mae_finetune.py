"""Fine-tuning from the MAE encoder vs from random init, same fine-tuning budget, on Tiny-ImageNet-LT (CPU-sized).

Stage 1 pre-trains an MAE on the long-tailed training images (neighbor_lt.pretrain.pretrain, as recipes/pretrain_mae.py);
stage 2 fine-tunes twice with neighbor_lt.train.run (as recipes/train.py) and identical settings (loss, epochs,
batch, lr, LLRD, augmentation, seed): once from the MAE encoder, once from a randomly initialised ViT of the same
shape. Prints Overall / Many / Medium / Few and appends a
section to benchmarks/RESULTS.md.

Usage (from the repository root; defaults are a small budget for 2 shared CPU cores, about 25 minutes):
    python benchmarks/mae_finetune.py
    python benchmarks/mae_finetune.py --num_classes 50 --pretrain_epochs 100 --finetune_epochs 50 --seeds 0 1 2
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

from neighbor_lt import train
from neighbor_lt.metrics import ACCURACY_KEYS as GROUPS
from neighbor_lt.pretrain import pretrain
from neighbor_lt.results_md import append_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(ROOT, "recipes", "tiny_imagenet_lt", "scratch")


def _parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_classes", type=int, default=20)
    parser.add_argument("--imbalance_factor", type=float, default=100)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument(
        "--encoder", default="hidden_size=96,num_hidden_layers=4,num_attention_heads=3,intermediate_size=192"
    )
    parser.add_argument(
        "--decoder",
        default="decoder_hidden_size=64,decoder_num_hidden_layers=1,decoder_num_attention_heads=2,"
        "decoder_intermediate_size=128",
    )
    parser.add_argument("--pretrain_epochs", type=float, default=8)
    parser.add_argument("--finetune_epochs", type=float, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--loss", default="balanced_softmax")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output_dir", default="outputs/benchmarks/mae_finetune")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    parser.add_argument(
        "--machine_note", default="", help="Added to the machine line, e.g. 'shared with 3 other jobs'."
    )
    parser.add_argument("--no_append", action="store_true", help="Print only; leave RESULTS.md alone.")
    return parser.parse_args()


def main():
    args = _parse()
    data = ["--num_classes", str(args.num_classes), "--imbalance_factor", str(args.imbalance_factor)]
    common = ["--report_to", "none", "--dataloader_num_workers", "1", "--logging_steps", "50"]
    mae_dir = os.path.join(args.output_dir, "mae")
    timings, results = {}, {"mae": [], "random": []}

    start = time.time()
    pretrain(
        ["--config", os.path.join(SCRATCH, "pretrain_mae.yaml"), *data, *common,
         "--image_size", str(args.image_size), "--patch_size", str(args.patch_size),
         "--config_overrides", f"{args.encoder},{args.decoder}",
         "--num_train_epochs", str(args.pretrain_epochs), "--per_device_train_batch_size", str(args.batch_size),
         "--save_strategy", "no", "--max_eval_samples", "64", "--output_dir", mae_dir]
    )  # fmt: skip
    timings["pretrain"] = time.time() - start

    finetune = [
        "--config", os.path.join(SCRATCH, "train.yaml"), *data, *common, "--loss", args.loss,
        "--num_train_epochs", str(args.finetune_epochs), "--per_device_train_batch_size", str(args.batch_size),
    ]  # fmt: skip
    inits = {
        "mae": ["--model_name_or_path", mae_dir],
        "random": ["--model_name_or_path", "", "--model_type", "vit", "--image_size", str(args.image_size),
                   "--config_overrides", f"{args.encoder},patch_size={args.patch_size}"],
    }  # fmt: skip
    for seed in args.seeds:
        for init, extra in inits.items():
            start = time.time()
            out = os.path.join(args.output_dir, f"{init}-seed{seed}")
            config = train.load_config([*finetune, *extra, "--seed", str(seed), "--output_dir", out])
            metrics = train.run(config).results
            timings[f"{init}-seed{seed}"] = time.time() - start
            results[init].append({k: 100 * float(metrics[k]) for k in GROUPS})
            groups = metrics["group_sizes"]

    rows = []
    for init, runs in results.items():
        label = "MAE encoder" if init == "mae" else "random init"
        cells = []
        for key in GROUPS:
            values = [r[key] for r in runs]
            mean = sum(values) / len(values)
            spread = f" ± {(max(values) - min(values)) / 2:.1f}" if len(values) > 1 else ""
            cells.append(f"{mean:.1f}{spread}")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    table = "\n".join(["| fine-tuned from | Overall | Many | Medium | Few |", "|---|---|---|---|---|", *rows])
    print(table)
    print(json.dumps({"timings_s": {k: round(v) for k, v in timings.items()}, "group_sizes": groups}))

    if not args.no_append:
        command = "python benchmarks/mae_finetune.py " + shlex.join(sys.argv[1:])
        note = f" ({args.machine_note})" if args.machine_note else ""
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores{note}, no GPU"
        minutes = {k: f"{v / 60:.1f} min" for k, v in timings.items()}
        section = f"""
## MAE pre-training vs random init, Tiny-ImageNet-LT (small-budget run)

- Command: `{command.strip()}`
- Machine: {machine}; date: {datetime.date.today().isoformat()}
- Setup: {args.num_classes} seeded Tiny-ImageNet classes, imbalance {args.imbalance_factor:g} (500 -> 5 training
  images a class), {args.image_size} px, patch {args.patch_size}; ViT `{args.encoder}`; MAE decoder `{args.decoder}`,
  mask 0.75, norm-pix loss, {args.pretrain_epochs:g} pre-training epochs on the long-tailed training images; then
  {args.finetune_epochs:g} fine-tuning epochs, loss `{args.loss}`, batch {args.batch_size}, settings of
  `recipes/tiny_imagenet_lt/scratch/train.yaml` (LLRD 0.75, RandAugment) for both rows; seeds {args.seeds}.
- Evaluation: the {args.num_classes * 50} validation images of those classes; group sizes (classes) {groups}.
- Wall time: {minutes}.

{table}

Small budget: MAE usually needs hundreds of epochs; read this as a check that the pipeline runs and that the
pre-trained encoder is used, not as a reproduction of the paper's from-scratch numbers.
"""
        append_results(args.results, section)
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
