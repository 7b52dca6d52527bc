"""The pieces of ``recipes/ablate.py``: the variants, the random-class control, and the report (table, paired
per-class tests, chart, ``summary.json``, a RESULTS.md section).

The variants (the paper's ablation, Table 5, plus an equal-steps baseline and a control):

- ``a``: balanced softmax, target only.
- ``a_steps``: the same for as many optimizer steps as ``c`` (auxiliary images make an epoch longer: is the gain
  only more steps?).
- ``b``: auxiliary classes merged, balanced softmax (eq. 3).
- ``c``: neighbor silencing + masking (ours, eq. 4).
- ``d``: random auxiliary classes with the same bipartite shape as the real neighbors, trained as ``c`` (is the gain
  from *neighbors*, or from any extra classes?).
- ``c_v`` (opt-in): neighbors chosen by how confusable they look (the curation's ``rank`` stage over a wider name-ranked
  candidate list), trained as ``c``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

from .configs import ConfigError

GROUPS = ("overall", "many", "medium", "few")


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    loss: str
    aux: str | None  # "neighbors", "random" or None (target only)
    equal_steps: bool = False  # run for as many optimizer steps as ``c``


VARIANTS = {
    v.name: v
    for v in (
        Variant("a", "(a) BalCE, target only", "balanced_softmax", None),
        Variant("a_steps", "(a=) BalCE, target only, steps of (c)", "balanced_softmax", None, equal_steps=True),
        Variant("b", "(b) aux merged, BalCE (eq. 3)", "balanced_softmax", "neighbors"),
        Variant("c", "(c) neighbor silencing + mask (ours)", "neighbor_silencing", "neighbors"),
        Variant("d", "(d) random aux classes, as (c)", "neighbor_silencing", "random"),
        Variant("c_v", "(c+v) visually ranked neighbors, as (c)", "neighbor_silencing", "visual"),
    )
}
#: Variants a recipe curates only when asked for (their auxiliary set needs more than the neighbor set's settings).
OPT_IN = ("c_v",)
COMPARISONS = ("a_steps", "b", "d", "a")  # what (c) is compared with, per class
VISUAL_COMPARISONS = ("c", "d", "a_steps")  # what (c+v) is compared with


# --------------------------------------------------------------------------------------------------------------------
# The control
# --------------------------------------------------------------------------------------------------------------------


def read_vocabulary(path: str) -> list[dict]:
    """Candidate classes for the random control: ``[{"name": ..., "wnid": ...}]``.

    Formats: a TSV with a header holding ``wnid`` and ``words`` (or ``name``) columns, such as Tiny-ImageNet's
    ``classes.tsv`` (the first lemma is the name); or a text file with one class name per line.
    """
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not lines:
        raise ConfigError(f"vocabulary {path} is empty")
    header = lines[0].split("\t")
    if len(header) > 1 and ("wnid" in header or "name" in header or "words" in header):
        name_col = header.index("name") if "name" in header else header.index("words")
        wnid_col = header.index("wnid") if "wnid" in header else None
        out = []
        for line in lines[1:]:
            cells = line.split("\t")
            name = cells[name_col].split(",")[0].strip()
            out.append({"name": name, "wnid": cells[wnid_col] if wnid_col is not None else None})
        return out
    return [{"name": line.strip(), "wnid": None} for line in lines]


def random_control_manifest(manifest: dict, vocabulary: list[dict], seed: int = 0) -> tuple[dict, dict]:
    """The control neighbor manifest: the real one's bipartite graph, each auxiliary class swapped for a random class.

    Every target keeps its number of auxiliary classes and every auxiliary class its number of targets (its
    ``neighbor_of`` list); only *which* class it is changes. Candidates are the vocabulary minus the target classes
    (by WordNet id and by name); classes that are not among the real neighbors are drawn first, then the rest (on a
    small pool the control then mostly re-pairs the real auxiliary classes with other targets).

    Returns:
        (control manifest, stats: auxiliary classes, how many are real neighbor classes, how many keep their real
        assignment).

    Raises:
        ConfigError: fewer candidates than auxiliary classes.
    """
    targets = manifest.get("targets") or []
    target_keys = set()
    for t in targets:
        name = t["name"] if isinstance(t, dict) else str(t)
        target_keys.add(name.casefold())
        if isinstance(t, dict) and t.get("wnid"):
            target_keys.add(str(t["wnid"]).casefold())
    aux = manifest["auxiliary"]
    real = {(a.get("wnid") or a["name"]).casefold() for a in aux}
    seen, candidates = set(), []
    for c in vocabulary:
        key = (c.get("wnid") or c["name"]).casefold()
        if key in seen or key in target_keys or c["name"].casefold() in target_keys:
            continue
        seen.add(key)
        candidates.append(c)
    if len(candidates) < len(aux):
        raise ConfigError(
            f"the random control needs {len(aux)} candidate classes but the vocabulary has {len(candidates)} "
            "outside the target classes"
        )
    rng = np.random.default_rng(seed)
    fresh = [c for c in candidates if (c.get("wnid") or c["name"]).casefold() not in real]
    used = [c for c in candidates if (c.get("wnid") or c["name"]).casefold() in real]
    order = [fresh[i] for i in rng.permutation(len(fresh))] + [used[i] for i in rng.permutation(len(used))]
    chosen = order[: len(aux)]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    entries = []
    for entry, c in zip(aux, chosen):
        item = {"name": c["name"], "neighbor_of": list(entry["neighbor_of"]), "similarity": None, "distance": None}
        if c.get("wnid"):
            item["wnid"] = c["wnid"]
        entries.append(item)
    control = {**manifest, "backend": "random-control", "auxiliary": entries}
    control.pop("summary", None)
    key = lambda a: (a.get("wnid") or a["name"]).casefold()  # noqa: E731
    stats = {
        "aux_classes": len(entries),
        "real_neighbor_classes": sum(key(e) in real for e in entries),
        "same_assignment": sum(key(e) == key(a) for e, a in zip(entries, aux)),
        "seed": seed,
    }
    return control, stats


# --------------------------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------------------------


def optimizer_steps(epoch_images: int, batch_size: int, epochs: float, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimizer steps the Trainer takes for ``epochs`` epochs of ``epoch_images`` images (last batch kept)."""
    batches = math.ceil(epoch_images / (batch_size * processes))
    per_epoch = max(batches // grad_accum, 1)
    return math.ceil(epochs * per_epoch)


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def read_per_class(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(accuracy per class, training count per class, group per class) of a ``per_class_accuracy.csv``."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    acc = np.array([float(r["accuracy"]) if r["accuracy"] not in ("", "nan") else np.nan for r in rows])
    counts = np.array([int(r["train_count"]) for r in rows])
    return acc, counts, [r["group"] for r in rows]


def _mean_sd(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: list[dict], variants: list[str]) -> dict:
    """Per variant: mean and sd (over seeds) of each group's accuracy and of the train accuracy, steps, images, wall."""
    table = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        if not rs:
            continue
        row = {g: _mean_sd([100 * r[g] for r in rs]) for g in GROUPS}
        row["train_overall"] = _mean_sd([100 * r["train_overall"] for r in rs if r.get("train_overall") is not None])
        row["seeds"] = sorted(r["seed"] for r in rs)
        row["steps"] = int(np.mean([r["train_steps"] for r in rs]))
        row["images"] = int(np.mean([r["train_images"] for r in rs]))
        row["wall_s"] = float(np.mean([r["wall_s"] for r in rs]))
        table[v] = row
    return table


def paired_test(per_class: dict, ours: str = "c", others=COMPARISONS, groups: list[str] | None = None) -> dict:
    """Per-class accuracy of ``ours`` minus each other variant (means over the seeds both have), over all classes and
    over the Few classes: mean difference, classes better / worse / tied, and a two-sided Wilcoxon signed-rank p.

    Args:
        per_class: ``{variant: {seed: per-class accuracy array}}``.
        groups: group name per class (for the Few subset).
    """
    from scipy.stats import wilcoxon

    out = {}
    if ours not in per_class:
        return out
    for other in others:
        if other not in per_class:
            continue
        seeds = sorted(set(per_class[ours]) & set(per_class[other]))
        if not seeds:
            continue
        mine = np.nanmean([per_class[ours][s] for s in seeds], axis=0)
        theirs = np.nanmean([per_class[other][s] for s in seeds], axis=0)
        result = {"seeds": seeds}
        subsets = {"all": np.ones(len(mine), bool)}
        if groups is not None:
            subsets["few"] = np.asarray(groups) == "few"
        for subset, mask in subsets.items():
            diff = 100 * (mine - theirs)[mask]
            diff = diff[~np.isnan(diff)]
            p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
            result[subset] = {
                "classes": int(len(diff)),
                "mean_diff": round(float(diff.mean()), 3) if len(diff) else None,
                "better": int((diff > 0).sum()),
                "worse": int((diff < 0).sum()),
                "tied": int((diff == 0).sum()),
                "wilcoxon_p": float(f"{p:.3g}"),
            }
        out[f"{ours}_vs_{other}"] = result
    return out


def paired_tests(per_class: dict, groups: list[str] | None = None) -> dict:
    """:func:`paired_test` of (c) against :data:`COMPARISONS` and of (c+v) against :data:`VISUAL_COMPARISONS`."""
    return {
        **paired_test(per_class, "c", COMPARISONS, groups),
        **paired_test(per_class, "c_v", VISUAL_COMPARISONS, groups),
    }


def check_targets(table: dict) -> list[str]:
    """The issues' bars: (c) against (a=) Few >= +3, Overall >= +1.5, Many >= -1; (c) above (d) on Few; (c) vs (b)
    reported; (c+v) above (c) on Few by >= 1.5 and above (d)."""
    lines = []
    if {"c", "a_steps"} <= set(table):
        c, a = table["c"], table["a_steps"]
        for group, bar in (("few", 3.0), ("overall", 1.5), ("many", -1.0)):
            d = c[group][0] - a[group][0]
            lines.append(
                f"(c) - (a=) {group.capitalize()}: {d:+.2f} (target {bar:+.1f}) -> {'met' if d >= bar else 'NOT met'}"
            )
    if {"c", "d"} <= set(table):
        d = table["c"]["few"][0] - table["d"]["few"][0]
        lines.append(f"(c) - (d) Few: {d:+.2f} (target > 0) -> {'met' if d > 0 else 'NOT met'}")
    if {"c", "b"} <= set(table):
        c, b = table["c"], table["b"]
        lines.append(
            "(c) - (b): " + ", ".join(f"{g.capitalize()} {c[g][0] - b[g][0]:+.2f}" for g in GROUPS) + " (reported)"
        )
    for other, bar in (("c", 1.5), ("d", 0.0)):  # issue 11: visually chosen neighbors beat name-chosen and random
        if {"c_v", other} <= set(table):
            d = table["c_v"]["few"][0] - table[other]["few"][0]
            ok = d >= bar if bar else d > 0
            target = f"{bar:+.1f}" if bar else "> 0"
            lines.append(f"(c+v) - ({other}) Few: {d:+.2f} (target {target}) -> {'met' if ok else 'NOT met'}")
    return lines


def markdown_table(table: dict) -> str:
    lines = [
        "| variant | Overall | Many | Medium | Few | train acc. (Overall) | seeds | steps | images seen | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in table.items():
        cells = " | ".join(f"{row[g][0]:.2f} ± {row[g][1]:.2f}" for g in GROUPS)
        train = f"{row['train_overall'][0]:.1f}" if not math.isnan(row["train_overall"][0]) else "-"
        lines.append(
            f"| {VARIANTS[v].label} | {cells} | {train} | {','.join(map(str, row['seeds']))} | {row['steps']} | "
            f"{row['images']:,} | {row['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def format_paired(paired: dict) -> str:
    lines = ["| comparison | classes | mean diff (pts) | better / worse / tied | Wilcoxon p | Few: mean diff | Few: better / worse / tied | Few: p |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, r in paired.items():
        a, f = r["all"], r.get("few")
        few = (
            f"{f['mean_diff']:+.2f} | {f['better']} / {f['worse']} / {f['tied']} | {f['wilcoxon_p']:.2g}"
            if f and f["classes"]
            else "- | - | -"
        )
        lines.append(
            f"| {key.replace('_vs_', ' vs ')} (seeds {','.join(map(str, r['seeds']))}) | {a['classes']} | "
            f"{a['mean_diff'] or 0:+.2f} | {a['better']} / {a['worse']} / {a['tied']} | {a['wilcoxon_p']:.2g} | {few} |"
        )
    return "\n".join(lines)


def chart(table: dict, path: str, title: str) -> str:
    """Grouped bars (mean ± sd over seeds) per group, one colour per variant; train accuracy as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [4, 1.3]})
    width = 0.8 / max(len(table), 1)
    for i, (v, row) in enumerate(table.items()):
        xs = np.arange(len(GROUPS)) + (i - (len(table) - 1) / 2) * width
        ax.bar(xs, [row[g][0] for g in GROUPS], width, yerr=[row[g][1] for g in GROUPS], capsize=2,
               label=f"{VARIANTS[v].label} ({row['steps']} steps)", color=f"C{i}")  # fmt: skip
        ax2.bar(i, row["train_overall"][0], 0.7, color=f"C{i}", alpha=0.5)
        ax2.bar(i, row["overall"][0], 0.35, color=f"C{i}")
    ax.set_xticks(np.arange(len(GROUPS)), [g.capitalize() for g in GROUPS])
    ax.set_ylabel("top-1 accuracy on the evaluation split (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax2.set_xticks(range(len(table)), [VARIANTS[v].label.split(")")[0] + ")" for v in table], fontsize=8)
    ax2.set_title("train (light) vs eval (dark), Overall", fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_section(title: str, command: str, machine: str, body: str) -> str:
    """The benchmarks' RESULTS.md section: a dated title, the command, the machine, then the body."""
    import datetime

    return f"## {title} ({datetime.date.today()})\n\n- Command: `{command.strip()}`\n- Machine: {machine}\n\n{body}\n"


def append_results(path: str, section: str) -> None:
    """Append a Markdown section to a results file (``benchmarks/RESULTS.md``); append only, never rewrite (other
    benchmarks append to the same file). Every benchmark and ``recipes/ablate.py`` writes through this."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write("\n" + section.rstrip() + "\n")
