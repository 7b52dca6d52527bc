"""The train recipe end to end on tiny inputs, and every recipe YAML parses."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from neighbor_lt.configs import ConfigError, DataArguments, ModelArguments, NeighborLTTrainingArguments, parse_args

REPO = Path(__file__).resolve().parents[1]
TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,patch_size=16"


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("train.yaml")))
def test_every_train_yaml_parses(path, monkeypatch):
    monkeypatch.chdir(REPO)
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments),
        ["--config", path, "--output_dir", "/tmp/x", "--bf16", "false"],  # GPU configs ask for bf16; this is a CPU
    )
    text = (REPO / path).read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#")).lower()
    assert text.startswith("#") and "launch" in header and "recipes/train.py" in header, "open with the launch command"
    for key in ("seed:", "report_to:", "output_dir:", "hub_model_id:"):
        assert key in text, f"{path} must set {key}"
    assert training_args.loss in ("ce", "balanced_softmax", "neighbor_silencing", "bal_bce")


def test_unknown_keys_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1e-4\nlerning_rate: 2\n")
    with pytest.raises(ConfigError, match="unknown key.*lerning_rate"):
        parse_args((ModelArguments, DataArguments, NeighborLTTrainingArguments), ["--config", str(bad)])
    with pytest.raises(ConfigError, match="unknown command-line argument"):
        parse_args((ModelArguments, DataArguments, NeighborLTTrainingArguments), ["--output_dir", "x", "--bogus", "1"])
    good = tmp_path / "good.yaml"
    good.write_text("learning_rate: 1e-4\noutput_dir: o\n")  # YAML reads 1e-4 as a string; it still parses
    _, _, training_args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments),
        ["--config", str(good), "--learning_rate", "3e-4"],
    )
    assert training_args.learning_rate == pytest.approx(3e-4)  # the command line wins


def _tiny_args(out, *extra):
    return ["--config", str(REPO / "recipes/demo/train.yaml"), "--output_dir", str(out), "--config_overrides", TINY,
            "--image_size", "32", "--max_steps", "3", "--per_device_train_batch_size", "16", "--logging_steps", "1",
            "--dataloader_num_workers", "0", *extra]  # fmt: skip


def test_train_main_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    results = load_recipe("train").main(
        _tiny_args(tmp_path / "run", "--save_unmasked", "true", "--hub_token", "secret-token")
    )
    out = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "eval_results.json",
                 "per_class_accuracy.csv", "neighbor_lt.json", "args.yaml", "unmasked/model.safetensors"):  # fmt: skip
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == 20 and "tabby" in config["id2label"].values()
    assert "Egyptian cat" not in config["id2label"].values()
    unmasked = json.loads((out / "unmasked/config.json").read_text())
    assert len(unmasked["id2label"]) == 32
    saved = json.loads((out / "eval_results.json").read_text())
    assert set(saved) >= {"overall", "many", "medium", "few"} and saved["num_images"] == 500
    assert saved["overall"] == pytest.approx(results["overall"])
    assert saved["group_sizes"] == {"many": 3, "medium": 9, "few": 8}
    info = json.loads((out / "neighbor_lt.json").read_text())
    assert info["neighbor_of"]["Egyptian cat"] == ["tabby"]
    printed = capsys.readouterr().out
    assert "Overall" in printed and "Few" in printed
    assert (out / "per_class_accuracy.csv").read_text().count("\n") == 21
    args_yaml = (out / "args.yaml").read_text()
    assert "hub_token" in args_yaml and "secret-token" not in args_yaml

    from datasets import load_dataset
    from transformers import pipeline

    # The reported accuracy is the published model's: the bare pipeline over the validation images agrees.
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    valid = load_dataset("parquet", data_files=str(REPO / "recipes/demo/data/target/validation.parquet"))["train"]
    names = valid.features["label"].names
    top1 = [p[0]["label"] for p in classifier(list(valid["image"]), top_k=1, batch_size=100)]
    accuracy = sum(t == names[y] for t, y in zip(top1, valid["label"])) / len(valid)
    assert accuracy == pytest.approx(saved["overall"], abs=1e-9)

    preds = classifier(Image.new("RGB", (64, 64), "green"), top_k=3)
    assert len(preds) == 3 and all(p["label"] in config["id2label"].values() for p in preds)


def test_a_run_is_reproduced_from_its_own_args_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    train = load_recipe("train")
    first = train.main(_tiny_args(tmp_path / "first", "--max_steps", "2", "--max_eval_samples", "60",
                                  "--hub_token", "hf_canary_456"))  # fmt: skip
    saved = yaml.safe_load((tmp_path / "first" / "args.yaml").read_text())
    assert saved["run"] == {"num_processes": 1, "global_train_batch_size": 16}
    assert saved["average_tokens_across_devices"] is True and saved["hub_token"] == "<redacted>"
    assert "Masked target-only model saved" in capsys.readouterr().out
    # the README's "reproduce with --config args.yaml", only the output folder changed
    again = train.main(["--config", str(tmp_path / "first" / "args.yaml"), "--output_dir", str(tmp_path / "again")])
    for key in ("overall", "many", "medium", "few"):
        assert again[key] == pytest.approx(first[key], abs=1e-12, nan_ok=True), key
    resaved = yaml.safe_load((tmp_path / "again" / "args.yaml").read_text())
    changed = ("output_dir", "logging_dir", "hub_token")  # the secret was not saved, so the rerun has none
    assert {k: v for k, v in resaved.items() if k not in changed} == {
        k: v for k, v in saved.items() if k not in changed
    }
    assert resaved["hub_token"] is None


@pytest.mark.parametrize("loss", ["balanced_softmax", "ce", "bal_bce"])
def test_train_main_other_losses_and_no_aux(tmp_path, monkeypatch, loss):
    monkeypatch.chdir(REPO)
    args = _tiny_args(tmp_path / loss, "--loss", loss, "--max_steps", "1", "--aux_dataset", "",
                      "--max_eval_samples", "40")  # fmt: skip
    results = load_recipe("train").main(args)
    assert 0.0 <= results["overall"] <= 1.0


def test_train_main_rejects_bad_config_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    train = load_recipe("train")
    with pytest.raises(ConfigError, match=r"no column\(s\) \['picture'\]"):
        train.main(_tiny_args(tmp_path / "a", "--image_column", "picture"))
    with pytest.raises(ValueError, match="unknown loss"):
        train.main(_tiny_args(tmp_path / "b", "--loss", "focal"))
    assert not (tmp_path / "a" / "model.safetensors").exists()


def test_two_cpu_processes_with_torchrun(tmp_path):
    """The documented way to run several CPU processes: torchrun starts two (gloo), both train on disjoint shares of
    each epoch, args.yaml records them and the global batch, and the masked model and table are written once."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEIGHBOR_LT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(REPO / "recipes" / "train.py"),
         *_tiny_args(out, "--input_pipeline", "tensor", "--max_steps", "2", "--disable_tqdm", "true")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = yaml.safe_load((out / "args.yaml").read_text())["run"]
    assert run == {"num_processes": 2, "global_train_batch_size": 32}
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["train_steps"] == 2 and saved["train_images"] == 64 and saved["num_images"] == 500
    assert done.stdout.count("Masked target-only model saved") == 1
    assert done.stdout.count("top-1 %") == 1
