"""The one writer of the results files (``benchmarks/RESULTS.md``): every benchmark and the ablation report append
their sections through :func:`append_results`.

Example:
    >>> section = results_section("Loss cost", "python benchmarks/loss_cost.py", "x86_64, 2 CPU cores", table)
    >>> append_results("benchmarks/RESULTS.md", section)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import os
import shlex


def results_section(title: str, command: str, machine: str, body: str) -> str:
    """A results section: a dated title, the command, the machine, then the body.

    Args:
        title: what was measured; the date is added.
        command: the exact command line that produced it.
        machine: the machine line (CPU / GPU, load).
        body: the figures (Markdown).
    """
    return f"## {title} ({datetime.date.today()})\n\n- Command: `{command.strip()}`\n- Machine: {machine}\n\n{body}\n"


def append_results(path: str, section: str) -> None:
    """Append a Markdown section to a results file; append only, never rewrite (other benchmarks append to the same
    file).

    Args:
        path: the results file, e.g. ``benchmarks/RESULTS.md`` (created with its folder when missing).
        section: the Markdown text, e.g. from :func:`results_section`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write("\n" + section.rstrip() + "\n")


def append_benchmark(path: str, title: str, script: str, argv: list[str], machine: str, report: str, note: str = ""):
    """Append one benchmark run: its section with the command that reproduces it (``--no_append`` left out).

    Example:
        >>> append_benchmark("benchmarks/RESULTS.md", "Download throughput", "benchmarks/download.py",
        ...                  sys.argv[1:], "x86_64, 2 CPU cores", report)  # doctest: +SKIP

    Args:
        path: the results file.
        title: what was measured.
        script: the benchmark's path from the repository root.
        argv: its arguments as given.
        machine: the machine line; ``note`` (the user's ``--machine_note``) is appended to it.
        report: the figures (Markdown).
    """
    command = f"python {script} " + shlex.join(a for a in argv if a != "--no_append")
    append_results(path, results_section(title, command, machine + (f"; {note}" if note else ""), report))
