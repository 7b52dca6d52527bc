"""Overall / Many / Medium / Few top-1 accuracy (the long-tail evaluation protocol)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

# Many: more than 100 training images; Medium: 20 to 100; Few: fewer than 20 (counts of the target training set).
MANY_THRESHOLD = 100
FEW_THRESHOLD = 20
GROUPS = ("many", "medium", "few")


def group_of(count: int) -> str:
    """The long-tail group of a class with ``count`` training images."""
    if count > MANY_THRESHOLD:
        return "many"
    if count < FEW_THRESHOLD:
        return "few"
    return "medium"


def class_groups(class_counts: Sequence[int]) -> list[str]:
    """Group name per class, from the target training counts.

    Example:
        >>> class_groups([500, 60, 5])
        ['many', 'medium', 'few']
    """
    return [group_of(int(c)) for c in class_counts]


def long_tail_accuracy(predictions, references, class_counts: Sequence[int]) -> dict:
    """Top-1 accuracy overall and per Many / Medium / Few group, plus per-class accuracy.

    Example:
        >>> long_tail_accuracy([0, 1, 1], [0, 1, 2], class_counts=[200, 50, 3])["few"]
        0.0

    Args:
        predictions: predicted target class per image.
        references: true target class per image.
        class_counts: training-image count per target class (defines the groups).

    Returns:
        ``overall``, ``many``, ``medium``, ``few`` (fractions; NaN for an empty group), ``per_class`` (list,
        NaN for a class without evaluation images) and ``group_sizes`` (number of classes per group).
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    references = np.asarray(references, dtype=np.int64)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    num_classes = len(class_counts)
    if references.size and (references.min() < 0 or references.max() >= num_classes):
        raise ValueError(f"a reference label is outside 0..{num_classes - 1}")
    correct = predictions == references
    totals = np.bincount(references, minlength=num_classes)
    hits = np.bincount(references, weights=correct, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = hits / totals
    groups = np.array(class_groups(class_counts))
    result = {"overall": float(correct.mean()) if correct.size else float("nan")}
    for g in GROUPS:
        in_group = np.isin(references, np.flatnonzero(groups == g))
        result[g] = float(correct[in_group].mean()) if in_group.any() else float("nan")
    result["per_class"] = per_class.tolist()
    result["group_sizes"] = {g: int((groups == g).sum()) for g in GROUPS}
    return result


def format_table(results: dict, title: str | None = None) -> str:
    """A plain-text Overall / Many / Medium / Few table in percent."""
    header = f"{'':<10}{'Overall':>9}{'Many':>9}{'Medium':>9}{'Few':>9}"
    cells = "".join(f"{100 * results[k]:>9.2f}" for k in ("overall", "many", "medium", "few"))
    lines = [title] if title else []
    return "\n".join(lines + [header, f"{'top-1 %':<10}{cells}"])


def write_per_class_csv(path: str, results: dict, class_names: Sequence[str], class_counts: Sequence[int]) -> None:
    """Per-class accuracy with each class's training count and group, one row per class."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "name", "train_count", "group", "accuracy"])
        for i, (name, count, acc) in enumerate(zip(class_names, class_counts, results["per_class"])):
            writer.writerow([i, name, int(count), group_of(int(count)), "" if np.isnan(acc) else f"{acc:.6f}"])
