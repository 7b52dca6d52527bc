"""ImageNet-1k top-1 of the converted EfficientNet-Lite0 on the Tiny-ImageNet validation images (their labels are
ImageNet wnids): is the converted folder the trained network, and what does the fine-tuning resolution cost?

Usage:
    python benchmarks/pretrained_top1.py                                  # convert, then 2,000 images at 224 and 96 px
    python benchmarks/pretrained_top1.py --folder outputs/efficientnet-lite0 --max_images 10000 --sizes 224

The converted folder is loaded as any checkpoint is (``AutoModelForImageClassification`` + ``AutoImageProcessor``;
``--sizes`` only changes the processor's output size). Reported: top-1 over the 1000 ImageNet classes, and over the
200 Tiny-ImageNet classes only (the logits of the other 800 dropped). Lite0's ImageNet-1k training covers these
classes (and these are ImageNet images), so the numbers say the conversion works, not how well it transfers.
Results are appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

from neighbor_lt.efficientnet_lite import convert_efficientnet_lite0, imagenet1k_classes  # noqa: E402
from neighbor_lt.results_md import append_results, results_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def top1(folder: str, images, labels: torch.Tensor, tiny: torch.Tensor, size: int, batch: int) -> dict:
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, size={"height": size, "width": size})
    preds, preds200, t0 = [], [], time.time()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            pixels = processor(images[i : i + batch], return_tensors="pt")["pixel_values"]
            logits = model(pixel_values=pixels).logits
            preds.append(logits.argmax(1))
            preds200.append(tiny[logits[:, tiny].argmax(1)])
    pred, pred200 = torch.cat(preds), torch.cat(preds200)
    return {
        "size": size,
        "top1_1000": 100 * (pred == labels).float().mean().item(),
        "top1_200": 100 * (pred200 == labels).float().mean().item(),
        "images_per_s": len(images) / (time.time() - t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=None, help="a converted folder (default: convert into a temp folder)")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "tiny-imagenet-200"))
    parser.add_argument("--max_images", type=int, default=2000, help="a class-balanced subset (50 per class: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results_md", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    parser.add_argument("--no_record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.folder or convert_efficientnet_lite0(tempfile.mkdtemp(prefix="lite0-"))
    ds = load_dataset("parquet", data_files={"valid": os.path.join(args.data, "valid-*.parquet")})["valid"]
    if args.max_images < len(ds):
        ds = ds.select(range(0, len(ds), len(ds) // args.max_images)[: args.max_images])
    index = {c["wnid"]: c["label"] for c in imagenet1k_classes()}
    labels = torch.tensor([index[w] for w in ds["wnid"]])
    tiny = torch.tensor(sorted({index[w] for w in ds.unique("wnid")}))
    images = [im.convert("RGB") for im in ds["image"]]
    rows = [top1(folder, images, labels, tiny, size, args.batch) for size in args.sizes]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    table = "\n".join(
        ["| input (64 px upsampled to) | top-1 / 1000 classes | top-1 / the 200 Tiny-ImageNet classes | images/s |",
         "|---|---|---|---|"]
        + [f"| {r['size']} px | {r['top1_1000']:.2f} | {r['top1_200']:.2f} | {r['images_per_s']:.1f} |" for r in rows]
    )  # fmt: skip
    print(f"{len(images)} images, {len(tiny)} classes, load average {load}\n{table}")
    if not args.no_record:
        body = (
            f"{len(images)} Tiny-ImageNet validation images ({len(tiny)} classes, the same number of each), load "
            f"average {load} (the machine is shared: images/s are indicative).\n\n{table}\n\nThe published "
            "ImageNet-1k top-1 of EfficientNet-Lite0 is 75.1% (224 px, ImageNet's own validation set). Its "
            "training set covers these classes and images, so transfer numbers on Tiny-ImageNet are optimistic."
        )
        command = "python benchmarks/pretrained_top1.py " + shlex.join(sys.argv[1:])
        machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"
        append_results(
            args.results_md,
            results_section("EfficientNet-Lite0 converted: ImageNet top-1 on Tiny-ImageNet", command, machine, body),
        )


if __name__ == "__main__":
    main()
