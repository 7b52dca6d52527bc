"""Cost of the neighbor-silencing loss against balanced softmax and a dense-lambda reference.

Usage:
    python benchmarks/loss_cost.py                      # batch 512, 28,522 classes, ~40,000 pairs (iNat 2018 + aux)
    python benchmarks/loss_cost.py --device cuda --repeats 50

Each implementation runs in its own subprocess: forward + backward time (median of --repeats runs after warm-up)
and peak memory above the inputs (CUDA: max_memory_allocated; CPU: the process's peak resident set size, measured
after the inputs exist). Target: neighbor-silencing within 1.15x of balanced softmax in time and memory. The dense
reference builds the (C x C) log-lambda matrix the sparse loss avoids (3.2 GB at 28,522 classes).
Results are appended to benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from neighbor_lt.losses import balanced_softmax_loss, neighbor_csr, neighbor_silencing_loss
from neighbor_lt.results_md import add_results_arguments, machine_line, record_benchmark

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def make_inputs(batch, num_targets, num_aux, num_pairs, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_classes = num_targets + num_aux
    logits = torch.randn(batch, num_classes, generator=g).to(device)
    targets = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    counts = torch.randint(1, 1000, (num_classes,), generator=g).float().to(device)
    # every auxiliary class has at least one parent target; the rest of the pairs are extra parents
    parents = torch.randint(0, num_targets, (num_pairs,), generator=g)
    aux = torch.cat([torch.arange(num_aux), torch.randint(0, num_aux, (num_pairs - num_aux,), generator=g)])
    pairs = torch.stack([parents, num_targets + aux], 1).unique(dim=0).to(device)
    return logits, targets, counts, pairs


def dense_reference_loss(logits, targets, counts, log_lambda):
    """Eq. 4 with a dense (C x C) log-lambda matrix: cross-entropy on z + log n + log lambda[y]."""
    return F.cross_entropy(logits + counts.log() + log_lambda[targets], targets)


def run_one(impl, args):
    device = torch.device(args.device)
    logits, targets, counts, pairs = make_inputs(args.batch, args.targets, args.aux, args.pairs, device)
    # Memory is counted from here: the dense reference's C x C matrix (and the CSR lists) belong to the loss's cost.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = {}
    if impl == "neighbor_silencing":
        extra["csr"] = neighbor_csr(pairs, logits.shape[1], device)  # built once per run, as the Trainer does
    if impl == "dense_reference":
        c = logits.shape[1]
        log_lambda = torch.zeros(c, c, device=device)
        log_lambda[pairs[:, 0], pairs[:, 1]] = log_lambda[pairs[:, 1], pairs[:, 0]] = torch.log(torch.tensor(0.1))
        extra["log_lambda"] = log_lambda

    def step():
        x = logits.detach().requires_grad_(True)
        if impl == "balanced_softmax":
            loss = balanced_softmax_loss(x, targets, counts)
        elif impl == "neighbor_silencing":
            loss = neighbor_silencing_loss(x, targets, counts, pairs, lambda_s=0.1, csr=extra["csr"])
        else:
            loss = dense_reference_loss(x, targets, counts, extra["log_lambda"])
        loss.backward()
        return loss.item()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    value = step()  # warm-up (and the first peak)
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"impl": impl, "median_ms": 1000 * statistics.median(times), "peak_mb": peak / 2**20, "loss": value}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--targets", type=int, default=8142, help="target classes (iNaturalist 2018)")
    parser.add_argument("--aux", type=int, default=20380, help="auxiliary classes (28,522 in all by default)")
    parser.add_argument("--pairs", type=int, default=40000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)  # internal: run one implementation
    add_results_arguments(parser)
    parser.add_argument("--no-record", dest="no_append", action="store_true", help=argparse.SUPPRESS)  # old name
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl:
        print(json.dumps(run_one(args.impl, args)))
        return

    rows = []
    forwarded = [a for a in sys.argv[1:] if a not in ("--no-record", "--no_append")]
    for impl in ("balanced_softmax", "neighbor_silencing", "dense_reference"):
        out = subprocess.run([sys.executable, __file__, *forwarded, "--impl", impl], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{impl} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    by = {r["impl"]: r for r in rows}
    base = by["balanced_softmax"]
    ns = by["neighbor_silencing"]
    time_ratio = ns["median_ms"] / base["median_ms"]
    mem_ratio = ns["peak_mb"] / base["peak_mb"]
    classes = args.targets + args.aux
    lines = [
        f"batch {args.batch}, {classes:,} classes ({args.targets:,} target + {args.aux:,} auxiliary), "
        f"{len(make_inputs(1, args.targets, args.aux, args.pairs, 'cpu')[3]):,} neighbor pairs, device {args.device}, "
        f"median of {args.repeats}",
        "",
        "| loss | forward+backward ms | peak memory above inputs (MB) | time / balanced softmax | memory / balanced softmax |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['impl']} | {r['median_ms']:.1f} | {r['peak_mb']:.0f} | {r['median_ms'] / base['median_ms']:.2f}x "
            f"| {r['peak_mb'] / base['peak_mb']:.2f}x |"
        )
    verdict = "met" if time_ratio <= 1.15 and mem_ratio <= 1.15 else "NOT met"
    lines += ["", f"Target (neighbor-silencing within 1.15x of balanced softmax in time and memory): {verdict} "
              f"(time {time_ratio:.2f}x, memory {mem_ratio:.2f}x)."]  # fmt: skip
    report = "\n".join(lines)
    print(report)
    record_benchmark(
        args, RESULTS, "Loss cost", "benchmarks/loss_cost.py", machine_line(args.device), report, forwarded
    )


if __name__ == "__main__":
    main()
