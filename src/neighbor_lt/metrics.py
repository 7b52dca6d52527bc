"""Overall / Many / Medium / Few top-1 accuracy (the long-tail evaluation protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The paper's groups: Many, more than 100 training images; Medium, 20 to 100; Few, fewer than 20 (counts of the
# target training set). A small dataset can set its own (``many_threshold`` / ``few_threshold`` of the train recipe).
MANY_THRESHOLD = 100
FEW_THRESHOLD = 20
GROUPS = ("many", "medium", "few")
#: The accuracies a run reports, in the order tables show them: Overall, then the groups.
ACCURACY_KEYS = ("overall", *GROUPS)


def group_of(count: int, many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD) -> str:
    """The long-tail group of a class with ``count`` training images: Many above ``many_threshold``, Few below
    ``few_threshold``, Medium in between."""
    if few_threshold > many_threshold + 1:
        raise ValueError(f"few_threshold {few_threshold} is above many_threshold {many_threshold}")
    if count > many_threshold:
        return "many"
    if count < few_threshold:
        return "few"
    return "medium"


def class_groups(
    class_counts: Sequence[int], many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD
) -> list[str]:
    """Group name per class, from the target training counts.

    Example:
        >>> class_groups([500, 60, 5])
        ['many', 'medium', 'few']
        >>> class_groups([40, 12, 3], many_threshold=20, few_threshold=5)
        ['many', 'medium', 'few']
    """
    return [group_of(int(c), many_threshold, few_threshold) for c in class_counts]


def long_tail_accuracy(
    predictions,
    references,
    class_counts: Sequence[int],
    many_threshold: int = MANY_THRESHOLD,
    few_threshold: int = FEW_THRESHOLD,
) -> dict:
    """Top-1 accuracy overall and per Many / Medium / Few group, plus per-class accuracy.

    Example:
        >>> long_tail_accuracy([0, 1, 1], [0, 1, 2], class_counts=[200, 50, 3])["few"]
        0.0

    Args:
        predictions: predicted target class per image.
        references: true target class per image.
        class_counts: training-image count per target class (defines the groups).
        many_threshold, few_threshold: Many is more than ``many_threshold`` images, Few fewer than
            ``few_threshold`` (the paper's 100 and 20 by default).

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
    groups = np.array(class_groups(class_counts, many_threshold, few_threshold))
    result = {"overall": float(correct.mean()) if correct.size else float("nan")}
    for g in GROUPS:
        in_group = np.isin(references, np.flatnonzero(groups == g))
        result[g] = float(correct[in_group].mean()) if in_group.any() else float("nan")
    result["per_class"] = per_class.tolist()
    result["group_sizes"] = {g: int((groups == g).sum()) for g in GROUPS}
    return result


def present_groups(results: dict) -> list[str]:
    """The groups of ``results`` that have classes (an empty group, e.g. Many on a small dataset, is left out)."""
    sizes = results.get("group_sizes") or {}
    out = []
    for g in GROUPS:
        value = results.get(g)
        empty = sizes.get(g) == 0 or value is None or (isinstance(value, float) and np.isnan(value))
        if not empty:
            out.append(g)
    return out


def format_table(results: dict, title: str | None = None) -> str:
    """A plain-text Overall / Many / Medium / Few table in percent; a group without classes is left out.

    Example:
        >>> print(format_table({"overall": 0.5, "many": float("nan"), "medium": 0.6, "few": 0.4,
        ...                     "group_sizes": {"many": 0, "medium": 4, "few": 6}}))
                    Overall   Medium      Few
        top-1 %       50.00    60.00    40.00
    """
    keys = ["overall", *present_groups(results)]
    header = f"{'':<10}" + "".join(f"{k.capitalize():>9}" for k in keys)
    cells = "".join(f"{100 * results[k]:>9.2f}" for k in keys)
    lines = [title] if title else []
    return "\n".join(lines + [header, f"{'top-1 %':<10}{cells}"])
