"""Split-file benchmarks: class names from the benchmarks' own files, numbers refused where names are needed, and
every listed image checked before training."""

import json
import logging
import os

import pytest
from datasets import load_dataset

from neighbor_lt.configs import ConfigError, DataArguments
from neighbor_lt.data import _read_class_names, load_lt_split_file, load_target_dataset

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tiny-imagenet-200")


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    """Nine real Tiny-ImageNet images in three class folders and a 'path label' split file over them."""
    root = tmp_path_factory.mktemp("lt")
    valid = load_dataset("parquet", data_files=os.path.join(TINY, "valid-*.parquet"))["train"].select(range(9))
    lines = []
    for i, row in enumerate(valid):
        rel = f"c{i % 3}/{i}.jpg"
        os.makedirs(root / "images" / f"c{i % 3}", exist_ok=True)
        row["image"].convert("RGB").save(root / "images" / rel)
        lines.append(f"{rel} {i % 3}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    "filename, text, expected",
    [
        ("names.txt", "tench\ngoldfish\ngreat white shark\n", ["tench", "goldfish", "great white shark"]),
        # ImageNet's LOC_synset_mapping.txt (line order = label order); the first synonym is the name, a repeated
        # name (ImageNet has two 'crane' synsets) carries its WordNet id
        ("LOC_synset_mapping.txt", "n01440764 tench, Tinca tinca\nn02012849 crane\nn03126707 crane\n",
         ["tench", "crane (n02012849)", "crane (n03126707)"]),
        # Places365's categories_places365.txt: '/x/path label', any line order
        ("categories_places365.txt", "/a/apartment_building/outdoor 2\n/a/airfield 0\n/a/airplane_cabin 1\n",
         ["airfield", "airplane cabin", "apartment building outdoor"]),
        # iNaturalist 2018's categories.json
        ("categories.json", json.dumps([{"id": 1, "name": "Plantago major"}, {"id": 0, "name": "Aedes"},
                                        {"id": 2, "name": "Zea mays"}]), ["Aedes", "Plantago major", "Zea mays"]),
        ("names.json", json.dumps(["a", "b", "c"]), ["a", "b", "c"]),
    ],
)  # fmt: skip
def test_class_name_files_of_the_benchmarks(tmp_path, filename, text, expected):
    (tmp_path / filename).write_text(text)
    assert _read_class_names(str(tmp_path / filename)) == expected


def test_class_name_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        _read_class_names(str(tmp_path / "nope.txt"))
    (tmp_path / "gap.txt").write_text("/a/airfield 0\n/b/bar 2\n")
    with pytest.raises(ConfigError, match="label 1 is missing"):
        _read_class_names(str(tmp_path / "gap.txt"))
    (tmp_path / "numbers.txt").write_text("0\n1\n2\n")
    with pytest.raises(ConfigError, match="numbers, not class names.*lt_class_names"):
        _read_class_names(str(tmp_path / "numbers.txt"))


def test_split_file_names_come_from_lt_class_names(split_files, tmp_path, caplog):
    (tmp_path / "names.txt").write_text("/a/airfield 0\n/b/bakery/shop 1\n/c/canyon 2\n")
    args = DataArguments(lt_train_list=str(split_files / "train.txt"), lt_image_root=str(split_files / "images"),
                         lt_class_names=str(tmp_path / "names.txt"))  # fmt: skip
    ds = load_target_dataset(args, require_names="the openai neighbor backend")
    assert ds["train"].features["label"].names == ["airfield", "bakery shop", "canyon"]

    args.lt_class_names = None  # numbers: a warning for training, an error for a name-based consumer
    with caplog.at_level(logging.WARNING, logger="neighbor_lt.data"):
        assert load_target_dataset(args)["train"].features["label"].names == ["0", "1", "2"]
    assert "id2label will be numbers" in caplog.text and "lt_class_names" in caplog.text
    with pytest.raises(ConfigError, match="the openai neighbor backend asks about classes by name.*lt_class_names"):
        load_target_dataset(args, require_names="the openai neighbor backend")


def test_every_missing_image_is_reported_up_front(split_files, tmp_path):
    lines = (split_files / "train.txt").read_text().splitlines()
    late = [*lines * 400, "c0/late_missing.jpg 0"]  # 3,601 rows: the one missing file is the last
    (tmp_path / "late.txt").write_text("\n".join(late) + "\n")
    with pytest.raises(ConfigError, match=r"(?s)image not found for 1 of 3601 rows.*late_missing\.jpg"):
        load_lt_split_file(str(tmp_path / "late.txt"), str(split_files / "images"))
    many = [f"gone/{i}.jpg 0" for i in range(50)] + lines
    (tmp_path / "many.txt").write_text("\n".join(many) + "\n")
    with pytest.raises(ConfigError) as err:
        load_lt_split_file(str(tmp_path / "many.txt"), str(split_files / "images"))
    message = str(err.value)
    assert "50 of 59 rows" in message and "gone/0.jpg" in message and "gone/4.jpg" in message
    assert "gone/5.jpg" not in message  # the first few paths, not all of them
