"""Sweeps the paper reports (Fig. 6 and 8: ``lambda_s``, auxiliary images per class, ...) as an ablation option:
``--sweep lambda_s=0.01,0.1,0.3,1 --variants c`` trains the ablation's variants once per value and seed on the
development split, and plots each group's accuracy against the value with error bars (sd over the seeds).

A swept key is a key of the training recipe (``lambda_s``, ``max_aux_per_class``, ``learning_rate`` ...); the
auxiliary sets are curated once, so keys of the curation (neighbors per class ``k``) are swept by running the
ablation once per value instead (``--curate.neighbors.k 3 --output_dir ...``).

Example:
    >>> key, values = parse_sweep("lambda_s=0.01,0.1,0.3,1")
    >>> key, values
    ('lambda_s', [0.01, 0.1, 0.3, 1])
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from ..files import write_json_atomic
from ..metrics import ACCURACY_KEYS as GROUPS
from .config import AblationConfig, parse_sweep

logger = logging.getLogger(__name__)


def sweep_dir(output_dir: str, key: str) -> str:
    """Where a sweep's runs, summary and figure go (always on the development split)."""
    return os.path.join(output_dir, "runs-dev", f"sweep-{key}")


def summarize_sweep(key: str, values: list, runs_by_value: dict) -> dict:
    """Per value and variant: mean and sd over seeds of each group's accuracy (percent) and of the train accuracy."""
    rows = []
    for value in values:
        by_variant: dict[str, list[dict]] = {}
        for r in runs_by_value.get(repr(value), []):
            by_variant.setdefault(r["variant"], []).append(r)
        for variant, rs in by_variant.items():
            row = {"value": value, "variant": variant, "seeds": sorted(r["seed"] for r in rs)}
            for g in (*GROUPS, *(f"train_{g}" for g in GROUPS)):
                xs = [100 * r[g] for r in rs if r.get(g) is not None and not math.isnan(r[g])]
                sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
                row[g] = [float(np.mean(xs)), sd] if xs else [float("nan"), float("nan")]
            rows.append(row)
    return {"key": key, "values": values, "split": "development", "rows": rows}


def sweep_chart(summary: dict, path: str, title: str) -> str:
    """Each group's accuracy (mean +- sd over seeds) against the swept value, one panel per group, one line per
    variant; a log x axis when the values are positive and span more than a factor of 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = summary["values"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = {repr(v): (v if numeric else i) for i, v in enumerate(values)}
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(3.2 * len(GROUPS), 3.4), sharex=True)
    variants = list(dict.fromkeys(r["variant"] for r in summary["rows"]))
    for ax, group in zip(axes, GROUPS):
        for i, variant in enumerate(variants):
            rows = [r for r in summary["rows"] if r["variant"] == variant]
            ax.errorbar([xs[repr(r["value"])] for r in rows], [r[group][0] for r in rows],
                        yerr=[r[group][1] for r in rows], marker="o", capsize=3, color=f"C{i}", label=variant)  # fmt: skip
        ax.set_title(group.capitalize(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel(summary["key"])
        if numeric and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
    axes[0].set_ylabel("top-1 accuracy, development split (%)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_sweep(config: AblationConfig, train_yaml: str, sets: dict, steps_c: int | None, train_runs) -> dict:
    """Every value x variant x seed (values outermost; finished runs reused), then ``sweep-KEY.json`` and
    ``sweep-KEY.png`` in :func:`sweep_dir`. ``train_runs`` is the runner's loop (runs folder and extra arguments).

    Returns:
        the sweep summary (with ``failed``: the runs that failed, which a rerun retries).
    """
    key, values = parse_sweep(config.sweep)
    out = sweep_dir(config.output_dir, key)
    runs_by_value, failed = {}, []
    for value in values:
        runs, bad = train_runs(
            config, train_yaml, sets, steps_c, runs_dir=os.path.join(out, f"{key}={value}"),
            extra_args=[f"--{key}", str(value)],
        )  # fmt: skip
        runs_by_value[repr(value)] = runs
        failed += [f"{key}={value}: {b}" for b in bad]
    summary = summarize_sweep(key, values, runs_by_value)
    summary["failed"] = failed
    summary["figure"] = sweep_chart(
        summary, os.path.join(out, f"sweep-{key}.png"), f"{config.title}: {key} sweep, seeds {config.seeds}"
    )
    write_json_atomic(os.path.join(out, f"sweep-{key}.json"), summary, indent=1)
    for row in summary["rows"]:
        cells = " ".join(f"{g.capitalize()} {row[g][0]:.2f}±{row[g][1]:.2f}" for g in GROUPS)
        print(f"{key}={row['value']} ({row['variant']}, seeds {row['seeds']}): {cells}", flush=True)
    print(f"sweep: {os.path.join(out, f'sweep-{key}.json')}; chart: {summary['figure']}", flush=True)
    return summary
