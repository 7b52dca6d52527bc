"""Small file helpers shared by the recipes, the run folder and the curation stages (a leaf module: no imports from
the package)."""

from __future__ import annotations

import json
import os


def write_json_atomic(path: str, value, indent: int = 2, **dump_kwargs) -> str:
    """Write ``value`` as JSON to ``path`` through a temporary file and a rename: a reader (or a rerun after a kill)
    never sees half a file. Creates the parent folder. Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent, **dump_kwargs)
    os.replace(tmp, path)
    return path
