"""Figures of a trained run (used by ``recipes/analyze.py``; the model card shows them).

1. :func:`plot_per_class_accuracy`: per-class accuracy against training-image count (log scale), colored by
   Many / Medium / Few, one marker per compared run.
2. :func:`plot_feature_map`: a 2-D projection (UMAP or PCA) of the features of a head class, a confusable tail
   class and their neighbor classes, before and after training (the paper's figure 2).
3. :func:`plot_group_accuracy`: Overall / Many / Medium / Few bars for several runs.

The plotting functions take plain data and return the saved path; :func:`extract_features` and
:func:`project_2d` produce the data of the feature map.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .extras import require

matplotlib = require("matplotlib", "neighbor_lt.plots")  # an extra, not a core dependency

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .metrics import GROUPS, present_groups  # noqa: E402
from .run_folder import EVAL_FILE, PER_CLASS_FILE, RunFolder, RunInfo  # noqa: E402

logger = logging.getLogger(__name__)

GROUP_COLORS = {"many": "#1b7837", "medium": "#e08214", "few": "#c51b7d"}
GROUP_BANDS = {"many": "#d9f0d3", "medium": "#fee0b6", "few": "#fde0ef"}
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
RUN_LINESTYLES = ("-", "--", ":", "-.")
# Okabe-Ito colours (told apart also with colour-vision deficiencies): head, tail, then one per neighbor class
HEAD_COLOR, TAIL_COLOR = "#0072B2", "#D55E00"
NEIGHBOR_COLORS = ("#56B4E9", "#009E73", "#E69F00", "#CC79A7", "#F0E442", "#000000", "#999999")


@dataclass
class Run:
    """What a training output folder holds for the plots."""

    folder: str
    label: str
    results: dict = field(default_factory=dict)  # eval_results.json
    info: RunInfo = field(default_factory=RunInfo)  # neighbor_lt.json
    per_class: list[dict] = field(default_factory=list)  # per_class_accuracy.csv rows
    budget: str = ""  # the training budget, e.g. "20 epochs, 140 steps, 8,960 images" (see :func:`training_budget`)


def load_run(folder: str, label: str | None = None) -> Run:
    """Read ``eval_results.json``, ``neighbor_lt.json`` and ``per_class_accuracy.csv`` of a ``recipes/train.py`` run.

    Example:
        >>> run = load_run("outputs/demo")  # doctest: +SKIP
        >>> run.results["few"], len(run.per_class)  # doctest: +SKIP
        (0.31, 20)

    Args:
        folder: the run's ``output_dir``.
        label: name in legends; ``<folder name> (<loss>)`` by default.
    """
    run = RunFolder(folder)
    results, per_class = run.read_eval_results(), run.read_per_class()
    missing = [name for name, value in ((EVAL_FILE, results), (PER_CLASS_FILE, per_class)) if value is None]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: was it evaluated by recipes/train.py?")
    info = run.read_info() or RunInfo()
    if label is None:
        label = os.path.basename(os.path.normpath(folder))
        if info.loss:
            aux = len(info.auxiliary_classes)
            label += f" ({info.loss}, {aux} aux)" if aux else f" ({info.loss})"
    budget = training_budget(results, run.read_train_results() or {}, run.read_args())
    return Run(folder=folder, label=label, results=results, info=info, per_class=per_class, budget=budget)


def training_budget(results: dict, train_results: dict, args: dict) -> str:
    """How much a run trained, for legends: epochs, optimizer steps and training images seen, as far as known.

    Example:
        >>> training_budget({"train_steps": 140, "train_images": 8960}, {"epoch": 20.0}, {})
        '20 epochs, 140 steps, 8,960 images'

    Args:
        results: ``eval_results.json`` (``train_steps``, ``train_images``).
        train_results: ``train_results.json`` (the Trainer's ``epoch``).
        args: ``args.yaml`` (``num_train_epochs`` / ``max_steps`` when the others are missing).
    """
    epochs = train_results.get("epoch")
    steps = results.get("train_steps")
    if steps is None and (args.get("max_steps") or 0) > 0:
        steps = args["max_steps"]
    if epochs is None and steps is None and args.get("num_train_epochs") is not None:
        epochs = args["num_train_epochs"]
    parts = []
    if epochs is not None:
        epochs = float(epochs)
        parts.append(f"{epochs:.0f} epoch{'s' if round(epochs) != 1 else ''}" if epochs == round(epochs)
                     else f"{epochs:.1f} epochs")  # fmt: skip
    if steps is not None:
        parts.append(f"{int(steps):,} steps")
    if results.get("train_images") is not None:
        parts.append(f"{int(results['train_images']):,} images")
    return ", ".join(parts)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def plot_per_class_accuracy(runs: Sequence[Run], path: str) -> str:
    """Per-class accuracy (%) against training-image count (log x), colored by group, one marker per run.

    Horizontal segments give each run's mean accuracy over the classes of each group (a class mean, not the
    image-weighted group accuracy of the evaluation table).
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    counts = np.array([r["train_count"] for run in runs for r in run.per_class], dtype=float)
    lo, hi = max(0.8, counts.min() / 1.4), counts.max() * 1.4
    many, few = runs[0].info.many_threshold, runs[0].info.few_threshold
    bands = {"few": (lo, few), "medium": (few, many + 0.5), "many": (many + 0.5, hi)}
    present = {r["group"] for run in runs for r in run.per_class}  # no band for a group without classes
    for group, (a, b) in bands.items():
        if group in present and b > a and a < hi and b > lo:
            ax.axvspan(max(a, lo), min(b, hi), color=GROUP_BANDS[group], zorder=0, lw=0)
            ax.text(np.sqrt(max(a, lo) * min(b, hi)), 102, group.capitalize(), ha="center", va="bottom", fontsize=9)
    for i, run in enumerate(runs):
        jitter = 1.035 ** (i - (len(runs) - 1) / 2)  # side by side when several runs share a class
        x = np.array([r["train_count"] for r in run.per_class], dtype=float) * jitter
        y = 100 * np.array([r["accuracy"] for r in run.per_class], dtype=float)
        colors = [GROUP_COLORS[r["group"]] for r in run.per_class]
        marker = RUN_MARKERS[i % len(RUN_MARKERS)]
        ax.scatter(x, y, c=colors, marker=marker, s=36, edgecolors="black", linewidths=0.4, zorder=3, alpha=0.9)
        linestyle = RUN_LINESTYLES[i % len(RUN_LINESTYLES)]
        ax.plot([], [], marker=marker, ls=linestyle, color="black", mfc="white", label=run.label)  # legend entry
        groups = np.array([r["group"] for r in run.per_class])
        for group in GROUPS:
            keep = (groups == group) & ~np.isnan(y)
            if keep.any():
                (a, b) = bands[group]
                ax.hlines(
                    y[keep].mean(), max(a, lo), min(b, hi), colors="black", zorder=2, lw=1.2,
                    linestyles=linestyle,
                )  # fmt: skip
    for group in GROUPS:
        if group in present:
            ax.scatter([], [], c=GROUP_COLORS[group], s=36, label=f"{group.capitalize()} class")
    log_x_with_labels(ax)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-4, 110)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("top-1 accuracy of the class (%)")
    ax.set_title("Per-class accuracy against training-image count (lines: class mean per group)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def log_x_with_labels(ax) -> None:
    """A log x scale labelled at 1, 2, 5, 10, 20, 50 ... (matplotlib's default labels only the powers of ten)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_group_accuracy(runs: Sequence[Run], path: str) -> str:
    """Grouped bars: Overall / Many / Medium / Few top-1 accuracy (%) of each run, values on the bars; the legend
    gives each run's training budget, so runs of different lengths are not mistaken for a like-for-like win."""
    keys = ("overall", *present_groups(runs[0].results))  # a group without classes gets no bars
    sizes = runs[0].results.get("group_sizes") or {}
    ticks = ["Overall"] + [f"{g.capitalize()}\n({sizes.get(g, '?')} classes)" for g in keys[1:]]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 + 1.3 * len(runs) * 1.2), 4.2))
    width = 0.8 / len(runs)
    cmap = plt.get_cmap("tab10")
    for i, run in enumerate(runs):
        values = [100 * float(run.results.get(k, float("nan"))) for k in keys]
        x = np.arange(len(keys)) + (i - (len(runs) - 1) / 2) * width
        label = f"{run.label}\n{run.budget}" if run.budget else run.label
        bars = ax.bar(x, np.nan_to_num(values), width * 0.92, label=label, color=cmap(i % 10))
        for bar, value in zip(bars, values):
            text = "n/a" if np.isnan(value) else f"{value:.1f}"
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.8, text, ha="center", fontsize=8)
    top = max((100 * np.nan_to_num(float(r.results.get(k) or 0)) for r in runs for k in keys), default=0)
    ax.set_ylim(0, min(100, top + 12) if top < 88 else 105)
    ax.set_xticks(np.arange(len(keys)), ticks)
    ax.set_ylabel("top-1 accuracy (%)")
    split = runs[0].results.get("split", "evaluation")
    ax.set_title(f"Accuracy by group on the {split} split")
    ax.legend(fontsize=8, loc="upper right", frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------------
# Feature map
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(model, images: Sequence, transform, batch_size: int = 64) -> np.ndarray:
    """The classifier's input features (what the last Linear layer sees) of PIL ``images``.

    Example:
        >>> feats = extract_features(model, [img1, img2], ImageTransform(64, mean, std))  # doctest: +SKIP

    Args:
        model: an image classifier (its head is found with :func:`neighbor_lt.modeling.find_classifier`).
        images: PIL images.
        transform: PIL image -> normalized tensor ``[3, H, W]``.
        batch_size: images per forward pass.
    """
    from .modeling import find_classifier

    _, _, head = find_classifier(model)
    captured = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].detach().float().cpu()))
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(img) for img in images[start : start + batch_size]]).to(device)
            model(pixel_values=batch)
    finally:
        hook.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, head.in_features), dtype=np.float32)


