"""Optional dependencies: which extra of ``neighbor-lt`` installs each one, and one message for a missing one.

The core install (``pip install neighbor-lt``) trains and evaluates; curation, plots and the Space need extras.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# import name -> the extra that installs it (see [project.optional-dependencies] in pyproject.toml)
EXTRA_OF = {
    "openai": "neighbors",
    "httpx": "retrieval",
    "matplotlib": "plots",
    "sklearn": "plots",
    "scipy": "ablate",
    "gradio": "space",
    "tensorboard": "tracking",
    "trackio": "tracking",
}
PIP_NAME = {"sklearn": "scikit-learn", "comet_ml": "comet-ml"}  # where the distribution's name is not the import name


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


# report_to name -> the modules its Trainer callback can use (any one of them). Trackers outside the `tracking` extra
# are installed by their own package name; report_to names not listed here are left to transformers.
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "swanlab": ("swanlab",),
}


def missing_tracker_message(report_to: str | list[str] | None) -> str | None:
    """One line naming the first ``report_to`` tracker whose package is not installed and how to install it; None
    when every named tracker can start. Checked with the arguments, so a run stops before its data loads, not when
    the Trainer builds its callbacks.

    Example:
        >>> missing_tracker_message(["tensorboard"])  # doctest: +SKIP
        'report_to tensorboard: tensorboard is not installed: pip install "neighbor-lt[tracking]"'

    Args:
        report_to: ``TrainingArguments.report_to``: a name, a list of names, ``"none"``/``"all"`` or None.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        modules = TRACKERS.get(name, ())
        if modules and not any(_installed(m) for m in modules):
            hint = install_hint(modules[0]) or f"pip install {PIP_NAME.get(modules[0], modules[0])}"
            return f"report_to {name}: {modules[0]} is not installed: {hint} (or set report_to none)"
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec in sys.modules
        return False
