"""The ablation report: mean +- sd per group, paired per-class tests, the bars, a chart, ``summary.json`` and an
optional section appended to a results file."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex

import numpy as np

from ..files import write_json_atomic
from ..metrics import ACCURACY_KEYS as GROUPS
from ..results_md import append_results
from .config import AblationConfig
from .variants import COMPARISONS, VARIANTS, VISUAL_COMPARISONS


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
    """:func:`paired_test` of (c) against :data:`COMPARISONS`, of (b) against (a=), and of (c+v) against
    :data:`VISUAL_COMPARISONS`."""
    return {
        **paired_test(per_class, "c", COMPARISONS, groups),
        **paired_test(per_class, "b", ("a_steps",), groups),  # does a naive merge hurt the tail?
        **paired_test(per_class, "c_v", VISUAL_COMPARISONS, groups),
    }


def check_targets(table: dict) -> list[str]:
    """The bars the method has to clear: (c) against (a=) Few >= +3, Overall >= +1.5, Many >= -1; (c) above (d) on
    Few; (c) vs (b) reported, with the paper's fine-tuning hypotheses (c) - (b) Few >= +2 and (b) - (a=) Few <= 0 (a
    naive merge hurts the tail); (c+v) above (c) on Few by >= 1.5 and above (d)."""
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
        d = c["few"][0] - b["few"][0]  # the paper's fine-tuning table: silencing turns the merge's loss into a gain
        lines.append(f"(c) - (b) Few: {d:+.2f} (paper, fine-tuning: >= +2) -> {'met' if d >= 2 else 'NOT met'}")
    if {"b", "a_steps"} <= set(table):
        d = table["b"]["few"][0] - table["a_steps"]["few"][0]
        lines.append(f"(b) - (a=) Few: {d:+.2f} (paper, fine-tuning: <= 0) -> {'met' if d <= 0 else 'NOT met'}")
    for other, bar in (("c", 1.5), ("d", 0.0)):  # visually chosen neighbors should beat name-chosen and random
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


def report(config: AblationConfig, runs: list[dict], sets: dict, steps_c: int | None, wall_s: float) -> dict:
    """Write ``summary.json`` (and the chart, and the results-file section when ``results_md`` is set), print the
    tables; the summary.

    Args:
        config: the ablation config (:func:`neighbor_lt.ablation.config.parse_config`).
        runs: one record per finished run (:func:`neighbor_lt.ablation.runner.read_run`).
        sets: the auxiliary sets and their statistics (:mod:`neighbor_lt.ablation.curation`).
        steps_c: optimizer steps of (c), also run by (a=).
        wall_s: wall time of this invocation.
    """
    out = config.output_dir
    variants = [v for v in VARIANTS if v in config.variants]
    table = summarize(runs, variants)
    per_class = {}
    for r in runs:
        per_class.setdefault(r["variant"], {})[r["seed"]] = np.asarray(r["per_class"], dtype=float)
    named = next((r for r in runs if r.get("names")), None)  # a run of runs_from may not know its classes
    groups = named["groups"] if named else None
    paired = paired_tests(per_class, groups=groups) if runs else {}
    if runs and groups is None:
        print("paired tests over all classes only: no run here, and no runs_from summary, lists the classes' groups")
    targets = check_targets(table)
    split = "development" if config.development else "evaluation"
    suffix = "-dev" if config.development else ""
    figure = config.figure or os.path.join(out, f"ablation{suffix}.png")
    if table:
        chart(table, figure, f"{config.title} ({split} split); seeds {config.seeds}")
    command = "python recipes/ablate.py " + shlex.join(config.argv or [])
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU threads, torch {_torch_version()}"
    summary = {
        "command": command, "date": datetime.date.today().isoformat(), "machine": machine, "split": split,
        "wall_s": round(wall_s, 1), "steps_of_c": steps_c,
        **({"aux_datasets": config.aux_datasets} if config.aux_datasets else {}),
        **({"neighbors": sets["manifest"]} if "manifest" in sets else {}),
        **({"control": sets["control"]} if "control" in sets else {}),
        **({"visual": sets["visual_manifest"]} if "visual_manifest" in sets else {}),
        **({"classes": [{"name": n, "group": g} for n, g in zip(named["names"], named["groups"])]} if named else {}),
        "variants": {
            v: {
                "label": VARIANTS[v].label,
                "mean_sd": {k: table[v][k] for k in (*GROUPS, "train_overall")},
                "runs": [{k: r[k] for k in r if k not in ("groups", "names", "train_counts")} for r in runs if r["variant"] == v],
            }
            for v in table
        },
        "paired": paired, "targets": targets, "figure": figure,
    }  # fmt: skip
    write_json_atomic(os.path.join(out, f"summary{suffix}.json"), summary, indent=1)
    text = markdown_table(table)
    print(f"\n{text}\n\n{format_paired(paired) if paired else ''}\n")
    for line in targets:
        print(line)
    print(f"summary: {os.path.join(out, f'summary{suffix}.json')}; chart: {figure}; wall {wall_s / 60:.1f} min")
    if config.results_md and table:
        append_results(config.results_md, results_md_section(config, summary, sets, text))
    return summary


def results_md_section(config: AblationConfig, summary: dict, sets: dict, table_text: str) -> str:
    """The ablation's section of a results file: command, machine, sets, tables, bars and chart."""
    rel = os.path.relpath(summary["figure"], os.path.dirname(os.path.abspath(config.results_md)))
    paired = summary["paired"]
    return "\n".join([
        f"## {config.title}: does learning from neighbors help? ({summary['date']}, {summary['split']} split)",
        "",
        f"- Command: `{summary['command']}`",
        f"- Machine: {summary['machine']}; wall time {summary['wall_s'] / 60:.1f} min for this invocation (runs done "
        "before are reused)",
        f"- Neighbors: {json.dumps(sets.get('manifest'))}; control: {json.dumps(sets.get('control'))}"
        + ("; curated elsewhere (aux_datasets)" if config.aux_datasets else "")
        + (f"; (c+v) visually ranked: {json.dumps(sets['visual_manifest'])}" if sets.get("visual_manifest") else ""),
        f"- (c) and (a=) take {summary['steps_of_c']} optimizer steps; every run is `neighbor_lt.train.run`, as "
        "`recipes/train.py` runs it",
        "",
        table_text,
        "",
        "Paired per-class accuracy, (c) (and (c+v)) minus each other variant (class means over the seeds both have):",
        "",
        format_paired(paired) if paired else "(no pairs)",
        "",
        *[f"- {t}" for t in summary["targets"]],
        "",
        f"![ablation]({rel})",
    ])  # fmt: skip


def _torch_version() -> str:
    import torch

    return torch.__version__
