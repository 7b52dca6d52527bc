"""Wrong paths and help: one line naming the key, exit 2, no traceback (unless --debug); --help for every command."""

import subprocess
import sys
from pathlib import Path

import pytest

from neighbor_lt import cli

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "recipes/demo/train.yaml")


def _train_error(capsys, *argv):
    status = cli.main(["train", "--config", DEMO, *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_wrong_data_paths_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("NEIGHBOR_LT_DEBUG", raising=False)
    out = ["--output_dir", str(tmp_path / "run")]
    line = _train_error(capsys, "--dataset_name", str(tmp_path / "no_such_folder"), *out)
    assert line.startswith("configuration error: dataset_name") and "no such folder or file" in line
    line = _train_error(capsys, "--aux_dataset", "recipes/demo/data/axu", *out)  # a relative typo, not a Hub id
    assert "aux_dataset 'recipes/demo/data/axu': no such folder or file" in line and "Hub" not in line
    (tmp_path / "empty").mkdir()
    line = _train_error(capsys, "--aux_dataset", str(tmp_path / "empty"), *out)
    assert f"aux_dataset '{tmp_path / 'empty'}'" in line and "reads no data" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = ["--aux_dataset", "recipes/demo/data/axu", "--output_dir", str(tmp_path / "run")]
    assert cli.main(["train", "--config", DEMO, *argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("NEIGHBOR_LT_DEBUG", "1")
    assert cli.main(["train", "--config", DEMO, *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("configuration error: aux_dataset")


def test_analyze_of_a_missing_run(tmp_path, capsys):
    assert cli.main(["analyze", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no run folder" in err and "Traceback" not in err


def test_curate_names_a_missing_target_folder(tmp_path, caplog):
    from neighbor_lt.curate import main as curate_main

    status = curate_main(["--config", str(REPO / "recipes/demo/curate.yaml"), "--output_dir", str(tmp_path),
                          "--target.dataset_name", str(tmp_path / "missing"), "--target.train_files", "null",
                          "--target.eval_files", "null", "--stages", "neighbors"])  # fmt: skip
    assert status == 2
    assert "dataset_name" in caplog.text and "no such folder or file" in caplog.text
    assert "Traceback" not in caplog.text


def test_own_data_without_config_drops_the_demo_aux_set(monkeypatch, caplog):
    seen = {}

    def fake_run(config):
        seen["data"] = config.data
        return type("R", (), {"results": None})()

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("neighbor_lt.train.run", fake_run)
    cli.train(["--dataset_name", "my/folder"], default_config=DEMO)
    assert seen["data"].aux_dataset == "" and not seen["data"].train_files
    assert "without the demo's aux_dataset" in caplog.text
    cli.train(["--dataset_name", "my/folder", "--aux_dataset", "my/aux"], default_config=DEMO)
    assert seen["data"].aux_dataset == "my/aux"
    cli.train(["--max_steps", "1"], default_config=DEMO)  # the demo itself keeps its set
    assert seen["data"].aux_dataset == "recipes/demo/data/aux"


def test_help_of_every_command(capsys):
    for command in ("train", "curate", "evaluate", "analyze", "ablate"):
        try:
            status = cli.main([command, "--help"])
        except SystemExit as done:  # argparse's own --help
            status = done.code
        out = capsys.readouterr()
        assert status == 0 and not out.err.startswith("configuration error"), command
        assert "usage:" in out.out, command
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: neighbor-lt train") and "--config" in text and len(text.splitlines()) < 200
    assert "--lambda_s" in text and "--learning_rate" not in text.replace("learning_rate,", "")
    with pytest.raises(SystemExit):
        cli.main(["train", "--help_all"])
    assert "--learning_rate" in capsys.readouterr().out


def test_recipe_ablate_help():
    done = subprocess.run([sys.executable, str(REPO / "recipes/ablate.py"), "--help"], capture_output=True, text=True,
                          cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
    assert done.returncode == 0 and "usage: neighbor-lt ablate" in done.stdout and "configuration" not in done.stderr
