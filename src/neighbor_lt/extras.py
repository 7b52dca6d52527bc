"""Optional dependencies: which extra of ``neighbor-lt`` installs each one, and one message for a missing one.

The core install (``pip install neighbor-lt``) trains and evaluates; curation, plots and the Space need extras.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> the extra that installs it (see [project.optional-dependencies] in pyproject.toml)
EXTRA_OF = {
    "openai": "neighbors",
    "httpx": "retrieval",
    "matplotlib": "plots",
    "sklearn": "plots",
    "scipy": "ablate",
    "gradio": "space",
}
PIP_NAME = {"sklearn": "scikit-learn"}  # where the distribution's name is not the import name


def install_hint(module: str) -> str | None:
    """``pip install "neighbor-lt[EXTRA]"`` for an optional module (its top-level import name), None for others."""
    extra = EXTRA_OF.get(module.split(".")[0])
    return f'pip install "neighbor-lt[{extra}]"' if extra else None


def missing_extra_message(err: ImportError) -> str | None:
    """The one-line message for an ImportError of an optional module: what is missing and the install command."""
    name = getattr(err, "name", None) or ""
    hint = install_hint(name)
    top = name.split(".")[0]
    return f"{PIP_NAME.get(top, top)} is not installed: {hint}" if hint else None


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional module, or fail with a ``ModuleNotFoundError`` that names the extra installing it.

    Example:
        >>> httpx = require("httpx", "the image downloader")  # doctest: +SKIP

    Args:
        module: the import name (``httpx``, ``sklearn.decomposition``).
        purpose: what needs it, for the message.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or module.split(".")[0] != err.name.split(".")[0]:
            raise  # something inside the module is missing, not the module itself
        top = module.split(".")[0]
        raise ModuleNotFoundError(
            f"{purpose} needs {top}: {install_hint(module) or 'pip install ' + top}", name=top
        ) from err