def project_2d(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features`` (standardized first) and the method used: ``umap`` or ``pca``.

    ``auto`` uses UMAP when ``umap-learn`` is installed and there are enough points, else PCA.
    """
    x = features - features.mean(0)
    x = x / (x.std(0) + 1e-6)
    if method in ("auto", "umap"):
        try:
            import umap  # noqa: PLC0415  (optional dependency)

            if len(x) > 15:
                reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
                return reducer.fit_transform(x), "umap"
        except ImportError:
            if method == "umap":
                logger.warning("umap-learn is not installed: using PCA")
    PCA = require("sklearn.decomposition", "the feature map").PCA

    return PCA(n_components=2, random_state=seed).fit_transform(x), "pca"


def separation(features: np.ndarray, labels: np.ndarray, a, b) -> float:
    """Distance between the centroids of classes ``a`` and ``b`` over their mean within-class spread (full space)."""
    fa, fb = features[labels == a], features[labels == b]
    if len(fa) < 2 or len(fb) < 2:
        return float("nan")
    spread = (np.linalg.norm(fa - fa.mean(0), axis=1).mean() + np.linalg.norm(fb - fb.mean(0), axis=1).mean()) / 2
    return float(np.linalg.norm(fa.mean(0) - fb.mean(0)) / (spread + 1e-12))


def plot_feature_map(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    head: str,
    tail: str,
    neighbors: dict[str, list[str]],
    path: str,
    method: str = "auto",
) -> str:
    """Side-by-side 2-D maps (e.g. before / after training) of a head class, a tail class and their neighbors.

    Example:
        >>> plot_feature_map([("before", f0, names), ("after", f1, names)], "black widow", "lemon",
        ...                  {"black widow": ["tarantula"], "lemon": ["orange"]}, "feature_map.png")  # doctest: +SKIP

    Args:
        panels: (title, features ``[N, D]``, class name per row) per panel; each panel is projected on its own.
        head, tail: the two target classes.
        neighbors: target class -> its neighbor (auxiliary) classes shown.
        path: the PNG file.
        method: ``auto``, ``umap`` or ``pca`` (see :func:`project_2d`).
    """
    styles = feature_map_styles(head, tail, neighbors)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    used = "pca"
    for ax, (title, features, names) in zip(axes[0], panels):
        names = np.asarray(names)
        coords, used = project_2d(features, method)
        for name, (color, marker, size, _) in reversed(list(styles.items())):  # targets drawn last, on top
            keep = names == name
            ax.scatter(coords[keep, 0], coords[keep, 1], c=color, marker=marker, s=size, alpha=0.8,
                       edgecolors="white", linewidths=0.4)  # fmt: skip
        ratio = separation(features, names, head, tail)
        ax.set_title(f"{title}\nhead-tail separation {ratio:.2f} (centroid distance / spread)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], ls="", marker=m, color=c, markersize=7, label=label) for c, m, _, label in styles.values()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"Features ({used.upper()}) of a head class, a tail class and their neighbor classes", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(handles) - 1) // 3), 1, 1))
    return _save(fig, path)


def feature_map_styles(head: str, tail: str, neighbors: dict[str, list[str]]) -> dict[str, tuple]:
    """Class name -> (colour, marker, size, legend label) of the feature map: a distinct colour for every class,
    the marker tells the family (circles: the two targets, triangles: the head's neighbors, squares: the tail's)."""
    styles = {head: (HEAD_COLOR, "o", 44, f"head: {head}"), tail: (TAIL_COLOR, "o", 44, f"tail: {tail}")}
    for parent, marker in ((head, "^"), (tail, "s")):
        for name in neighbors.get(parent, []):
            if name not in styles:
                color = NEIGHBOR_COLORS[(len(styles) - 2) % len(NEIGHBOR_COLORS)]
                styles[name] = (color, marker, 32, f"neighbor of {parent}: {name}")
    return styles


def _centroid_cosine(a: np.ndarray, b: np.ndarray) -> float:
    ca, cb = a.mean(0), b.mean(0)
    return float(ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb) + 1e-12))


def _head_and_tail(info, names, counts, neighbors, head, tail, model, target_images, transform) -> tuple[str, str]:
    """The feature map's classes when not given: the head, the target class with the most training images among
    the Many classes with neighbors; the tail, the Few class (with neighbors) closest to the head in feature space."""
    with_neighbors = [n for n in names if neighbors.get(n)]
    if head is None:
        many = [n for n in with_neighbors if counts[names.index(n)] > info.many_threshold]
        head = max(many or with_neighbors or names, key=lambda n: counts[names.index(n)])
        if counts[names.index(head)] <= info.many_threshold:
            logger.warning("no Many class has neighbors: the feature map's 'head' %r is not a Many class", head)
    if tail is None:
        few_threshold = info.few_threshold
        candidates = [n for n in with_neighbors if counts[names.index(n)] < few_threshold and n != head]
        candidates = candidates or [n for n in names if counts[names.index(n)] < few_threshold and n != head]
        candidates = candidates or [min((n for n in names if n != head), key=lambda n: counts[names.index(n)])]
        head_features = extract_features(model, target_images(head, 20), transform)
        tail = max(
            candidates[:10],
            key=lambda n: _centroid_cosine(head_features, extract_features(model, target_images(n, 20), transform)),
        )
    return head, tail


def feature_map_for_run(
    run: Run,
    path: str,
    head: str | None = None,
    tail: str | None = None,
    before: str | None = None,
    max_images_per_class: int = 40,
    method: str = "auto",
    seed: int = 0,
) -> str:
    """Plot the feature map of a run: its data (from ``args.yaml``), its model after training and a model before.

    Target images come from the evaluation split (the training split when there is none), neighbor images from the
    auxiliary set. Paths in ``args.yaml`` are resolved from the current folder, as during training.

    Example:
        >>> feature_map_for_run(load_run("outputs/demo"), "outputs/demo/feature_map.png")  # doctest: +SKIP

    Args:
        run: the trained run (:func:`load_run`).
        path: the PNG file.
        head: the head class; by default the target class with the most training images among those with neighbors.
        tail: the tail class; by default the Few class with neighbors whose features (after training) lie closest to
            the head class's (largest centroid cosine), i.e. the most confusable one.
        before: a checkpoint giving the "before" features; by default a freshly initialized model of the same
            config (seeded), i.e. the starting point of from-scratch training.
        max_images_per_class: images per class in the map.
        method: ``auto``, ``umap`` or ``pca``.
        seed: seed of the fresh model and of the projection.
    """
    import dataclasses

    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from .augment import ImageTransform
    from .configs import DataArguments
    from .data import load_aux_dataset, load_target_dataset
    from .modeling import processor_settings

    args = RunFolder(run.folder).read_args()
    known = {f.name for f in dataclasses.fields(DataArguments) if f.init}
    data_args = DataArguments(**{k: v for k, v in args.items() if k in known})
    target = load_target_dataset(data_args)
    split = target["validation"] if "validation" in target else target["train"]
    names = list(run.info.target_classes or split.features["label"].names)
    counts = list(run.info.target_train_counts or [0] * len(names))
    neighbors: dict[str, list[str]] = {name: [] for name in names}
    for aux_name, parents in run.info.neighbor_of.items():
        for parent in parents:
            neighbors.setdefault(parent, []).append(aux_name)
    for name, given in (("head", head), ("tail", tail)):
        if given is not None and given not in names:
            raise ValueError(f"{name} class {given!r} is not a target class of {run.folder}")

    after = AutoModelForImageClassification.from_pretrained(run.folder)
    if before:
        before_model = AutoModelForImageClassification.from_pretrained(before)
    else:
        torch.manual_seed(seed)
        before_model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(run.folder))
    size, mean, std = processor_settings(AutoImageProcessor.from_pretrained(run.folder))
    transform = ImageTransform(size, mean, std, train=False, crop_pct=data_args.crop_pct)

    labels = np.asarray(split["label"])

    def target_images(name, n=max_images_per_class):
        rows = np.flatnonzero(labels == names.index(name))[:n]
        return list(split.select(rows)["image"])

    head, tail = _head_and_tail(run.info, names, counts, neighbors, head, tail, after, target_images, transform)
    logger.info("feature map: head %r, tail %r", head, tail)

    images, rows_names = [], []
    for name in (head, tail):
        picked = target_images(name)
        images += picked
        rows_names += [name] * len(picked)
    shown = {head: neighbors.get(head, [])[:3], tail: neighbors.get(tail, [])[:3]}
    if any(shown.values()) and args.get("aux_dataset"):
        aux = load_aux_dataset(args["aux_dataset"], args.get("aux_split") or "train")
        aux_names = aux.features["label"].names
        aux_labels = np.asarray(aux["label"])
        for name in dict.fromkeys(shown[head] + shown[tail]):
            if name in aux_names:
                picked = list(
                    aux.select(np.flatnonzero(aux_labels == aux_names.index(name))[:max_images_per_class])["image"]
                )
                images += picked
                rows_names += [name] * len(picked)
    panels = [
        (f"before training ({'checkpoint' if before else 'random init'})", extract_features(before_model, images, transform),
         rows_names),
        ("after training", extract_features(after, images, transform), rows_names),
    ]  # fmt: skip
    return plot_feature_map(panels, head, tail, shown, path, method)
