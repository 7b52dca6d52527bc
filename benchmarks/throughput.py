"""Training and filtering throughput: is the input pipeline, the Trainer or the embedder a bottleneck?

Usage:
    python benchmarks/throughput.py                                   # demo ViT (128 wide, 4 layers, 64 px), CPU
    python benchmarks/throughput.py --model-size base --image-size 224 --bf16 --device cuda   # ViT-B/16 on a GPU
    python benchmarks/throughput.py --config recipes/tiny_imagenet_lt/resnet/train.yaml --batch-size 128 \
        --aux_dataset outputs/tiny_imagenet_lt/ablate/curate/neighbors/aux_dataset   # the ablation's model and data

Three comparisons, each a ratio of images/s (target in brackets):

1. input pipeline (>= 0.9x): ``NeighborSilencingTrainer`` fed by the real input pipeline, built exactly as
   ``recipes/train.py`` builds it from ``recipes/demo/train.yaml`` (Parquet decode, ``ImageTransform`` with
   RandAugment ``rand-m9-mstd0.5``, ``MergedImageDataset`` + ``AuxiliaryCappedSampler``, the recipe's
   ``dataloader_num_workers``, the Trainer's collator) against the same Trainer fed the same samples as pre-made
   tensors (in memory, no worker process).
2. Trainer overhead (>= 0.95x): that tensor-fed Trainer (``neighbor_silencing`` loss, the recipe's AdamW settings,
   scheduler and gradient clipping) against a plain PyTorch loop: same initial weights, same tensors, same batch
   size, ``torch.optim.AdamW`` with the same lr / betas / weight decay, ``F.cross_entropy``.
3. prototype-filter embedding (>= 0.8x): ``neighbor_lt.retrieval.filters.ImageEmbedder.embed`` on decoded PIL images
   (its image processor, batching, L2-normalisation, copy to NumPy) against the raw backbone forward on the same
   batches already turned into tensors.

Training rates count the images of steps ``--warmup + 1 .. --warmup + --steps`` (timed at each optimizer step's end,
after a device sync); every comparison runs its contenders interleaved ``--repeats`` times (A, B, C, A, B, C, ...)
and reports medians, because the CPU machine this was written on is shared. Results are appended to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

from neighbor_lt import train  # noqa: E402
from neighbor_lt.results_md import add_results_arguments, machine_line, record_benchmark  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
DEMO_CONFIG = os.path.join(ROOT, "recipes", "demo", "train.yaml")
SIZES = {  # ViT sizes as `config_overrides` of the recipe
    "demo": "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256,patch_size=8",
    "base": "hidden_size=768,num_hidden_layers=12,num_attention_heads=12,intermediate_size=3072,patch_size=16",
}


class StepTimer(TrainerCallback):
    """Records the time at the end of every optimizer step (after a device sync)."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append((time.perf_counter(), time.process_time()))


def images_per_second(times, batch_size, warmup):
    """(images per wall second, images per CPU second of this process) over the steps after ``warmup``.

    ``times[i]`` is (wall, process CPU) at the end of step i + 1. The CPU rate does not count a DataLoader worker.
    """
    images = batch_size * (len(times) - warmup)
    return images / (times[-1][0] - times[warmup - 1][0]), images / (times[-1][1] - times[warmup - 1][1])


