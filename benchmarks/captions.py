"""Time and memory of the ``captions`` backend: one pass over synthetic caption shards for thousands of names.

Usage:
    python benchmarks/captions.py --rows 1000000 10000000 --names 5000 --threads 2 --memory_limit 3GB \
        --machine_note "shared with other jobs"

Synthetic LAION-like metadata (``url``, ``caption``, ``similarity``, ``width``, ``height``, ``punsafe``) is written
once as 1M-row Parquet shards under ``benchmarks/.cache/captions/`` (vectorised with numpy + pyarrow: a 10M-row set
takes well under a minute). Captions are 4-16 words drawn with a Zipf law from WordNet noun lemmas, stock-photo words
and function words, in random case with punctuation; about a third carry one of the neighbor names (WordNet lemmas,
one to three words), and decoys that contain a name inside a longer word ("catalog") are common words of the
vocabulary. Each size runs in a fresh process through the product code
(:class:`neighbor_lt.retrieval.captions.CaptionSearch`, ``search_many``): the time of the one pass for every name, the
peak resident memory of that process (``ru_maxrss``: Python, Arrow and DuckDB together), the number of candidates.
The extrapolation to 2B rows is linear in rows (the pass streams; only the hits are kept). Appends a section to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))
CACHE = os.path.join(HERE, ".cache", "captions")
RESULTS = os.path.join(HERE, "RESULTS.md")
WORDNET_INDEX = "/usr/share/wordnet/index.noun"
ROWS_PER_SHARD = 1_000_000
FILLER = (
    "a the of with and in on for to at by from photo image stock picture vector illustration free best new sale "
    "cheap black white red blue green small large old vintage modern beautiful close up view 2019 2020 hd 4k png "
    "jpg background isolated set collection design art print poster home garden summer winter kids my our your"
).split()
DECOYS = "catalog category cattle scatter concatenate dogma bearing seal sealing spine antelope pineapple".split()


def wordnet_lemmas(limit: int | None = None) -> list[str]:
    """Noun lemmas of WordNet 3.0 (Debian's wordnet-base), lower case, underscores as spaces, letters only."""
    out = []
    with open(WORDNET_INDEX) as f:
        for line in f:
            if line.startswith(" "):
                continue
            lemma = line.split(" ", 1)[0]
            if lemma.replace("_", "").isalpha() and lemma.count("_") <= 2 and 3 <= len(lemma) <= 24:
                out.append(lemma.replace("_", " "))
    return out[:limit] if limit else out


def choose_names(count: int, seed: int = 0) -> list[str]:
    """``count`` neighbor names: WordNet lemmas, about half of them two or three words long (WordNet has many compounds)."""
    lemmas = wordnet_lemmas()
    rng = np.random.default_rng(seed)
    return sorted(lemmas[i] for i in rng.choice(len(lemmas), size=count, replace=False))


def make_shard(path: str, rows: int, shard: int, names: list[str], seed: int) -> None:
    """One Parquet shard of ``rows`` synthetic captions, built column-wise (no Python loop over rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng([seed, shard])
    fillers = FILLER + DECOYS + wordnet_lemmas(20000)[::4]
    # the vocabulary: each word as is, Capitalised, and with a trailing comma / colon
    vocab = (
        fillers + [w.capitalize() for w in fillers] + [w + "," for w in fillers] + [w.upper() + ":" for w in fillers]
    )
    forms = names + [n.title() for n in names] + [n.upper() for n in names] + [n + "," for n in names]
    table = pa.array(vocab + forms)
    max_words = 16
    lengths = rng.integers(4, max_words + 1, rows)
    # Zipf-like ranks over the filler vocabulary: function and stock words dominate, as in real alt-text
    ranks = np.minimum((rng.pareto(0.9, size=(rows, max_words)) * 12).astype(np.int64), len(fillers) - 1)
    variant = rng.choice(4, size=(rows, max_words), p=[0.7, 0.2, 0.07, 0.03])
    ranks = variant * len(fillers) + ranks
    has_name = rng.random(rows) < 0.35
    name_rank = np.minimum((rng.pareto(0.8, rows) * 20).astype(np.int64), len(names) - 1)
    name_ids = len(vocab) + rng.integers(0, 4, rows) * len(names) + rng.permutation(len(names))[name_rank]
    position = (rng.random(rows) * lengths).astype(np.int64)
    columns = []
    for j in range(max_words):
        ids = np.where(has_name & (position == j), name_ids, ranks[:, j])
        columns.append(table.take(pa.array(ids, mask=j >= lengths)))
    captions = pc.binary_join_element_wise(*columns, " ", null_handling="skip")
    row_ids = pa.array(np.arange(rows)).cast(pa.string())
    urls = pc.binary_join_element_wise(f"https://img{shard}.example.com/", row_ids, ".jpg", "")
    out = pa.table(
        {
            "url": urls,
            "caption": captions,
            "similarity": pa.array(rng.random(rows, dtype=np.float32) * 0.4),
            "width": pa.array(rng.integers(64, 2048, rows, dtype=np.int32)),
            "height": pa.array(rng.integers(64, 2048, rows, dtype=np.int32)),
            "punsafe": pa.array(rng.beta(0.5, 20, rows).astype(np.float32)),
        }
    )
    pq.write_table(out, path + ".tmp", row_group_size=128 * 1024)
    os.replace(path + ".tmp", path)


def make_set(rows: int, names: list[str], seed: int = 0) -> tuple[str, float]:
    """The folder of a ``rows``-row set (cached) and the seconds it took to write (0 when cached)."""
    folder = os.path.join(CACHE, f"rows{rows}-names{len(names)}-seed{seed}")
    os.makedirs(folder, exist_ok=True)
    start = time.monotonic()
    for shard in range((rows + ROWS_PER_SHARD - 1) // ROWS_PER_SHARD):
        path = os.path.join(folder, f"part-{shard:05d}.parquet")
        if not os.path.exists(path):
            make_shard(path, min(ROWS_PER_SHARD, rows - shard * ROWS_PER_SHARD), shard, names, seed)
    return folder, time.monotonic() - start


def one_pass(folder: str, names: list[str], threads: int, memory_limit: str | None, max_results: int) -> dict:
    """One ``search_many`` pass over a set for every name (run in a fresh process by ``main``)."""
    from neighbor_lt.retrieval.captions import CaptionSearch

    start, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    backend = CaptionSearch(
        os.path.join(folder, "*.parquet"), score_column="similarity", width_column="width", height_column="height",
        min_width=128, min_height=128, nsfw_column="punsafe", max_nsfw=0.5, synonyms=False, threads=threads,
        memory_limit=memory_limit,
    )  # fmt: skip
    hits = backend.search_many({n: [n] for n in names}, max_results=max_results)
    seconds, used = time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "cpu_s": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "candidates": sum(len(h) for h in hits.values()),
        "names_with_hits": sum(1 for h in hits.values() if h),
    }


def main():
    from neighbor_lt.results_md import add_results_arguments, record_benchmark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--names", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory_limit", default="3GB")
    parser.add_argument("--max_results", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    add_results_arguments(parser)
    parser.add_argument("--_pass", help=argparse.SUPPRESS)  # internal: one measured pass in a child process
    args = parser.parse_args()
    names = choose_names(args.names, args.seed)
    if args._pass:
        print(json.dumps(one_pass(args._pass, names, args.threads, args.memory_limit, args.max_results)))
        return
    results = []
    for rows in args.rows:
        folder, made = make_set(rows, names, args.seed)
        child = [sys.executable, __file__, "--_pass", folder, "--names", str(args.names), "--seed", str(args.seed)]
        child += ["--threads", str(args.threads), "--memory_limit", args.memory_limit]
        child += ["--max_results", str(args.max_results)]
        load_before = os.getloadavg()[0]
        result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        result.update(rows=rows, generated_s=made, load_before=load_before, load_after=os.getloadavg()[0])
        results.append(result)
        print(json.dumps(result), flush=True)
    report = _report(results, args)
    print(report)
    title = "Captions backend: one pass for every name"
    record_benchmark(args, RESULTS, title, "benchmarks/captions.py", _machine(args), report)


def _machine(args) -> str:
    import duckdb

    from neighbor_lt.results_md import cpu_model

    model = cpu_model()

    return f"{model}, {os.cpu_count()} cores ({args.threads} DuckDB threads), DuckDB {duckdb.__version__}"


def _report(results: list[dict], args) -> str:
    lines = [
        f"{args.names} neighbor names (WordNet noun lemmas), synthetic LAION-like shards of 1M rows, "
        f"memory_limit {args.memory_limit}, max_results {args.max_results}, filters: min 128x128, punsafe <= 0.5.",
        "",
        "| rows | pass, wall (s) | CPU (s) | rows/s (wall) | peak RSS (MB) | candidates | names with hits | "
        "load avg before / after |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} | "
            f"{r['candidates']:,} | {r['names_with_hits']:,} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    big = max(results, key=lambda r: r["rows"])
    scale = 2e9 / big["rows"]
    cpu_hours = scale * big["cpu_s"] / 3600
    lines += [
        "",
        f"Target (10M rows x 5,000 names in under 5 minutes and 4 GB on 2 cores); the {big['rows']:,}-row pass: CPU "
        f"{big['cpu_s']:.0f} s, i.e. about {big['cpu_s'] / args.threads:.0f} s on {args.threads} idle cores; peak RSS "
        f"{big['peak_rss_mb'] / 1024:.1f} GB; wall {big['seconds']:.0f} s at the load averages shown (the machine's "
        f"{os.cpu_count()} cores shared with other jobs, so the wall time measures the load more than the pass).",
        f"Extrapolation to 2B rows, linear in rows from the {big['rows']:,}-row pass: {cpu_hours:.1f} CPU-hours, "
        f"about {cpu_hours / args.threads:.1f} h on {args.threads} idle cores or {cpu_hours / 32 * 60:.0f} min on 32 "
        f"(at this load: {scale * big['seconds'] / 3600:.0f} h). Memory does not grow with rows: shards are read in "
        "batches of shards_per_batch (8 here: 8M rows), and between batches only max_results rows per name are kept "
        f"({args.names:,} x {args.max_results} at most); with larger shards, lower shards_per_batch.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
