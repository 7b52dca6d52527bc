"""Shared fixtures. Every test is offline: the Hub and datasets are switched to offline mode before any HF import."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "tiny-imagenet-200"


@pytest.fixture(scope="session")
def tiny_imagenet_dir() -> Path:
    """The shared Tiny-ImageNet-200 Parquet folder (real ImageNet images at 64x64)."""
    if not (SHARED_DATA / "classes.tsv").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}: clone the project beside ../shared")
    return SHARED_DATA
