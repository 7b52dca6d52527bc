"""neighbor-lt demo Space: classify an image with a masked, target-only long-tail model and show its neighbors.

The model is a folder written by `recipes/train.py` (or its Hub repository): a plain `transformers` image classifier
plus `neighbor_lt.json`, which lists each target class's training-image count and the auxiliary "neighbor" classes
that were trained beside it (their classifier rows were removed before saving).

Usage:
    python space/app.py                                  # the model in $NEIGHBOR_LT_MODEL, else the demo model
    python space/app.py --model outputs/demo --port 7860 # a local training output folder
    NEIGHBOR_LT_MODEL=me/my-model python space/app.py    # a Hub repository
"""

import argparse
import os
from pathlib import Path

import gradio as gr
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoImageProcessor, AutoModelForImageClassification

from neighbor_lt.run_folder import RunFolder, RunInfo

DEFAULT_MODEL = "neighbor-lt/demo-tiny-imagenet-lt"
MAX_FILE_MB = 20  # larger files get the inline refusal
MAX_UPLOAD_MB = 10 * MAX_FILE_MB  # the server's hard limit (Gradio refuses larger uploads itself, with a pop-up)
MAX_MEGAPIXELS = float(os.environ.get("NEIGHBOR_LT_MAX_MEGAPIXELS", 40))
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.jpg"))


def load_model(source: str):
    """(model, image processor, the run's neighbor_lt.json or None) from a local folder or a Hub repository id."""
    if os.path.isdir(source):
        folder = source
    else:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, allow_patterns=["*.json", "*.safetensors"])
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    return model, processor, RunFolder(folder).read_info()


def open_image(path: str) -> Image.Image:
    """The uploaded file as an RGB image; raises ValueError with a message meant for the user."""
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > MAX_FILE_MB:
        raise ValueError(f"This file is {size_mb:.0f} MB; please upload an image under {MAX_FILE_MB} MB.")
    try:
        image = Image.open(path)  # reads the header only: the pixel count is checked before decoding
    except (UnidentifiedImageError, OSError) as err:
        name = os.path.basename(path)
        raise ValueError(f"`{name}` is not an image this demo can read (JPEG, PNG, WebP, ...).") from err
    width, height = image.size
    if width * height > MAX_MEGAPIXELS * 1e6:
        raise ValueError(
            f"This image is too large: {width} x {height} pixels ({width * height / 1e6:.0f} megapixels). "
            f"Please upload one under {MAX_MEGAPIXELS:.0f} megapixels."
        )
    try:
        image.draft("RGB", (1024, 1024))  # JPEG: decode at reduced scale, the model needs a few hundred pixels
        return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"This image could not be decoded ({err}).") from err


def neighbor_text(label: str, info: RunInfo | None) -> str:
    """Markdown about the top class: its training images, group (the run's Many / Few thresholds) and the neighbor
    classes trained beside it."""
    if info is None or label not in info.target_classes:
        return f"### {label}\nThis model has no `neighbor_lt.json`: no neighbor information."
    count, group = info.count_of(label), info.group_of(label)
    neighbors = info.neighbors_of(label)
    lines = [f"### Top class: {label}"]
    if count is not None:
        lines.append(f"{count} training images ({group.capitalize()} group).")
    if neighbors:
        lines.append("Neighbor categories used in training: " + ", ".join(f"**{n}**" for n in neighbors) + ".")
        lines.append("Their images were trained beside this class; their classifier rows were removed afterwards.")
    else:
        lines.append("No neighbor categories were used in training for this class.")
    return "\n\n".join(lines)


def build_demo(source: str) -> gr.Blocks:
    """The Gradio app for the model at ``source`` (a folder or a Hub id)."""
    model, processor, info = load_model(source)
    num_aux = len(info.auxiliary_classes) if info else 0

    def classify(path):
        if not path:
            return None, "Upload an image to classify it.", None
        try:
            image = open_image(path)
        except ValueError as err:
            return None, f"**Cannot classify this file.** {err}", None
        with torch.no_grad():
            logits = model(**processor(images=image, return_tensors="pt")).logits[0]
        probs = logits.softmax(-1)
        top = probs.topk(min(5, probs.numel()))
        labels = {model.config.id2label[int(i)]: float(p) for p, i in zip(top.values, top.indices)}
        scale = 256 / max(image.size)  # a readable preview: tiny images up, large ones down
        preview = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        return labels, neighbor_text(next(iter(labels)), info), preview

    with gr.Blocks(title="neighbor-lt demo") as demo:
        gr.Markdown(
            "# Long-tail classification that learned from neighbors\n"
            f"Model `{source}`: {model.config.num_labels} target classes, trained beside {num_aux} auxiliary "
            "neighbor classes with the neighbor-silencing loss "
            "([neighbor-lt](https://github.com/neighbor-lt/neighbor-lt)). Upload an image to see the top-5 "
            "target classes and the neighbor categories used for the top one."
        )
        with gr.Row():
            with gr.Column():
                # no file_types: Gradio would refuse other files with a pop-up; open_image refuses them inline
                upload = gr.File(label="Image (JPEG, PNG, WebP, ...)", type="filepath", elem_id="upload")
                preview = gr.Image(label="Uploaded image", interactive=False, height=256, elem_id="preview")
            with gr.Column():
                top5 = gr.Label(num_top_classes=5, label="Top-5 target classes", elem_id="top5")
                neighbors = gr.Markdown(elem_id="neighbors")
        outputs = [top5, neighbors, preview]
        if EXAMPLES:
            gr.Examples(
                EXAMPLES, inputs=upload, outputs=outputs, fn=classify, cache_examples=False, run_on_click=True,
                example_labels=[Path(p).stem.replace("_", " ") for p in EXAMPLES],
            )  # fmt: skip
        upload.change(classify, inputs=upload, outputs=outputs)
    return demo


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("NEIGHBOR_LT_MODEL", DEFAULT_MODEL))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args()
    print(f"loading {args.model}")
    build_demo(args.model).launch(server_name=args.host, server_port=args.port, max_file_size=f"{MAX_UPLOAD_MB}mb")
