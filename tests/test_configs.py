"""The YAML + command-line parser and the saved args.yaml: a run is reproduced from its own args.yaml."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from neighbor_lt.configs import DataArguments, ModelArguments, NeighborLTTrainingArguments, parse_args, save_args
from neighbor_lt.secrets import is_secret_name, redact, redactor, register_secret

REPO = Path(__file__).resolve().parents[1]
TYPES = (ModelArguments, DataArguments, NeighborLTTrainingArguments)


@pytest.mark.parametrize(
    "name, secret",
    [("hub_token", True), ("HF_TOKEN", True), ("api_key", True), ("OPENAI_API_KEY", True), ("client_secret", True),
     ("password", True), ("average_tokens_across_devices", False), ("include_num_input_tokens_seen", False),
     ("max_tokens", False), ("author", False), ("api_key_env", False)],
)  # fmt: skip
def test_secret_names_are_whole_words(name, secret):
    assert is_secret_name(name) is secret


def test_a_redactor_knows_the_secrets_of_its_time(monkeypatch):
    """redact() reads the environment on every call; a redactor (the downloader's hot loop) keeps what it saw."""
    monkeypatch.setenv("MY_SERVICE_API_KEY", "env-canary-4242")
    register_secret("registered-canary-77")
    bound = redactor()
    text = "http://u:p@h/x?key=abc env-canary-4242 registered-canary-77 Bearer tok123"
    assert (
        bound(text) == redact(text) == ("http://<redacted>@h/x?key=<redacted> <redacted> <redacted> Bearer <redacted>")
    )
    monkeypatch.setenv("LATER_TOKEN", "later-canary-999")
    assert "later-canary-999" in bound("later-canary-999") and redact("later-canary-999") == "<redacted>"
    assert redactor()("later-canary-999") == "<redacted>"


def test_args_yaml_reruns_the_same_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["--config", "recipes/demo/train.yaml", "--output_dir", str(tmp_path / "a"), "--hub_token", "hf_canary123",
            "--learning_rate", "3e-4", "--average_tokens_across_devices", "false", "--lr_scheduler_kwargs",
            '{"min_lr": 1e-6}']  # fmt: skip
    first = parse_args(TYPES, argv)
    saved = tmp_path / "args.yaml"
    save_args(str(saved), *first, extra={"num_processes": 2, "global_train_batch_size": 64})
    text = saved.read_text()
    assert "hf_canary123" not in text
    values = yaml.safe_load(text)
    assert values["hub_token"] == "<redacted>" and values["average_tokens_across_devices"] is False
    assert values["run"] == {"num_processes": 2, "global_train_batch_size": 64}

    second = parse_args(TYPES, ["--config", str(saved)])  # args.yaml is a config: `run:` and secrets are skipped
    for before, after in zip(first, second):
        for f in dataclasses.fields(before):
            if not f.init:
                continue
            expected = None if f.name == "hub_token" else getattr(before, f.name)
            assert getattr(after, f.name) == expected, f.name


def test_command_line_data_source_replaces_the_yaml_one(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    base = ["--config", "recipes/demo/train.yaml", "--output_dir", str(tmp_path)]
    _, data, _ = parse_args(TYPES, base)
    assert data.dataset_name == "parquet" and data.train_files  # the demo YAML names files
    _, data, _ = parse_args(TYPES, [*base, "--dataset_name", "my/folder"])
    assert data.dataset_name == "my/folder" and data.train_files is None and data.eval_files is None
    _, data, _ = parse_args(TYPES, [*base, "--lt_train_list", "a.txt", "--lt_image_root", "."])
    assert data.lt_train_list == "a.txt" and data.dataset_name is None and data.train_files is None
    _, data, _ = parse_args(TYPES, [*base, "--train_files", "x/*.parquet"])  # the builder follows the extension
    assert data.train_files == ["x/*.parquet"] and data.dataset_name is None
    _, data, _ = parse_args(TYPES, [*base, "--dataset_name", "parquet", "--train_files", "x/*.parquet"])
    assert data.dataset_name == "parquet" and data.train_files == ["x/*.parquet"]


def test_one_front_end_for_yaml_overrides_and_the_saved_config(tmp_path):
    """The pieces train, curate and ablate share: the YAML reader, the override splitter, the value parser, the
    writer of the resolved config."""
    from neighbor_lt.configs import ConfigError, parse_value, read_yaml_mapping, split_overrides, write_yaml

    assert split_overrides(["--a.b", "--x", "--c=1"], "--K V") == [("a.b", ["--x"]), ("c", ["1"])]
    assert split_overrides(["--seeds", "0", "1", "--k", "v"], "--K V", greedy=True) == [
        ("seeds", ["0", "1"]),
        ("k", ["v"]),
    ]
    with pytest.raises(ConfigError, match="unknown argument 'stray': overrides are --K V"):
        split_overrides(["stray"], "--K V")
    with pytest.raises(ConfigError, match="--seeds needs a value"):
        split_overrides(["--seeds", "--k", "v"], "--K V", greedy=True)
    assert (
        parse_value("[1, 2]") == [1, 2]
        and parse_value("2024", "str") == "2024"
        and parse_value("1e-4", "float") == 1e-4
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        read_yaml_mapping(str(bad))
    bad.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a list of sections"):
        read_yaml_mapping(str(bad), expected="a list of sections")
    path = write_yaml(str(tmp_path / "out" / "resolved.yaml"), {"b": 1, "a": [2]}, header="rerun with --config")
    assert open(path).read() == "# rerun with --config\nb: 1\na:\n- 2\n"
    assert read_yaml_mapping(path) == {"b": 1, "a": [2]} and not (tmp_path / "out" / "resolved.yaml.tmp").exists()
