"""A run folder is one finished run or says it is not: resume, refusal to mix runs, and kills at chosen points."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neighbor_lt.configs import ConfigError
from neighbor_lt.run_folder import INCOMPLETE_FILE, RunFolder

REPO = Path(__file__).resolve().parents[1]
TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,patch_size=16"


def _args(out, *extra):
    return ["--config", str(REPO / "recipes/demo/train.yaml"), "--output_dir", str(out), "--config_overrides", TINY,
            "--image_size", "32", "--max_steps", "2", "--per_device_train_batch_size", "8", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--max_eval_samples", "40", "--disable_tqdm", "true", *extra]  # fmt: skip


def _train(argv):
    from neighbor_lt.cli import train

    return train(argv)


def test_resume_last_is_not_carried_and_a_finished_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    _train(_args(out, "--save_strategy", "steps", "--save_steps", "2"))
    assert RunFolder(out).is_finished() and not (out / INCOMPLETE_FILE).exists()
    assert (out / "checkpoint-2").is_dir()

    # a second run into the finished folder stops before any data loads
    monkeypatch.setattr("neighbor_lt.train.build_data", lambda config: pytest.fail("data loaded"))
    with pytest.raises(ConfigError, match=r"holds a finished run: .*--overwrite_output_dir true"):
        _train(_args(out))
    monkeypatch.undo()
    monkeypatch.chdir(REPO)

    # the Trainer's convention: true / last resume the newest checkpoint
    _train(_args(out, "--resume_from_checkpoint", "true", "--max_steps", "3"))
    saved = yaml.safe_load((out / "args.yaml").read_text())
    assert saved["resume_from_checkpoint"] is None  # a rerun from args.yaml is a fresh run
    assert saved["run"]["resumed_from"].endswith("checkpoint-2")
    assert json.loads((out / "eval_results.json").read_text())["train_steps"] == 3
    assert json.loads((out / "train_results.json").read_text())  # the resumed run's own metrics
    with pytest.raises(ConfigError, match="resume_from_checkpoint: no checkpoint folder at"):
        _train(_args(tmp_path / "other", "--resume_from_checkpoint", str(tmp_path / "nope")))


_KILL_AT = """
import os, signal, sys
import neighbor_lt.run_folder as rf
point = sys.argv[1]
original = getattr(rf.RunFolder, point)
def killed(self, *a, **k):
    if point != "write_info":
        original(self, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(rf.RunFolder, point, killed)
from neighbor_lt.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("point", ["write_info", "write_args"])
def test_a_kill_leaves_the_folder_marked_incomplete(tmp_path, monkeypatch, point):
    """SIGKILL after the new weights are written (before the run's label space) or right after args.yaml: the
    folder says it is incomplete and holds none of the previous run's card or results."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    _train(_args(out))
    assert (out / "README.md").exists() and (out / "eval_results.json").exists()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _KILL_AT, point, *_args(out, "--overwrite_output_dir", "true", "--seed", "7")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    folder = RunFolder(out)
    assert folder.is_incomplete() and not folder.is_finished()
    for stale in ("README.md", "eval_results.json", "per_class_accuracy.csv", "neighbor_lt.json"):
        assert not (out / stale).exists(), stale
    assert yaml.safe_load((out / "args.yaml").read_text())["seed"] == 7  # the new run's, and it says unfinished
    if point == "write_info":
        assert (out / "model.safetensors").exists()  # new weights, marked incomplete
    else:
        assert not (out / "model.safetensors").exists()  # the old weights were removed with the old card
    # an unfinished folder is no finished run: a plain rerun takes it over and finishes it
    _train(_args(out))
    assert folder.is_finished() and (out / "README.md").exists()
