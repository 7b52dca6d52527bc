"""Shared fixtures. Every test is offline: the Hub and datasets are switched to offline mode before any HF import."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# A shell starts a background job (`nohup pytest ... &`) with SIGINT ignored, and children inherit an ignored signal:
# the Ctrl-C tests' subprocesses would then never see their SIGINT. A handler is reset to the default at exec.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "tiny-imagenet-200"


@pytest.fixture(scope="session")
def tiny_imagenet_dir() -> Path:
    """The shared Tiny-ImageNet-200 Parquet folder (real ImageNet images at 64x64)."""
    if not (SHARED_DATA / "classes.tsv").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}: clone the project beside ../shared")
    return SHARED_DATA


@pytest.fixture(scope="module")
def jpegs(tiny_imagenet_dir) -> list[bytes]:
    """The first 40 real JPEGs of the shared validation split (what the loopback image servers serve)."""
    from retrieval_fixtures.server import load_jpegs

    return load_jpegs(tiny_imagenet_dir, 40)


@pytest.fixture(scope="module")
def server(jpegs):
    """A loopback image server with every failure mode (``retrieval_fixtures/server.py``), shared by a module."""
    from retrieval_fixtures.server import ImageServer

    server = ImageServer(jpegs).start()
    yield server
    server.stop()


@pytest.fixture
def only_loopback(monkeypatch):
    """Fail the test if anything tries to open a TCP connection to an address other than 127.0.0.1."""
    import socket

    real = socket.create_connection
    contacted = []

    def guarded(address, *args, **kwargs):
        contacted.append(address[0])
        assert address[0] == "127.0.0.1", f"connection attempted to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return contacted


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> str:
    """A folder with a tiny random DINOv2 (32 px, patch 8, 2 layers of width 32) and its image processor: the
    filter and rank stages' image model in tests."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2")
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)
