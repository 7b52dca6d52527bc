"""``neighbor-lt evaluate``: a saved demo-like model evaluated again, on any split, grouped by its own training counts."""

import json
from pathlib import Path

import pytest

from neighbor_lt import cli
from neighbor_lt.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
TINY = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,patch_size=8"
DEMO_GROUPS = {"many": 3, "medium": 9, "few": 8}  # the demo's 20 target classes by their training counts


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model trained 2 steps on the demo data (the train recipe's output folder)."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    argv = ["--config", str(REPO / "recipes/demo/train.yaml"), "--output_dir", str(out), "--config_overrides", TINY,
            "--image_size", "32", "--max_steps", "2", "--per_device_train_batch_size", "16",
            "--dataloader_num_workers", "0", "--report_to", "none"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the demo YAML's data paths are relative to the checkout
        cli.train(argv)
    return out


def _evaluate(*argv) -> int:
    return cli.main(["evaluate", *map(str, argv)])


def test_evaluate_again_matches_the_training_runs_evaluation(run_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    card, trained = (run_dir / "README.md").read_text(), (run_dir / "eval_results.json").read_text()
    assert _evaluate("--model", run_dir) == 0  # data: the run's own args.yaml
    again = RunFolder(run_dir).read_eval_results("validation")
    first = json.loads(trained)
    assert again["overall"] == pytest.approx(first["overall"], abs=1e-12) and again["num_images"] == 500
    assert again["group_sizes"] == first["group_sizes"] == DEMO_GROUPS and again["split"] == "validation"
    assert (run_dir / "per_class_accuracy_validation.csv").read_text() == (
        run_dir / "per_class_accuracy.csv"
    ).read_text()
    # the run's files and its card are left alone
    assert (run_dir / "README.md").read_text() == card and (run_dir / "eval_results.json").read_text() == trained
    assert "Overall" in capsys.readouterr().out


def test_any_split_grouped_by_the_models_training_counts(run_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    # the training images: the groups are the model's, whatever thresholds the data arguments name
    assert _evaluate("--model", run_dir, "--split", "train", "--many_threshold", "1", "--few_threshold", "1") == 0
    train = RunFolder(run_dir).read_eval_results("train")
    info = RunFolder(run_dir).read_info()
    assert train["num_images"] == sum(info.target_train_counts) and train["group_sizes"] == DEMO_GROUPS
    # a data YAML of its own (recipe keys), a named split, a subset
    data = tmp_path / "data.yaml"
    data.write_text(
        "dataset_name: parquet\n"
        f"train_files: [{REPO / 'recipes/demo/data/target/train.parquet'}]\n"
        f"eval_files: [{REPO / 'recipes/demo/data/target/validation.parquet'}]\n"
        "max_eval_samples: 120\n"
    )
    assert _evaluate("--model", run_dir, "--config", data, "--split", "test", "--batch_size", "50") == 0
    test = RunFolder(run_dir).read_eval_results("test")
    assert test["num_images"] == 120 and test["split"] == "test" and test["group_sizes"] == DEMO_GROUPS
    # a train recipe YAML works as the data config: its model and training keys are not data, and are skipped
    assert _evaluate("--model", run_dir, "--config", REPO / "recipes/demo/train.yaml", "--split", "val2") == 0
    assert RunFolder(run_dir).read_eval_results("val2")["overall"] == pytest.approx(
        RunFolder(run_dir).read_eval_results()["overall"], abs=1e-12
    )


def test_update_card_makes_them_the_runs_results(run_dir, monkeypatch, tmp_path):
    import shutil

    monkeypatch.chdir(REPO)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert _evaluate("--model", copy, "--split", "train", "--update_card") == 0
    results = RunFolder(copy).read_eval_results()
    assert results["split"] == "train" and results == RunFolder(copy).read_eval_results("train")
    assert (copy / "README.md").read_text() != (run_dir / "README.md").read_text()
    assert "train" in (copy / "README.md").read_text()


def _copy_run(run_dir, folder, *extra):
    """A copy of the run's model files (weights, config, processor) and ``extra`` of its other files."""
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", *extra):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    return folder


def test_bad_inputs_are_one_line_errors(run_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    assert _evaluate("--split", "validation") == 2
    assert "--model is required" in capsys.readouterr().err
    bare = _copy_run(run_dir, tmp_path / "bare", "args.yaml")
    assert _evaluate("--model", bare) == 2
    assert "has no neighbor_lt.json" in capsys.readouterr().err
    aux = REPO / "recipes/demo/data/aux/data/train-00000-of-00001.parquet"
    assert _evaluate("--model", run_dir, "--dataset_name", "parquet", "--train_files", aux, "--eval_files", aux) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("configuration error")]
    assert len(errors) == 1 and "are not classes of the model" in errors[0]  # one line (progress bars aside)
    # a folder without args.yaml: the data comes from the command line, or it is a clear error
    copied = _copy_run(run_dir, tmp_path / "copied", "neighbor_lt.json")
    assert _evaluate("--model", copied) == 2
    assert "has no args.yaml to take the data settings from" in capsys.readouterr().err
    target = REPO / "recipes/demo/data/target"
    assert _evaluate("--model", copied, "--dataset_name", "parquet", "--train_files", target / "train.parquet",
                     "--eval_files", target / "validation.parquet", "--max_eval_samples", "50") == 0  # fmt: skip
    assert RunFolder(copied).read_eval_results("validation")["num_images"] == 50
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_nam: parquet\n")
    assert _evaluate("--model", run_dir, "--config", bad) == 2
    assert "unknown key(s)" in capsys.readouterr().err and not RunFolder(run_dir).has("eval_bad.json")
