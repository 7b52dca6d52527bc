"""The paper's train configs start as written (their own report_to), on tiny checkpoints of each backbone family and
the demo data; without the tracker's package they stop before any data loads, with one line naming the extra."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    ViTImageProcessor,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from neighbor_lt import cli
from neighbor_lt.configs import ConfigError, DataArguments, ModelArguments, NeighborLTTrainingArguments, parse_args
from neighbor_lt.mae import MAEModelArguments, MAETrainingArguments

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo" / "data"
BENCHMARKS = ("imagenet_lt", "places_lt", "inat2018")
PAPER_CONFIGS = [f"recipes/{b}/{m}/train.yaml" for b in BENCHMARKS for m in ("dinov2", "clip", "scratch")]
MAE_CONFIGS = [f"recipes/{b}/scratch/pretrain_mae.yaml" for b in BENCHMARKS]
SIZE = 32
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": SIZE, "patch_size": 8}
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",)}


def test_there_are_nine_paper_train_configs_and_they_report_to_a_tracker():
    on_disk = {str(p.relative_to(REPO)) for b in BENCHMARKS for p in (REPO / "recipes" / b).rglob("train.yaml")}
    assert on_disk == set(PAPER_CONFIGS)
    for path in PAPER_CONFIGS:
        assert "report_to: tensorboard" in (REPO / path).read_text(), path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random stand-ins, saved as the real ones are: a DINOv2 backbone, a CLIP (text + vision) model and an MAE
    pre-training output folder, each with its family's image processor."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    crop = {"height": SIZE, "width": SIZE}
    Dinov2Model(Dinov2Config(**TINY, mlp_ratio=2)).save_pretrained(root / "dinov2")
    BitImageProcessor(size={"shortest_edge": SIZE}, crop_size=crop).save_pretrained(root / "dinov2")
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    vision = {**TINY, "intermediate_size": 64}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=crop).save_pretrained(root / "clip")
    mae = ViTMAEConfig(**TINY, intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, decoder_intermediate_size=64)  # fmt: skip
    ViTMAEForPreTraining(mae).save_pretrained(root / "scratch")
    ViTImageProcessor(size=crop).save_pretrained(root / "scratch")
    return {name: root / name for name in ("dinov2", "clip", "scratch")}


def _test_data_args(path: str, checkpoint: Path, output_dir: Path) -> list[str]:
    """The config as written, with its model and data keys pointed at test inputs and a two-step budget."""
    image_size = [] if "scratch" in path else ["--image_size", str(SIZE)]  # the MAE fixes its own size
    return ["train", "--config", path, "--model_name_or_path", str(checkpoint), *image_size,
            "--dataset_name", "parquet", "--train_files", str(DEMO / "target/train.parquet"),
            "--eval_files", str(DEMO / "target/validation.parquet"), "--aux_dataset", str(DEMO / "aux"),
            "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "32", "--max_eval_samples", "32", "--dataloader_num_workers", "0",
            "--bf16", "false", "--logging_steps", "1"]  # fmt: skip


@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_paper_train_config_starts(path, checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    checkpoint = checkpoints[path.split("/")[2]]
    out = tmp_path / "run"
    assert cli.main(_test_data_args(path, checkpoint, out)) == 0
    assert (out / "model.safetensors").is_file() and (out / "eval_results.json").is_file()
    events = list(out.rglob("events.out.tfevents.*"))  # the config's own tracker wrote its log
    assert events and max(e.stat().st_size for e in events) > 0


@pytest.mark.parametrize("path", PAPER_CONFIGS + MAE_CONFIGS)
def test_without_the_tracker_the_config_stops_before_its_data(path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the configs' data folders do not exist here: reaching the data would fail otherwise
    for name in TRACKER_MODULES["tensorboard"]:  # None in sys.modules: what import and find_spec see without it
        monkeypatch.setitem(sys.modules, name, None)
    if path.endswith("pretrain_mae.yaml"):
        with pytest.raises(ConfigError, match=r'report_to tensorboard: .*pip install "neighbor-lt\[tracking\]"'):
            parse_args((MAEModelArguments, DataArguments, MAETrainingArguments), ["--config", path])
        return
    assert cli.main(["train", "--config", path, "--bf16", "false"]) == 2  # bf16: the GPU configs on a CPU
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("configuration error: report_to tensorboard: tensorboard is not installed: ")
    assert 'pip install "neighbor-lt[tracking]"' in err


def test_a_missing_tracker_is_one_line_and_exit_2_in_a_fresh_interpreter():
    # the script's own exit path (neighbor-lt train returns 2 above, in this process)
    args = ["recipes/train.py", "--config", "recipes/imagenet_lt/dinov2/train.yaml", "--bf16", "false"]
    code = (
        f"import runpy, sys; sys.modules.update(dict.fromkeys({TRACKER_MODULES['tensorboard']!r}))\n"
        f"sys.argv = {args!r}; runpy.run_path('recipes/train.py', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        'configuration error: report_to tensorboard: tensorboard is not installed: pip install "neighbor-lt[tracking]"'
        " (or set report_to none)"
    ]


def test_trackio_is_checked_too(monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)
    types = (ModelArguments, DataArguments, NeighborLTTrainingArguments)
    with pytest.raises(ConfigError, match=r"report_to trackio: trackio is not installed: .*\[tracking\]"):
        parse_args(types, ["--output_dir", "x", "--report_to", "trackio"])
    _, _, args = parse_args(types, ["--output_dir", "x"])
    assert args.report_to == []  # the default reports nowhere and needs nothing


def test_report_to_trackio_logs_the_steps_locally(tmp_path):
    """The tracking extra's other tracker: a run logs each step into trackio's local database (no Space, offline)."""
    tiny = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,patch_size=16"
    argv = ["train", "--config", "recipes/demo/train.yaml", "--config_overrides", tiny, "--image_size", "32",
            "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "8",
            "--max_eval_samples", "32", "--dataloader_num_workers", "0", "--logging_steps", "1",
            "--report_to", "trackio"]  # fmt: skip
    code = f"import sys; from neighbor_lt.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}  # read when trackio is imported
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (database,) = (tmp_path / "trackio").glob("*.db")
    with sqlite3.connect(database) as db:
        steps = [json.loads(row[0]).get("train/global_step") for row in db.execute("select metrics from metrics")]
    assert {1, 2} <= set(steps)