class TensorSamples(torch.utils.data.Dataset):
    """Pre-made samples ``{"pixel_values": tensor, "labels": int}``, served from memory."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


# ---- setup, as recipes/train.py does it -------------------------------------------------------------------------
def build(args, workdir):
    steps = args.warmup + args.steps
    argv = ["--config", args.config, "--image_size",
            str(args.image_size), "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(steps),
            "--output_dir", workdir, "--logging_steps", "100000", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--bf16", str(args.bf16).lower(), "--use_cpu", str(args.device == "cpu").lower()]  # fmt: skip
    if args.model_size:
        argv += ["--config_overrides", SIZES[args.model_size]]
    argv += list(getattr(args, "recipe_args", []))
    if args.input_pipeline:
        argv += ["--input_pipeline", args.input_pipeline]
        if args.input_pipeline == "tensor":
            argv += ["--dataloader_num_workers", "0"]  # the tensor pipeline needs no worker process
    config = train.load_config(argv)  # the recipe's own wiring: data -> model -> Trainer
    set_seed(config.training.seed)
    data = train.build_data(config)
    parts = train.build_model(config, data)
    sampler, train_dataset = data.merged.sampler, parts.train_dataset
    batch_augment, collator = parts.batch_augment, parts.collator
    # the same samples as pre-made tensors: the pipeline's output for the first epochs' order, made once
    order = np.concatenate([sampler.epoch_indices(e) for e in range(-(-steps * args.batch_size // len(sampler)))])
    order = order[: steps * args.batch_size]
    if batch_augment is None:
        samples = [train_dataset[int(i)] for i in order]
    else:  # the tensor pipeline: cached uint8 rows, then the batch augmentation the Trainer applies
        samples = []
        for i in range(0, len(order), args.batch_size):
            batch = collator(train_dataset.__getitems__(order[i : i + args.batch_size]))
            pixels = batch_augment(batch["pixel_values"], train=True)
            samples += [{"pixel_values": p, "labels": int(y)} for p, y in zip(pixels, batch["labels"])]
    return {
        "config": config, "data": data, "parts": parts, "batch_augment": batch_augment, "collator": collator,
        "data_args": config.data, "training_args": config.training, "model": parts.model,
        "processor": parts.processor, "train_dataset": train_dataset, "sampler": sampler, "samples": samples,
        "target": data.target,
    }  # fmt: skip


# ---- contenders ---------------------------------------------------------------------------------------------
def run_trainer(setup, args, real_pipeline: bool) -> tuple[float, float]:
    training_args = copy.deepcopy(setup["training_args"])
    if real_pipeline:
        dataset, sampler = setup["train_dataset"], setup["sampler"]
        setup["sampler"].set_epoch(0)
    else:
        dataset = TensorSamples(setup["samples"])
        sampler = torch.utils.data.SequentialSampler(dataset)
        training_args.dataloader_num_workers = 0
    timer = StepTimer()
    trainer = train.build_trainer(
        setup["config"], setup["data"], setup["parts"], model=copy.deepcopy(setup["model"]), args=training_args,
        train_dataset=dataset, eval_dataset=None, compute_metrics=None, train_sampler=sampler, callbacks=[timer],
        batch_augment=setup["batch_augment"] if real_pipeline else None,
        data_collator=setup["collator"] if real_pipeline else None,
    )  # fmt: skip
    trainer.train()
    return images_per_second(timer.times, args.batch_size, args.warmup)


def run_plain_loop(setup, args) -> tuple[float, float]:
    training_args = setup["training_args"]
    device = torch.device(args.device)
    model = copy.deepcopy(setup["model"]).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training_args.learning_rate, weight_decay=training_args.weight_decay,
        betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon,
    )  # fmt: skip
    samples = setup["samples"]
    batches = [
        (torch.stack([s["pixel_values"] for s in samples[i : i + args.batch_size]]),
         torch.tensor([s["labels"] for s in samples[i : i + args.batch_size]]))
        for i in range(0, len(samples), args.batch_size)
    ]  # fmt: skip
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    times = []
    for pixel_values, labels in batches:
        pixel_values, labels = pixel_values.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            logits = model(pixel_values=pixel_values).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter(), time.process_time()))
    return images_per_second(times, args.batch_size, args.warmup)


def build_embedding(setup, args, workdir):
    """A backbone (the classifier's config without its head) saved with its processor, as the filter stage loads it."""
    from transformers import AutoModel

    from neighbor_lt.retrieval.filters import ImageEmbedder

    path = os.path.join(workdir, "embedder")
    backbone = AutoModel.from_config(setup["model"].config)
    backbone.save_pretrained(path)
    setup["processor"].save_pretrained(path)
    embedder = ImageEmbedder(path, pooling="cls", batch_size=args.embed_batch_size, device=args.device)
    images = [image.convert("RGB") for image in setup["target"]["train"][: args.embed_images]["image"]]
    batches = [
        embedder.processor(images=images[i : i + args.embed_batch_size], return_tensors="pt")["pixel_values"]
        for i in range(0, len(images), args.embed_batch_size)
    ]
    return embedder, images, batches


def run_embedder(embedder, images, args) -> tuple[float, float]:
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    start, cpu = time.perf_counter(), time.process_time()
    with autocast:
        embedder.embed(images, total=len(images), desc="embed")
    return len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


def run_raw_forward(embedder, batches, args) -> tuple[float, float]:
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    model = embedder.model
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad(), autocast:
        for pixel_values in batches:
            model(pixel_values=pixel_values.to(args.device)).last_hidden_state[:, 0]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    images = sum(len(b) for b in batches)
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO_CONFIG, help="train recipe YAML (model, data, input pipeline)")
    parser.add_argument("--model-size", choices=list(SIZES), default=None, help="ViT size instead of the config's")
    parser.add_argument("--input_pipeline", choices=["pil", "tensor"], default=None, help="default: the config's")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3, help="training steps not timed")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of each contender")
    parser.add_argument("--embed-images", type=int, default=512)
    parser.add_argument("--embed-batch-size", type=int, default=64, help="the filter stage's default batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_results_arguments(parser)
    args, args.recipe_args = parser.parse_known_args()  # the rest goes to the train recipe, e.g. --aux_dataset DIR
    if args.threads:
        torch.set_num_threads(args.threads)
    for lib in (datasets, transformers):
        lib.utils.logging.set_verbosity_error()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="throughput_") as workdir:
        setup = build(args, workdir)
        rates = {"trainer_pipeline": [], "trainer_tensors": [], "plain_loop": [], "embedder": [], "raw_forward": []}
        contenders = {
            "trainer_pipeline": lambda: run_trainer(setup, args, real_pipeline=True),
            "trainer_tensors": lambda: run_trainer(setup, args, real_pipeline=False),
            "plain_loop": lambda: run_plain_loop(setup, args),
        }
        for repeat in range(args.repeats):  # A B C, C B A, ...: a drifting load hits every contender alike
            for name in list(contenders)[:: 1 if repeat % 2 == 0 else -1]:
                rates[name].append(contenders[name]())
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1][0]:.1f}" for k, v in rates.items() if v), flush=True)
        embedder, images, batches = build_embedding(setup, args, workdir)
        run_embedder(embedder, images[: args.embed_batch_size], args)  # warm-up
        run_raw_forward(embedder, batches[:1], args)
        for repeat in range(args.repeats):
            pair = [("embedder", lambda: run_embedder(embedder, images, args)),
                    ("raw_forward", lambda: run_raw_forward(embedder, batches, args))]  # fmt: skip
            for name, fn in pair[:: 1 if repeat % 2 == 0 else -1]:
                rates[name].append(fn())

    med = {k: statistics.median(r[0] for r in v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(r[1] for r in v) for k, v in rates.items()}
    comparisons = [
        ("Trainer, real input pipeline vs pre-made tensors", "trainer_pipeline", "trainer_tensors", 0.9),
        ("Trainer (neighbor_silencing) vs plain PyTorch loop", "trainer_tensors", "plain_loop", 0.95),
        ("prototype-filter ImageEmbedder vs raw forward", "embedder", "raw_forward", 0.8),
    ]
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    model_cfg = setup["model"].config
    skip = ("id2label", "label2id", "architectures", "transformers_version", "dtype", "stage_names", "out_features")
    model_desc = (
        SIZES[args.model_size]
        if args.model_size
        else {k: v for k, v in model_cfg.to_diff_dict().items() if k not in skip and not k.startswith("out_")}
    )
    model_line = (
        f"{model_cfg.model_type} `{model_desc}`, {args.image_size} px, batch {args.batch_size}, "
        f"{'bf16' if args.bf16 else 'fp32'}, device {args.device}, {threads} torch threads; training: "
        f"{args.warmup} warm-up + {args.steps} timed steps, recipe `{os.path.relpath(args.config, ROOT)}` with "
        f"input_pipeline={setup['data_args'].input_pipeline} (dataloader_num_workers="
        f"{setup['training_args'].dataloader_num_workers}); embedding: "
        f"{args.embed_images} images in batches of {args.embed_batch_size}; medians of {args.repeats} interleaved "
        f"repeats (per-repeat figures in brackets)."
    )
    lines = [
        model_line,
        "",
        "| comparison | ours images/s | reference images/s | ratio | target | met | ratio per CPU-second |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, ours, ref, target in comparisons:
        ratio = med[ours] / med[ref]
        per = lambda key: ", ".join(f"{v[0]:.0f}" for v in rates[key])  # noqa: E731
        lines.append(
            f"| {label} | {med[ours]:.0f} [{per(ours)}] | {med[ref]:.0f} [{per(ref)}] | {ratio:.2f}x "
            f"| >= {target}x | {'met' if ratio >= target else 'NOT met'} | {med_cpu[ours] / med_cpu[ref]:.2f}x |"
        )
    lines += [
        "",
        "Ratios are of wall-clock images/s (the targets); the last column divides images per CPU-second of the "
        "benchmark process, which a shared machine disturbs less (it leaves out a DataLoader worker's CPU, so it "
        f"flatters the real-pipeline row). Wall time {time.perf_counter() - started:.0f} s; load average "
        f"{load_before:.1f} before, {load:.1f} after.",
    ]
    report = "\n".join(lines)
    print(report)
    title = "Training and filtering throughput"
    if record_benchmark(args, RESULTS, title, "benchmarks/throughput.py", machine_line(args.device), report):
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
