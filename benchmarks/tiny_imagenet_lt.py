"""Does learning from neighbors help on real data? Tiny-ImageNet-LT, four variants, same budget, one run (issue 7.1).

Target set: 100 seeded classes of Tiny-ImageNet-200, exponential long tail with imbalance factor 100 (500 -> 5
images); final numbers on the `valid` split (50 per class). Auxiliary pool: the other 100 classes.

Pipeline, all through the library:
1. `recipes/curate.py` stages `neighbors` (wordnet backend restricted to the pool) and `retrieve` (pool backend).
2. (a) seed 0 is trained first; its masked encoder (saved with `save_pretrained`) is the image embedder of the
   prototype filter (`filter.model_name_or_path`). The window is not tuned: gamma_low is the `--drop_low` quantile of
   the neighbor candidates' similarities, gamma_high the `--drop_high` upper quantile (near-copies); the same absolute
   thresholds are applied to the control set. Then the `filter` and `build` stages write each aux set.
3. Control (d): a neighbor manifest with the same bipartite graph as the real one (each target keeps its number of
   auxiliary classes, each auxiliary class its number of targets) but each auxiliary class replaced by a pool class
   drawn at random without replacement; it goes through the same retrieve / filter / build stages.
4. Training: a small HF ResNet from config at 32 px (bf16 autocast on CPU), a plain PyTorch loop over pre-decoded
   uint8 tensors (pad-4 random crop + flip) so that the 2 CPU cores train instead of decoding JPEGs. It uses the
   library's pieces: `merge_label_space`, `merged_class_counts`, `AuxiliaryCappedSampler` (at most 50 images per
   auxiliary class per epoch, fresh draw each epoch), the losses of `LOSS_FUNCTIONS` (what
   `NeighborSilencingTrainer.compute_loss` calls), `mask_auxiliary_classes` and `long_tail_accuracy`.
   Variants: (a) balanced softmax, target only, same epochs; (a=) the same for as many steps as (c); (b) aux merged
   with balanced softmax (eq. 3); (c) neighbor silencing + masking (ours); (d) random-aux control, trained as (c).
   AdamW (0.9, 0.95), weight decay 0.05, lr 1e-3 with 10% warmup then cosine to 1e-6, lambda_s 0.1: paper defaults
   where they apply; nothing was tuned. RandAugment / Mixup / CutMix are off (too few epochs for them to pay off).

Every finished run is appended to <output_dir>/runs.jsonl and skipped on a rerun (resumable).

Usage (from the repository root):
    nohup python benchmarks/tiny_imagenet_lt.py --seeds 0 1 2 --epochs 4 > outputs/bench_tiny.log 2>&1 &
    # 16 epochs (about 20 min on an idle 2-core machine, hours on a loaded one):
    python benchmarks/tiny_imagenet_lt.py --seeds 0 1 2 --epochs 16 --output_dir outputs/benchmarks/tiny_imagenet_lt_e16 \
        --figure benchmarks/figures/tiny_imagenet_lt_e16.png
    python benchmarks/tiny_imagenet_lt.py --quick          # 20 classes, few steps, 1 seed: about 2-3 minutes
"""

