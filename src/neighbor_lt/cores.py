"""How many CPU cores this process may use (a leaf module: no imports from the package)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the platform has one (a container or
    ``taskset`` limit is honoured, where ``os.cpu_count()`` counts every core of the host), else ``os.cpu_count()``,
    and at least 1.

    Example:
        >>> usable_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
