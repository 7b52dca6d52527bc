"""Every training value is checked before any data or model loads, and each mistake is one line."""

import logging
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value

from neighbor_lt import cli
from neighbor_lt.configs import ConfigError, DataArguments
from neighbor_lt.data import load_target_dataset, merge_label_space
from neighbor_lt.train import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "recipes/demo/train.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        (["--lambda_s", "1.5"], r"lambda_s must be in \(0, 1\], got 1.5"),
        (["--lambda_s", "0"], r"lambda_s must be in \(0, 1\], got 0"),
        (["--lambda_s", "-0.1"], r"lambda_s must be in \(0, 1\]"),
        (["--imbalance_factor", "0.5"], r"imbalance_factor must be at least 1 .*0 or empty keeps"),
        (["--loss", "neighbour_silencing"], r"unknown loss 'neighbour_silencing'; choose from ce, balanced_softmax"),
        (["--num_train_epoch", "1"], r"unknown command-line argument\(s\): --num_train_epoch 1"),
        (["--num_train_epochs", "one"], r"--num_train_epochs.*invalid float value: 'one'"),
        (["--few_threshold", "200"], r"few_threshold \(200\) must not exceed many_threshold"),
        (["--mixup_prob", "2"], r"mixup_prob must be in \[0, 1\]"),
        (["--num_classes", "0"], r"num_classes must be >= 1"),
    ],
)
def test_bad_values_stop_before_data(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", DEMO, "--output_dir", "unused", *override])


def test_zero_imbalance_factor_is_off_and_documented():
    assert load_config(["--config", DEMO, "--imbalance_factor", "0"]).data.imbalance_factor == 0
    assert "0 or empty" in DataArguments.__dataclass_fields__["imbalance_factor"].metadata["help"]


def test_a_bad_value_is_one_line_on_the_command_line(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("neighbor_lt.data.load_target_dataset", lambda *a, **k: pytest.fail("data loaded"))
    for argv in (["--num_train_epochs", "one"], ["--loss", "neighbour_silencing"], ["--num_train_epoch", "1"]):
        assert cli.main(["train", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("configuration error:"), err


def test_curation_target_shares_the_validator(tmp_path):
    from neighbor_lt.curate import load_config as curate_config

    path = str(REPO / "recipes/demo/curate.yaml")
    with pytest.raises(ConfigError, match="imbalance_factor must be at least 1"):
        curate_config(path, ["--target.imbalance_factor", "0.5"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="few_threshold"):
        curate_config(path, ["--target.few_threshold", "500"], output_dir=str(tmp_path))


def _parquet(path, labels, num_names=3):
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(num_names)])})
    rows = {"image": [PILImage.new("RGB", (8, 8), "red")] * len(labels), "label": [0] * len(labels)}
    ds = Dataset.from_dict(rows, features=features)
    # labels past the class names (a hand-made file): written through pyarrow, as another tool would
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = ds.data.table.set_column(1, "label", pa.array(labels, pa.int64()))
    table = table.replace_schema_metadata(ds.data.table.schema.metadata)
    pq.write_table(table, path)
    return str(path)


@pytest.mark.parametrize("bad", [25, 3, -1])
def test_labels_out_of_range_name_the_column_and_range(tmp_path, bad):
    files = [_parquet(tmp_path / "t.parquet", [0, 1, 2, bad])]
    with pytest.raises(ConfigError, match=rf"column 'label' holds label\(s\) \[{bad}\] outside 0..2"):
        load_target_dataset(DataArguments(dataset_name="parquet", train_files=files))


def test_a_manifest_of_unknown_auxiliary_classes(caplog):
    aux = Dataset.from_dict(
        {"label": [0, 1], "neighbor_of": [["t0"], ["t1"]]},
        features=Features({"label": ClassLabel(names=["koi", "carp"]), "neighbor_of": [Value("string")]}),
    )
    with pytest.raises(ConfigError, match=r"neighbor_manifest names none of the auxiliary set's 2 classes"):
        merge_label_space(["t0", "t1"], aux, {"goldfish": ["t0"]})
    with caplog.at_level(logging.WARNING, logger="neighbor_lt.data"):
        space = merge_label_space(["t0", "t1"], aux, {"koi": ["t0"], "goldfish": ["t1"]})
    assert "1 of its 2 auxiliary classes are not in the auxiliary set" in caplog.text
    assert space.neighbor_of == {"koi": ["t0"], "carp": []}
