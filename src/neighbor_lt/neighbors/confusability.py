"""The confusability report of the ``rank`` stage: per target, its candidates with name distance and visual score.

Read from a ranked neighbor manifest (each target's ``ranking`` record): ``rank/report.csv``, ``rank/report.md``,
``rank/report.png``, and what the auxiliary dataset card shows (:func:`card_summary`). A leaf module: the dataset card
of the build stage reads it without importing the rank stage.
"""

from __future__ import annotations

import csv
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

#: Visual scores of a (target, candidate) pair; ``score:`` picks the one that ranks.
SCORES = {
    "prototype": "cosine similarity of the target's prototype and the candidate's mean probe embedding",
    "confusion": "share of the candidate's probe images whose nearest target prototype is this target",
}

# ---- report ------------------------------------------------------------------------------------------------------
REPORT_COLUMNS = (
    "target", "target_query", "group", "status", "candidate", "name_rank", "backend", "wordnet_distance",
    "name_similarity", "probe_images", "prototype", "confusion", "score", "visual_rank", "kept", "reason",
)  # fmt: skip


def report_rows(manifest: dict) -> list[dict]:
    """One row per (target, candidate) pair of a ranked manifest, in target order, candidates in name-rank order."""
    rows = []
    for entry in manifest["targets"]:
        ranking = entry.get("ranking") or {}
        for r in ranking.get("candidates", []):
            rows.append({
                "target": entry["name"], "target_query": entry.get("query"), "group": entry.get("group"),
                "status": ranking["status"], "candidate": r["name"], "name_rank": r["name_rank"],
                "backend": r["backend"], "wordnet_distance": r["distance"], "name_similarity": r["name_similarity"],
                "probe_images": r["probe_images"], "prototype": r["prototype"], "confusion": r["confusion"],
                "score": r["score"], "visual_rank": r["visual_rank"], "kept": r["kept"], "reason": r["reason"] or "",
            })  # fmt: skip
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value).replace("|", "/")


def write_report(manifest: dict, out: str) -> dict[str, str]:
    """``report.csv``, ``report.md`` (per target, its candidates with name distance and visual score) and, when
    matplotlib is installed, ``report.png``; returns the paths written."""
    rows = report_rows(manifest)
    paths = {"csv": os.path.join(out, "report.csv"), "md": os.path.join(out, "report.md")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    ranking = manifest.get("ranking") or {}
    lines = [
        "# Confusability of the neighbor candidates",
        "",
        f"Embedder `{ranking.get('model')}` ({ranking.get('pooling')} pooling), up to {ranking.get('probe_images')} "
        f"probe images per candidate; ranked by **{ranking.get('score')}** ({SCORES.get(ranking.get('score'), '')})"
        + (f", none below {ranking['min_score']}" if ranking.get("min_score") is not None else "") + ".",
        f"{ranking.get('targets_ranked', 0)} target(s) ranked visually, {ranking.get('targets_name_ranked', 0)} kept "
        f"their name-ranked neighbors; {ranking.get('pairs_kept', 0)} of {ranking.get('pairs', 0)} pairs kept.",
    ]  # fmt: skip
    if ranking.get("reason"):
        lines.append(f"\n**The visual ranking did not run**: {ranking['reason']}.")
    columns = (
        "candidate",
        "name_rank",
        "wordnet_distance",
        "probe_images",
        "prototype",
        "confusion",
        "kept",
        "reason",
    )
    for entry in manifest["targets"]:
        mine = [r for r in rows if r["target"] == entry["name"]]
        if not mine:
            continue
        status = entry["ranking"]["status"]
        why = f" ({entry['ranking']['reason']})" if entry["ranking"]["reason"] else ""
        lines += ["", f"## {entry['name']} ({entry.get('query')}, {entry.get('group')}): {status}{why}", ""]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in mine]
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    try:
        paths["png"] = plot_report(rows, ranking, os.path.join(out, "report.png"))
    except ModuleNotFoundError as e:  # the plot is a nicety: the tables are written
        logger.warning("rank: no report.png: %s", e)
    return paths


def plot_report(rows: list[dict], ranking: dict, path: str) -> str:
    """Visual score against name distance (WordNet distance, else name rank), kept pairs in colour, and the score
    histograms of kept and dropped pairs."""
    from neighbor_lt.extras import require

    require("matplotlib", "the confusability plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r["score"] is not None]
    use_distance = any(r["wordnet_distance"] is not None for r in scored)
    x_key = "wordnet_distance" if use_distance else "name_rank"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rng = np.random.default_rng(0)
    values = [r["score"] for r in scored]
    bins = np.linspace(min(values), max(values) + 1e-9, 21) if values else 20
    for kept, colour, label in ((False, "#999999", "dropped"), (True, "#0072B2", "kept")):
        pick = [r for r in scored if r["kept"] == kept and r[x_key] is not None]
        x = np.array([r[x_key] for r in pick], float) + rng.uniform(-0.15, 0.15, len(pick))
        left.scatter(x, [r["score"] for r in pick], s=14, alpha=0.7, color=colour, label=f"{label} ({len(pick)})")
        right.hist([r["score"] for r in scored if r["kept"] == kept], bins=bins, alpha=0.6, color=colour, label=label)
    for axis in (left, right):
        if ranking.get("min_score") is not None:
            (axis.axhline if axis is left else axis.axvline)(ranking["min_score"], color="#D55E00", ls="--", lw=1)
    left.set_xlabel("WordNet distance to the target (edges)" if use_distance else "rank by the name backend")
    left.set_ylabel(f"visual score ({ranking.get('score')})")
    left.set_title("Does the name say how confusable a candidate looks?")
    left.legend(frameon=False)
    right.set_xlabel(f"visual score ({ranking.get('score')})")
    right.set_ylabel("pairs")
    right.set_title("Scores of kept and dropped pairs")
    right.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def card_summary(manifest: dict, top: int = 10) -> dict | None:
    """What the dataset card shows about the ranking (None when the rank stage did not run): the settings, the score
    distribution of kept and dropped pairs, and the ``top`` strongest and weakest kept pairs."""
    ranking = manifest.get("ranking")
    if not ranking:
        return None
    rows = report_rows(manifest)
    scored = [r for r in rows if r["score"] is not None]

    def quantiles(values):
        if not values:
            return None
        q = np.quantile(np.asarray(values, float), [0, 0.25, 0.5, 0.75, 1])
        return {"n": len(values), **dict(zip(("min", "q25", "median", "q75", "max"), (round(float(v), 3) for v in q)))}

    kept = sorted((r for r in scored if r["kept"]), key=lambda r: -r["score"])
    return {
        **{k: ranking.get(k) for k in ("model", "pooling", "score", "min_score", "probe_images", "candidate_factor")},
        **{k: ranking.get(k) for k in ("status", "reason", "targets_ranked", "targets_name_ranked", "pairs")},
        "pairs_kept": ranking.get("pairs_kept"),
        "score_help": SCORES.get(ranking.get("score"), ""),
        "distribution": {
            name: q
            for name, q in (
                ("kept", quantiles([r["score"] for r in kept])),
                ("dropped", quantiles([r["score"] for r in scored if not r["kept"]])),
            )
            if q
        },
        "strongest": kept[:top],
        "weakest": kept[::-1][:top],
    }


__all__ = ["REPORT_COLUMNS", "SCORES", "card_summary", "plot_report", "report_rows", "write_report"]
