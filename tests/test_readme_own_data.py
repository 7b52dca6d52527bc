"""The README's "Bring your own data" commands, run on an image folder this test makes."""

import json
import re
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features
from PIL import Image

from neighbor_lt import cli
from neighbor_lt.curate import CurateContext
from neighbor_lt.neighbors.stage import NeighborsArguments, build_queries

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"tabby_cat": 24, "golden_retriever": 10, "snow_leopard": 3}


def _section():
    readme = (REPO / "README.md").read_text()
    return readme.split("### Bring your own data", 1)[1].split("\n### ", 1)[0]


def _make_image_folder(root: Path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", None), ("validation", 4)):
        for i, (name, count) in enumerate(CLASSES.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class or count):
                pixels = rng.integers(0, 60, (40, 40, 3)) + 60 * i  # a class-dependent color
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{j:03d}.jpg")


def test_readme_own_data_commands(tmp_path, monkeypatch):
    section = _section()
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    assert command == "neighbor-lt train --config my_train.yaml"
    monkeypatch.chdir(tmp_path)
    _make_image_folder(tmp_path / "my_data")
    (tmp_path / "my_train.yaml").write_text(yaml_text)
    argv = command.split()[1:] + ["--max_steps", "2", "--dataloader_num_workers", "0"]  # two steps, not 5 epochs
    assert cli.main(argv) == 0
    out = tmp_path / "outputs" / "my_run"
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(CLASSES)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["num_images"] == 12 and results["group_sizes"] == {"many": 1, "medium": 1, "few": 1}


def test_readme_class_names_csv_sets_the_query(tmp_path):
    line = re.search(r"\(`(tabby_cat,\"tabby cat, tabby\")`\)", _section()).group(1)
    (tmp_path / "names.csv").write_text("name,words\n" + line + "\n")
    labels = [0] * 5 + [1] * 3
    train = Dataset.from_dict(
        {"label": labels}, features=Features({"label": ClassLabel(names=["tabby_cat", "golden_retriever"])})
    )
    context = CurateContext(str(tmp_path), target=DatasetDict(train=train))
    args = NeighborsArguments(
        backend="static",
        backend_kwargs={"mapping": {"tabby_cat": ["lynx"]}},
        class_names=str(tmp_path / "names.csv"),
        use_wordnet=False,
    )
    queries, _ = build_queries(DatasetDict(train=train), args, context)
    assert queries[0].query == "tabby cat" and queries[0].synonyms == ["tabby cat", "tabby"]
    assert queries[1].query == "golden_retriever"  # not in the file: the folder name
