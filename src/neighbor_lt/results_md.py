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


def add_results_arguments(parser) -> None:
    """The two options every benchmark takes: ``--machine_note`` (added to the machine line) and ``--no_append``
    (print only, leave the results file alone)."""
    parser.add_argument("--machine_note", default="", help="added to the machine line, e.g. 'shared, load 8'")
    parser.add_argument("--no_append", action="store_true", help="print only; leave RESULTS.md alone")


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` gives it (benchmarks name it: bf16 speed differs between CPU models), or
    ``platform.processor()`` where ``lscpu`` is missing.

    Example:
        >>> cpu_model()  # doctest: +SKIP
        'AMD EPYC'
    """
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    return next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
        platform.processor(),
    )


def machine_line(device: str | None = None, load: float | None = None, torch_version: bool = True) -> str:
    """The machine a benchmark ran on: architecture, CPU cores, torch (when imported), the GPU or "no GPU", and the
    load average at the end when given.

    Example:
        >>> machine_line("cpu", load=1.2)  # doctest: +SKIP
        'x86_64, 2 CPU cores, torch 2.9.0, no GPU, load average 1.2 at the end'

    Args:
        device: the torch device it measured on (``cuda...`` names the GPU); None: no GPU named either way.
        load: the 1-minute load average at the end.
        torch_version: name torch's version (when torch is imported).
    """
    import platform
    import sys

    parts = [platform.machine(), f"{os.cpu_count()} CPU cores"]
    torch = sys.modules.get("torch")
    if torch_version and torch is not None:
        parts.append(f"torch {torch.__version__}")
    if device is not None:
        parts.append(torch.cuda.get_device_name() if device.startswith("cuda") and torch is not None else "no GPU")
    if load is not None:
        parts.append(f"load average {load:.1f} at the end")
    return ", ".join(parts)


def record_benchmark(args, path: str, title: str, script: str, machine: str, report: str, argv=None) -> bool:
    """Append a benchmark's report to ``path`` unless ``--no_append`` was given (see :func:`add_results_arguments`);
    whether it appended.

    Example:
        >>> record_benchmark(args, RESULTS, "Loss cost", "benchmarks/loss_cost.py", machine_line("cpu"), report)
        ... # doctest: +SKIP

    Args:
        args: the parsed options (``no_append``, ``machine_note``).
        path: the results file.
        title, script, machine, report: as :func:`append_benchmark`.
        argv: the benchmark's arguments (``sys.argv[1:]`` when None).
    """
    if getattr(args, "no_append", False):
        return False
    import sys

    argv = sys.argv[1:] if argv is None else argv
    append_benchmark(path, title, script, argv, machine, report, getattr(args, "machine_note", ""))
    return True
