"""The `neighbor-lt` console script: its commands run the recipes' code; a missing extra is named."""

import subprocess
import sys
from pathlib import Path

import pytest

from neighbor_lt import cli, extras

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_the_console_script_is_declared_and_lists_the_commands(capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"neighbor-lt": "neighbor_lt.cli:main"}
    assert cli.main(["--help"]) == 0
    printed = capsys.readouterr().out
    for name in ("train", "curate", "analyze", "ablate"):
        assert f"  {name} " in printed
    assert cli.main(["fit"]) == 2 and "unknown command 'fit'" in capsys.readouterr().err


def test_the_recipes_are_wrappers_of_the_cli():
    for name, function in (("train", "train"), ("analyze", "analyze")):
        text = (REPO / "recipes" / f"{name}.py").read_text()
        assert f"from neighbor_lt.cli import {function}" in text and len(text.splitlines()) < 40


def test_train_without_a_config_outside_the_checkout_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: no --config given" in err and "recipes/demo/train.yaml" in err
    assert cli.main(["train", "--config", "nope.yaml"]) == 2
    assert "config file not found: nope.yaml" in capsys.readouterr().err


def test_train_help_lists_the_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no demo config needed for --help
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    printed = capsys.readouterr().out
    assert info.value.code == 0 and "--lambda_s" in printed and "--aux_dataset" in printed


def test_curate_and_ablate_reach_their_recipes(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["curate", "--help"])
    assert info.value.code == 0 and "--stages" in capsys.readouterr().out
    assert cli.main(["ablate"]) == 2 and "--config needs the ablation YAML" in capsys.readouterr().err


def test_a_missing_extra_is_named(monkeypatch, capsys):
    def filter_stage(argv):
        raise ModuleNotFoundError("No module named 'httpx'", name="httpx")

    monkeypatch.setitem(cli.COMMANDS, "curate", (filter_stage, "curate"))
    assert cli.main(["curate", "--config", "x.yaml"]) == 2
    assert capsys.readouterr().err.strip() == (
        'neighbor-lt curate: httpx is not installed: pip install "neighbor-lt[retrieval]"'
    )

    def broken(argv):
        raise ModuleNotFoundError("No module named 'not_an_extra'", name="not_an_extra")

    monkeypatch.setitem(cli.COMMANDS, "curate", (broken, "curate"))
    with pytest.raises(ModuleNotFoundError, match="not_an_extra"):  # not ours to explain: the traceback stays
        cli.main(["curate"])


def _python_without(module: str, *lines: str) -> subprocess.CompletedProcess:
    """Run ``lines`` in a fresh interpreter in which ``module`` cannot be imported."""
    code = "\n".join([f"import sys; sys.modules[{module!r}] = None", *lines])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_require_names_the_extra_in_a_fresh_interpreter():
    done = _python_without("httpx", "from neighbor_lt.extras import require", "require('httpx', 'the leak check')")
    assert done.returncode != 0
    assert 'ModuleNotFoundError: the leak check needs httpx: pip install "neighbor-lt[retrieval]"' in done.stderr
    assert extras.require("json", "tests").dumps([]) == "[]"


def test_every_extra_named_exists_in_pyproject():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.EXTRA_OF.values()) <= set(declared)


def test_analyze_without_the_plots_extra_names_it():
    done = _python_without(
        "matplotlib", "from neighbor_lt.cli import main", "sys.exit(main(['analyze', 'outputs/some-run']))"
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == 'neighbor-lt analyze: matplotlib is not installed: pip install "neighbor-lt[plots]"'
