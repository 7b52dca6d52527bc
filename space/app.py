"""neighbor-lt demo Space: classify an image with a masked, target-only long-tail model and show its neighbors.

The model is a folder written by `recipes/train.py` (or its Hub repository): a plain `transformers` image classifier
plus `neighbor_lt.json`, which lists each target class's training-image count and the auxiliary "neighbor" classes
that were trained beside it (their classifier rows were removed before saving).

Usage:
    python space/app.py                                  # the model in $NEIGHBOR_LT_MODEL, else the demo model
    python space/app.py --model outputs/demo --port 7860 # a local training output folder
    NEIGHBOR_LT_MODEL=me/my-model python space/app.py    # a Hub repository

The app's API endpoint is `/classify` (an image file in; top-5 labels, the neighbor text and a preview out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoImageProcessor, AutoModelForImageClassification

DEFAULT_MODEL = "neighbor-lt/demo-tiny-imagenet-lt"
MAX_FILE_MB = 20  # larger files get the inline refusal
MAX_UPLOAD_MB = 10 * MAX_FILE_MB  # the server's hard limit (Gradio refuses larger uploads itself, with a pop-up)
MAX_MEGAPIXELS = float(os.environ.get("NEIGHBOR_LT_MAX_MEGAPIXELS", 40))
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.jpg"))


# --------------------------------------------------------------------------------------------------------------------
# neighbor_lt.json: the reading of neighbor_lt.run_folder.RunInfo, copied here so that the Space installs from this
# folder alone (neighbor-lt is not on PyPI). tests/test_space.py checks that both read a run folder alike.
# --------------------------------------------------------------------------------------------------------------------
INFO_FILE = "neighbor_lt.json"


@dataclass
class RunInfo:
    """What a target-only model was trained beside: target classes and their training counts, the auxiliary
    (neighbor) classes and the targets each was queried from, the loss and the Many / Few thresholds."""

    target_classes: list[str] = field(default_factory=list)
    target_train_counts: list[int] = field(default_factory=list)
    auxiliary_classes: list[str] = field(default_factory=list)
    neighbor_of: dict[str, list[str]] = field(default_factory=dict)
    loss: str | None = None
    many_threshold: int = 100
    few_threshold: int = 20

    @classmethod
    def read(cls, folder: str) -> RunInfo | None:
        """The folder's ``neighbor_lt.json``; None when it has none (a model from elsewhere). Unknown keys are
        ignored."""
        path = os.path.join(folder, INFO_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None})

    def count_of(self, name: str) -> int | None:
        if name not in self.target_classes:
            return None
        i = self.target_classes.index(name)
        return int(self.target_train_counts[i]) if i < len(self.target_train_counts) else None

    def group_of(self, name: str) -> str | None:
        """many (more than many_threshold images), few (fewer than few_threshold) or medium."""
        count = self.count_of(name)
        if count is None:
            return None
        return "many" if count > self.many_threshold else "few" if count < self.few_threshold else "medium"

    def neighbors_of(self, name: str) -> list[str]:
        return [aux for aux, targets in self.neighbor_of.items() if name in targets]


class ModelNotFound(Exception):
    """The --model source is neither a model folder nor a Hub model this machine can get (a one-line message)."""


def model_folder(source: str) -> str:
    """The local folder of ``source``: the folder itself, or the snapshot of a Hub model id."""
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ModelNotFound(f"{source} has no config.json: pass the output_dir of recipes/train.py as --model")
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(source, allow_patterns=["*.json", "*.safetensors"])
    except HFValidationError:  # not the shape of a Hub id (a path such as ./outputs/demo or /tmp/x)
        raise ModelNotFound(f"model folder not found: {source} (pass --model with an existing folder)") from None
    except Exception as err:  # offline, no such repository, no access: the Hub says which, in one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFound(
            f"{source}: no such folder, and not a Hub model this machine can download ({type(err).__name__}: {reason})"
        ) from None


def load_model(source: str):
    """(model, image processor, the run's neighbor_lt.json or None) from a local folder or a Hub repository id."""
    folder = model_folder(source)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    return model, processor, RunInfo.read(folder)


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


def header(source: str, model, info: RunInfo | None) -> str:
    """The page header: what the model is, from its ``neighbor_lt.json`` (a baseline is not called neighbor-trained)."""
    classes = f"Model `{source}`: {model.config.num_labels} target classes"
    num_aux = len(info.auxiliary_classes) if info else 0
    if info is None:
        return (
            "# Long-tail image classification\n"
            f"{classes} (it has no `neighbor_lt.json`: how it was trained is not known). Upload an image to see the "
            "top-5 target classes."
        )
    if info.loss == "neighbor_silencing" and num_aux:
        title, how = (
            "Long-tail classification that learned from neighbors",
            (f"trained beside {num_aux} auxiliary neighbor classes with the neighbor-silencing loss"),
        )
    else:
        beside = f"beside {num_aux} auxiliary classes" if num_aux else "without neighbor classes"
        title, how = "Long-tail classification: a baseline", f"trained {beside} with the `{info.loss}` loss"
    return (
        f"# {title}\n{classes}, {how} ([neighbor-lt](https://github.com/neighbor-lt/neighbor-lt)). Upload an image "
        "to see the top-5 target classes and the neighbor categories used for the top one."
    )


def build_demo(source: str):
    """The Gradio app (a ``gr.Blocks``) for the model at ``source`` (a folder or a Hub id)."""
    import gradio as gr

    model, processor, info = load_model(source)

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
        gr.Markdown(header(source, model, info))
        with gr.Row():
            with gr.Column():
                # no file_types: Gradio would refuse other files with a pop-up; open_image refuses them inline
                upload = gr.File(label="Image (JPEG, PNG, WebP, ...)", type="filepath", elem_id="upload")
                preview = gr.Image(label="Uploaded image", interactive=False, height=256, elem_id="preview")
            with gr.Column():
                top5 = gr.Label(num_top_classes=5, label="Top-5 target classes", elem_id="top5")
                neighbors = gr.Markdown(elem_id="neighbors")
        # one event, one endpoint: an example click sets the upload, and its change event classifies it
        upload.change(classify, inputs=upload, outputs=[top5, neighbors, preview], api_name="classify")
        if EXAMPLES:
            gr.Examples(EXAMPLES, inputs=upload, example_labels=[Path(p).stem.replace("_", " ") for p in EXAMPLES])
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    on_spaces = bool(os.environ.get("SPACE_ID"))  # Hugging Face Spaces set it; there the app must listen outside
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("NEIGHBOR_LT_MODEL", DEFAULT_MODEL),
        help="output_dir of recipes/train.py, or a Hub model id ($NEIGHBOR_LT_MODEL)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_spaces else "127.0.0.1"),
        help="address to listen on ($GRADIO_SERVER_NAME; 0.0.0.0 on Hugging Face Spaces, which set $SPACE_ID); "
        "0.0.0.0 serves other machines too",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="port to listen on ($GRADIO_SERVER_PORT)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        hint = 'pip install "neighbor-lt[space]" (or gradio at the sdk_version of space/README.md)'
        print(f"gradio is not installed: {hint}", file=sys.stderr)
        return 2
    print(f"loading {args.model}")
    try:
        demo = build_demo(args.model)
    except ModelNotFound as err:
        print(f"--model: {err}", file=sys.stderr)
        return 2
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=f"{MAX_UPLOAD_MB}mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