import argparse
import datetime
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CURATE_YAML = os.path.join(ROOT, "recipes", "tiny_imagenet_lt", "curate.yaml")
DATA = os.path.join(ROOT, "..", "shared", "data", "tiny-imagenet-200")
GROUPS = ("overall", "many", "medium", "few")
VARIANTS = {  # name -> (loss, aux set, label)
    "a": ("balanced_softmax", None, "(a) BalCE, target only"),
    "a_steps": ("balanced_softmax", None, "(a=) BalCE, target only, steps of (c)"),
    "b": ("balanced_softmax", "neighbors", "(b) aux merged, BalCE (eq. 3)"),
    "c": ("neighbor_silencing", "neighbors", "(c) neighbor silencing + mask (ours)"),
    "d": ("neighbor_silencing", "random", "(d) random aux classes, as (c)"),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 classes, a few steps, 1 seed (a smoke run).")
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=float, default=4, help="Epochs of every variant but (a=).")
    parser.add_argument("--max_steps", type=int, default=None, help="Cap on the steps of every run (smoke runs).")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lambda_s", type=float, default=0.1)
    parser.add_argument("--max_aux_per_class", type=int, default=50)
    parser.add_argument("--model", default="embedding_size=32,hidden_sizes=[32,64,128,256],depths=[1,1,1,1]")
    parser.add_argument("--variants", nargs="+", default=["a", "c", "b", "d", "a_steps"], choices=list(VARIANTS))
    parser.add_argument("--max_results", type=int, default=100, help="Pool candidates per auxiliary class.")
    parser.add_argument(
        "--neighbor_max_distance", type=int, default=None, help="WordNet distance cutoff (curate.yaml's: 10)."
    )
    parser.add_argument(
        "--max_targets_per_aux", type=int, default=None, help="Targets one aux class may serve (curate.yaml's: 5)."
    )
    parser.add_argument("--no_filter", action="store_true", help="Skip the prototype filter (caption + leak only).")
    parser.add_argument("--drop_low", type=float, default=0.2, help="gamma_low: this quantile of the similarities.")
    parser.add_argument("--drop_high", type=float, default=0.01, help="gamma_high: this upper quantile.")
    parser.add_argument("--no_bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_dir", default="outputs/benchmarks/tiny_imagenet_lt")
    parser.add_argument(
        "--figure", default=None, help="Bar chart; benchmarks/figures/tiny_imagenet_lt.png by default."
    )
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    parser.add_argument("--machine", default="2 CPU cores (shared), no GPU")
    parser.add_argument("--no_append", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_classes, args.seeds, args.epochs = 20, args.seeds[:1], 1
        args.max_steps = args.max_steps or 15
        args.max_results = 20
        args.no_append = True
        args.output_dir = args.output_dir.rstrip("/") + "_quick"
    args.figure = args.figure or os.path.join(
        ROOT, "benchmarks", "figures", f"tiny_imagenet_lt{'_quick' if args.quick else ''}.png"
    )
    return args


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Curation (recipes/curate.py, one config per aux set)
# ---------------------------------------------------------------------------------------------------------------------
def curate_config(args, out_dir, filter_section=None):
    """The Tiny-ImageNet-LT curate YAML with this run's output folder, class count and filter section."""
    with open(CURATE_YAML) as f:
        config = yaml.safe_load(f)
    config["output_dir"] = out_dir
    config["target"]["num_classes"] = args.num_classes
    for key in ("train_files", "eval_files"):
        config["target"][key] = [os.path.join(DATA, os.path.basename(p)) for p in config["target"][key]]
    config["neighbors"]["vocabulary"] = os.path.join(DATA, "classes.tsv")
    config["retrieve"]["backend_kwargs"]["data_files"] = os.path.join(DATA, "train-*.parquet")
    config["retrieve"]["max_results_per_query"] = args.max_results
    if args.neighbor_max_distance is not None:
        config["neighbors"]["max_distance"] = args.neighbor_max_distance
    if args.max_targets_per_aux is not None:
        config["neighbors"]["max_targets_per_aux"] = args.max_targets_per_aux
    if filter_section:
        config["filter"].update(filter_section)
    path = os.path.join(out_dir, "curate.yaml")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def curate(args, out_dir, stages, filter_section=None):
    path = curate_config(args, out_dir, filter_section)
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "curate.py"), "--config", path, "--stages", *stages]
    with open(os.path.join(out_dir, "curate.log"), "a") as logf:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)


def random_manifest(neighbors_manifest, out_dir, seed=0):
    """The control manifest: the real neighbor graph with every auxiliary class swapped for a random pool class."""
    with open(neighbors_manifest) as f:
        manifest = json.load(f)
    targets = {t["name"] for t in manifest["targets"]}
    pool = []
    with open(os.path.join(DATA, "classes.tsv")) as f:
        next(f)
        for line in f:
            _, wnid, words = line.rstrip("\n").split("\t")
            if wnid not in targets:
                pool.append((wnid, words.split(",")[0].strip()))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=len(manifest["auxiliary"]), replace=False)
    aux = []
    for entry, i in zip(manifest["auxiliary"], chosen):
        wnid, name = pool[i]
        aux.append(
            {"name": name, "neighbor_of": entry["neighbor_of"], "wnid": wnid, "similarity": None, "distance": None}
        )
    control = {**manifest, "backend": "random-control", "auxiliary": aux}
    path = os.path.join(out_dir, "neighbors", "neighbors.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(control, f, indent=1)
    same = sum(a["wnid"] == b.get("wnid") for a, b in zip(aux, manifest["auxiliary"]))
    return {"aux_classes": len(aux), "kept_real_assignment": same}


def filter_window(decisions_path, drop_low, drop_high):
    import pandas as pd

    sims = pd.read_parquet(decisions_path)["similarity"].dropna().to_numpy()
    return float(np.quantile(sims, drop_low)), float(np.quantile(sims, 1 - drop_high)), sims


# ---------------------------------------------------------------------------------------------------------------------
# Data: decode once to uint8 tensors
# ---------------------------------------------------------------------------------------------------------------------
def decode(ds, size):
    """[N, 3, size, size] uint8 images and [N] labels of a `datasets` image dataset."""
    table = ds.cast_column("image", ds.features["image"].__class__(decode=False))
    out = np.empty((len(ds), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(table["image"]):
        image = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") else Image.open(item["path"])
        out[i] = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(np.asarray(ds["label"]))


def augment(x, generator):
    """Pad-4 random crop and horizontal flip of a uint8 batch, then normalisation."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return normalize(out)


def normalize(x):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


# ---------------------------------------------------------------------------------------------------------------------
# One training run
# ---------------------------------------------------------------------------------------------------------------------
def make_model(args, names):
    """A ResNet classifier over `names`, built from config (`--model` holds ResNetConfig keys)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    overrides = yaml.safe_load("{" + args.model.replace("=", ": ") + "}")
    config = ResNetConfig(
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        **overrides,
    )
    return ResNetForImageClassification(config)


@torch.no_grad()
def predict(model, x, bf16, batch=500):
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(model(pixel_values=normalize(x[i : i + batch])).logits.float())
    return torch.cat(out)


def train_run(args, variant, seed, data, aux, steps):
    """Train one variant for `steps` steps; returns metrics on the valid split (masked model) and diagnostics."""
    from neighbor_lt.data import AuxiliaryCappedSampler, merge_label_space, merged_class_counts
    from neighbor_lt.losses import LOSS_FUNCTIONS, neighbor_csr
    from neighbor_lt.metrics import long_tail_accuracy
    from neighbor_lt.modeling import mask_auxiliary_classes

    loss_name = VARIANTS[variant][0]
    torch.manual_seed(seed)
    space = merge_label_space(data["names"], aux["dataset"] if aux else None)
    aux_labels = aux["y"].numpy() if aux else np.zeros(0, dtype=np.int64)
    counts = merged_class_counts(data["counts"], aux_labels, len(space.aux_names), args.max_aux_per_class)
    pairs = space.neighbor_pairs
    x = torch.cat([data["x"], aux["x"]]) if aux else data["x"]
    y = torch.cat([data["y"], aux["y"] + space.num_targets]) if aux else data["y"]
    sampler = AuxiliaryCappedSampler(len(data["y"]), aux_labels, args.max_aux_per_class, seed=seed)

    model = make_model(args, space.names)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate, betas=(0.9, 0.95),
    )  # fmt: skip
    warmup, min_lr = max(1, int(0.1 * steps)), 1e-6

    def lr_at(step):
        if step < warmup:
            return args.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return min_lr + 0.5 * (args.learning_rate - min_lr) * (1 + math.cos(math.pi * progress))

    loss_fn = LOSS_FUNCTIONS[loss_name]
    kwargs = {}
    if loss_name == "neighbor_silencing":
        kwargs = {"neighbor_pairs": pairs, "lambda_s": args.lambda_s, "csr": neighbor_csr(pairs, len(counts))}
    generator = torch.Generator().manual_seed(seed)
    bf16 = not args.no_bf16
    step, epoch, losses, start = 0, 0, [], time.time()
    model.train()
    while step < steps:
        order = torch.as_tensor(sampler.epoch_indices(epoch))
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):  # drop the last partial batch
            if step >= steps:
                break
            idx = order[i : i + args.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(pixel_values=augment(x[idx], generator)).logits
            loss = loss_fn(logits.float(), y[idx], counts, reduction="mean", **kwargs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        epoch += 1
    train_s = time.time() - start

    # evaluation: the masked (target-rows-only) model, raw logits
    masked = mask_auxiliary_classes(model, space.num_targets)
    preds = predict(masked, data["x_val"], bf16).argmax(1).numpy()
    result = long_tail_accuracy(preds, data["y_val"].numpy(), data["counts"])
    out = {k: result[k] for k in GROUPS}
    out["per_class"] = result["per_class"]
    if aux:  # diagnostic: what the unmasked model does with target images
        full = predict(model, data["x_val"], bf16).argmax(1).numpy()
        out["unmasked_aux_rate"] = float((full >= space.num_targets).mean())
        out["unmasked_overall"] = float((full == data["y_val"].numpy()).mean())
        few = np.isin(data["y_val"].numpy(), np.flatnonzero(np.asarray(data["counts"]) < 20))
        out["unmasked_aux_rate_few"] = float((full[few] >= space.num_targets).mean())
    out.update(
        variant=variant, seed=seed, steps=steps, epochs=round(epoch, 2), images=steps * args.batch_size,
        train_s=round(train_s, 1), images_per_s=round(steps * args.batch_size / train_s, 1),
        final_loss=float(np.mean(losses[-20:])), num_aux=len(space.aux_names), num_pairs=int(len(pairs)),
    )  # fmt: skip
    return out, masked


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------
def summarize(runs, variants):
    table = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        if rs:
            table[v] = {g: (100 * np.mean([r[g] for r in rs]), 100 * np.std([r[g] for r in rs])) for g in GROUPS}
            table[v]["seeds"] = [r["seed"] for r in rs]
            table[v]["train_s"] = float(np.mean([r["train_s"] for r in rs]))
            table[v]["steps"] = rs[0]["steps"]
            for key in ("unmasked_aux_rate", "unmasked_overall", "unmasked_aux_rate_few"):
                if key in rs[0]:
                    table[v][key] = 100 * float(np.mean([r[key] for r in rs]))
    return table


def format_table(table):
    lines = [
        "| variant | Overall | Many | Medium | Few | seeds | steps | train s/run | unmasked: target imgs -> aux class |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in table.items():
        cells = " | ".join(f"{row[g][0]:.2f} ± {row[g][1]:.2f}" for g in GROUPS)
        aux_rate = (
            f"{row['unmasked_aux_rate']:.1f}% (Few {row['unmasked_aux_rate_few']:.1f}%)"
            if "unmasked_aux_rate" in row
            else "-"
        )
        lines.append(
            f"| {VARIANTS[v][2]} | {cells} | {','.join(map(str, row['seeds']))} | {row['steps']} | "
            f"{row['train_s']:.0f} | {aux_rate} |"
        )
    return "\n".join(lines)


def paired_few(runs, counts):
    """Per-class Few accuracy of (c) minus (a), averaged over the seeds both have; sign counts and a Wilcoxon test."""
    from scipy.stats import wilcoxon

    few = np.flatnonzero(np.asarray(counts) < 20)
    seeds = sorted({r["seed"] for r in runs if r["variant"] == "c"} & {r["seed"] for r in runs if r["variant"] == "a"})
    if not seeds:
        return None
    pc = {v: np.mean([np.asarray(r["per_class"])[few] for r in runs if r["variant"] == v and r["seed"] in seeds], 0)
          for v in ("a", "c")}  # fmt: skip
    diff = 100 * (pc["c"] - pc["a"])
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {"classes": len(few), "mean_diff": float(diff.mean()), "better": int((diff > 0).sum()),
            "worse": int((diff < 0).sum()), "wilcoxon_p": p, "seeds": seeds}  # fmt: skip


def chart(table, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / len(table)
    for i, (v, row) in enumerate(table.items()):
        xs = np.arange(len(GROUPS)) + (i - (len(table) - 1) / 2) * width
        ax.bar(
            xs, [row[g][0] for g in GROUPS], width, yerr=[row[g][1] for g in GROUPS], capsize=2, label=VARIANTS[v][2]
        )
    ax.set_xticks(np.arange(len(GROUPS)), [g.capitalize() for g in GROUPS])
    ax.set_ylabel("top-1 accuracy on valid (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    wall = time.time()
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    runs_path = os.path.join(out, "runs.jsonl")
    runs = []
    if os.path.exists(runs_path):
        with open(runs_path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    done = {(r["variant"], r["seed"]) for r in runs}

    ################
    # Neighbors + retrieval (both aux sets)
    ################
    nb_dir, rnd_dir = os.path.join(out, "aux_neighbors"), os.path.join(out, "aux_random")
    curate(args, nb_dir, ["neighbors", "retrieve"])
    control = random_manifest(os.path.join(nb_dir, "neighbors", "neighbors.json"), rnd_dir, seed=0)
    curate(args, rnd_dir, ["retrieve"])
    log(f"neighbors + retrieval done ({time.time() - wall:.0f} s); control: {control}")

    ################
    # Target data
    ################
    from neighbor_lt.configs import DataArguments
    from neighbor_lt.data import class_counts, load_aux_dataset, load_target_dataset

    target = load_target_dataset(
        DataArguments(
            dataset_name="parquet",
            train_files=[os.path.join(DATA, "train-*.parquet")],
            eval_files=[os.path.join(DATA, "valid-*.parquet")],
            num_classes=args.num_classes,
            imbalance_factor=100,
            lt_seed=0,
        )  # fmt: skip
    )
    data = {"names": target["train"].features["label"].names, "counts": class_counts(target["train"]).tolist()}
    data["x"], data["y"] = decode(target["train"], args.image_size)
    data["x_val"], data["y_val"] = decode(target["validation"], args.image_size)
    log(f"target: {len(data['y'])} train / {len(data['y_val'])} valid images, {len(data['names'])} classes")

    per_epoch_target = len(data["y"]) // args.batch_size
    steps_a = args.max_steps or max(1, int(args.epochs * per_epoch_target))

    def record(result):
        with open(runs_path, "a") as f:
            f.write(json.dumps(result) + "\n")
        runs.append(result)
        done.add((result["variant"], result["seed"]))
        log(
            f"{result['variant']} seed {result['seed']}: "
            + " ".join(f"{g} {100 * result[g]:.2f}" for g in GROUPS)
            + f" | {result['steps']} steps, {result['train_s']:.0f} s, {result['images_per_s']:.0f} img/s"
        )

    ################
    # (a) seed 0 first: its encoder is the prototype filter's embedder
    ################
    embedder_dir = os.path.join(out, "embedder")
    first = args.seeds[0]
    need_embedder = not args.no_filter and not os.path.exists(os.path.join(embedder_dir, "config.json"))
    if "a" in args.variants and (("a", first) not in done or need_embedder):
        result, masked = train_run(args, "a", first, data, None, steps_a)
        if ("a", first) not in done:
            record(result)
        masked.save_pretrained(embedder_dir)
        from neighbor_lt.modeling import ModelArguments, load_image_processor

        load_image_processor(ModelArguments(image_size=args.image_size), masked).save_pretrained(embedder_dir)

    ################
    # Filter + build (both aux sets, same thresholds)
    ################
    filter_info = {"embedder": None}
    if not args.no_filter:
        open_window = {"model_name_or_path": embedder_dir, "pooling": "pooler", "gamma_low": None, "gamma_high": None}
        curate(args, nb_dir, ["filter"], open_window)  # scores only (cached), to place the window
        low, high, sims = filter_window(
            os.path.join(nb_dir, "filter", "decisions.parquet"), args.drop_low, args.drop_high
        )
        filter_info = {
            "embedder": f"encoder of (a) seed {first} (ResNet pooled features)", "gamma_low": round(low, 4),
            "gamma_high": round(high, 4), "similarity_quantiles_5_50_95": np.quantile(sims, [0.05, 0.5, 0.95]).round(4).tolist(),
        }  # fmt: skip
        window = {**open_window, "gamma_low": low, "gamma_high": high}
    else:
        window = {"model_name_or_path": None}
    aux_sets = {}
    for name, directory in (("neighbors", nb_dir), ("random", rnd_dir)):
        curate(args, directory, ["filter", "build"], window)
        ds = load_aux_dataset(os.path.join(directory, "aux_dataset"))
        x, y = decode(ds, args.image_size)
        with open(os.path.join(directory, "filter", "summary.json")) as f:
            summary = json.load(f)
        aux_sets[name] = {"dataset": ds, "x": x, "y": y, "filter": summary, "classes": len(ds.features["label"].names)}
        log(f"aux set {name}: {len(y)} images, {aux_sets[name]['classes']} classes, filter {summary}")
    filter_info["kept"] = {k: v["filter"] for k, v in aux_sets.items()}
    filter_info["aux_images"] = {k: (len(v["y"]), v["classes"]) for k, v in aux_sets.items()}

    # steps of the aux variants: same epochs as (a), each epoch larger by the per-epoch aux draws
    from neighbor_lt.data import AuxiliaryCappedSampler

    epoch_nb = len(AuxiliaryCappedSampler(len(data["y"]), aux_sets["neighbors"]["y"].numpy(), args.max_aux_per_class))
    steps_aux = args.max_steps or max(1, int(args.epochs * (epoch_nb // args.batch_size)))
    steps = {"a": steps_a, "a_steps": steps_aux, "b": steps_aux, "c": steps_aux, "d": steps_aux}
    if args.max_steps:
        steps["a_steps"] = args.max_steps
    log(f"steps: {steps}")

    ################
    # Train every (seed, variant); seeds outermost so that a cut-short run still has whole seeds
    ################
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            aux_name = VARIANTS[variant][1]
            result, _ = train_run(
                args, variant, seed, data, aux_sets.get(aux_name) if aux_name else None, steps[variant]
            )
            record(result)

    ################
    # Report
    ################
    runs = [r for r in runs if r["variant"] in args.variants and r["seed"] in args.seeds]
    table = summarize(runs, [v for v in VARIANTS if v in args.variants])
    paired = paired_few(runs, data["counts"]) if {"a", "c"} <= set(args.variants) else None
    neighbor_stats = manifest_stats(os.path.join(nb_dir, "neighbors", "neighbors.json"), data["counts"], data["names"])
    wall_s = time.time() - wall
    text = format_table(table)
    print(text)
    print(json.dumps({"paired_few_c_vs_a": paired, "filter": filter_info, "neighbors": neighbor_stats}, indent=1))
    targets = check_targets(table)
    for line in targets:
        print(line)
    chart(table, args.figure, f"Tiny-ImageNet-LT ({args.num_classes} classes, IF 100), ResNet from scratch, "
          f"{args.epochs:g} epochs, seeds {args.seeds}")  # fmt: skip
    log(f"wall time {wall_s / 60:.1f} min; chart {args.figure}")
    if not args.no_append:
        append_results(args, text, paired, filter_info, neighbor_stats, targets, wall_s, steps)
    return table


def manifest_stats(path, counts, names):
    with open(path) as f:
        manifest = json.load(f)
    index = {n: i for i, n in enumerate(names)}
    dist = [d for a in manifest["auxiliary"] for d in (a.get("distance") or [])]
    per_target = np.zeros(len(names), dtype=int)
    for a in manifest["auxiliary"]:
        for t in a["neighbor_of"]:
            if t in index:
                per_target[index[t]] += 1
    few = np.asarray(counts) < 20
    return {
        "aux_classes": len(manifest["auxiliary"]), "pairs": int(per_target.sum()),
        "distance_mean": round(float(np.mean(dist)), 2) if dist else None,
        "distance_quartiles": np.quantile(dist, [0.25, 0.5, 0.75]).tolist() if dist else None,
        "pairs_distance_ge_8": round(float(np.mean(np.asarray(dist) >= 8)), 3) if dist else None,
        "aux_per_target_many_medium_few": [round(float(per_target[g].mean()), 2) for g in
                                           (np.asarray(counts) > 100, (~few) & (np.asarray(counts) <= 100), few)],
        "targets_without_neighbors": int((per_target == 0).sum()),
    }  # fmt: skip


def check_targets(table):
    if not {"a", "c"} <= set(table):
        return []
    a, c = table["a"], table["c"]
    lines = [
        f"target (c) - (a) Few >= +5: {c['few'][0] - a['few'][0]:+.2f} -> {'met' if c['few'][0] - a['few'][0] >= 5 else 'NOT met'}",
        f"target (c) - (a) Overall >= +2: {c['overall'][0] - a['overall'][0]:+.2f} -> "
        f"{'met' if c['overall'][0] - a['overall'][0] >= 2 else 'NOT met'}",
        f"target (c) - (a) Many >= -1: {c['many'][0] - a['many'][0]:+.2f} -> {'met' if c['many'][0] - a['many'][0] >= -1 else 'NOT met'}",
    ]
    for v in ("b", "d"):
        if v in table:
            d = c["few"][0] - table[v]["few"][0]
            lines.append(f"target (c) > ({v}) on Few: {d:+.2f} -> {'met' if d > 0 else 'NOT met'}")
    if "a_steps" in table:
        d = c["few"][0] - table["a_steps"]["few"][0]
        o = c["overall"][0] - table["a_steps"]["overall"][0]
        lines.append(f"(c) - (a=) [equal steps]: Few {d:+.2f}, Overall {o:+.2f}")
    return lines


def append_results(args, text, paired, filter_info, neighbor_stats, targets, wall_s, steps):
    command = "python benchmarks/tiny_imagenet_lt.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    fig = os.path.relpath(args.figure, os.path.dirname(args.results))
    section = [
        "",
        f"## Tiny-ImageNet-LT: does learning from neighbors help? ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `{command.strip()}`",
        f"- Machine: {args.machine} ({platform.processor() or platform.machine()}, torch {torch.__version__}); "
        f"wall time {wall_s / 60:.1f} min for the whole script",
        f"- Setup: {args.num_classes} target classes (IF 100, 500 -> 5), valid split (50/class) for reporting only; "
        f"ResNet ({args.model}) from scratch at {args.image_size} px, bf16 autocast, batch {args.batch_size}, "
        f"{args.epochs:g} epochs, steps {steps}, AdamW lr {args.learning_rate:g}, lambda_s {args.lambda_s}, "
        f"<= {args.max_aux_per_class} images per aux class per epoch. Nothing tuned.",
        f"- Prototype filter: {json.dumps(filter_info)}",
        f"- Neighbors (wordnet, pool = other 100 classes): {json.dumps(neighbor_stats)}",
        "",
        text,
        "",
        f"Paired per-class Few accuracy, (c) - (a): {json.dumps(paired)}",
        "",
        *[f"- {t}" for t in targets],
        "",
        f"![Tiny-ImageNet-LT variants]({fig})",
        "",
    ]
    with open(args.results, "a") as f:  # append only: other benchmarks write here too
        f.write("\n".join(section))


if __name__ == "__main__":
    main()
