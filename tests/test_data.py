import io
import os

import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from datasets import ClassLabel, Dataset, Features, Image, List, Value, load_dataset
from PIL import Image as PILImage

from neighbor_lt.configs import ConfigError, DataArguments
from neighbor_lt.data import (
    AuxiliaryCappedSampler,
    MergedImageDataset,
    class_counts,
    load_aux_dataset,
    load_lt_split_file,
    load_target_dataset,
    long_tail_profile,
    make_long_tailed,
    merge_label_space,
    merged_class_counts,
)
from neighbor_lt.metrics import class_groups


def _aux_labels(per_class):
    return np.concatenate([np.full(n, k) for k, n in enumerate(per_class)])


# ---------------------------------------------------------------- sampler


def test_sampler_caps_each_aux_class_and_keeps_every_target():
    aux_labels = _aux_labels([120, 30, 51])
    sampler = AuxiliaryCappedSampler(num_target=200, aux_labels=aux_labels, max_aux_per_class=50, seed=0)
    indices = np.array(list(sampler))
    assert len(indices) == len(sampler) == 200 + 50 + 30 + 50
    assert len(set(indices.tolist())) == len(indices)  # no duplicates within an epoch
    assert set(range(200)) <= set(indices.tolist())  # every target image, once
    drawn_labels = aux_labels[indices[indices >= 200] - 200]
    assert np.bincount(drawn_labels).tolist() == [50, 30, 50]


def test_sampler_draws_a_fresh_seeded_subset_every_epoch():
    aux_labels = _aux_labels([300])
    sampler = AuxiliaryCappedSampler(num_target=10, aux_labels=aux_labels, max_aux_per_class=50, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append({i for i in sampler if i >= 10})
    assert epochs[0] != epochs[1] != epochs[2]
    again = AuxiliaryCappedSampler(num_target=10, aux_labels=aux_labels, max_aux_per_class=50, seed=3)
    again.set_epoch(1)
    assert {i for i in again if i >= 10} == epochs[1]  # same seed and epoch: same subset, on any process
    # over many epochs the draws cover the class
    seen = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        seen |= {i for i in sampler if i >= 10}
    assert len(seen) > 290


def test_sampler_shards_are_disjoint_and_cover_the_epoch_under_accelerate():
    aux_labels = _aux_labels([80, 20, 64])
    num_target, batch = 100, 8
    dataset = torch.utils.data.TensorDataset(torch.arange(num_target + len(aux_labels)))
    per_process = []
    for rank in range(2):
        sampler = AuxiliaryCappedSampler(num_target, aux_labels, max_aux_per_class=50, seed=7)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler)
        shard = prepare_data_loader(
            loader, num_processes=2, process_index=rank, put_on_device=False, even_batches=False
        )
        shard.set_epoch(4)
        sampler.set_epoch(4)  # what Trainer does for the underlying sampler
        per_process.append([int(i) for (b,) in shard for i in b])
    reference = AuxiliaryCappedSampler(num_target, aux_labels, max_aux_per_class=50, seed=7)
    reference.set_epoch(4)
    epoch = list(reference)
    assert not set(per_process[0]) & set(per_process[1])  # disjoint
    assert sorted(per_process[0] + per_process[1]) == sorted(epoch)  # union is the epoch


def test_sampler_rejects_bad_cap():
    with pytest.raises(ConfigError, match="max_aux_per_class"):
        AuxiliaryCappedSampler(3, [0, 0], max_aux_per_class=0)


# ---------------------------------------------------------------- long-tail sets


def test_long_tail_profile():
    profile = long_tail_profile(100, 500, 100)
    assert profile[0] == 500 and profile[-1] == 5
    assert all(a >= b for a, b in zip(profile, profile[1:]))
    assert long_tail_profile(3, 150, 30) == [150, 27, 5]


@pytest.fixture(scope="module")
def tiny_valid(tiny_imagenet_dir):
    return load_dataset("parquet", data_files={"train": str(tiny_imagenet_dir / "valid-00000-of-00001.parquet")})[
        "train"
    ]


def test_make_long_tailed_on_real_data(tiny_valid):
    lt = make_long_tailed(tiny_valid, imbalance_factor=10, seed=0)
    counts = class_counts(lt)
    assert counts[0] == 50 and counts[-1] == 5
    assert counts.tolist() == long_tail_profile(200, 50, 10)
    again = make_long_tailed(tiny_valid, imbalance_factor=10, seed=0)
    rows = lt._indices.column(0).to_pylist()
    assert again._indices.column(0).to_pylist() == rows  # seeded
    other = make_long_tailed(tiny_valid, imbalance_factor=10, seed=1)
    assert class_counts(other).tolist() == counts.tolist()
    assert other._indices.column(0).to_pylist() != rows  # a different seed draws different images


def test_load_target_dataset_tiny_imagenet_lt(tiny_imagenet_dir):
    args = DataArguments(
        dataset_name="parquet",
        train_files=[str(tiny_imagenet_dir / "valid-*.parquet")],  # small stand-in for the train split
        eval_files=[str(tiny_imagenet_dir / "valid-*.parquet")],
        num_classes=20,
        imbalance_factor=10,
        lt_seed=0,
    )
    ds = load_target_dataset(args)
    names = ds["train"].features["label"].names
    assert len(names) == 20 and all(n.startswith("n") for n in names)
    counts = class_counts(ds["train"])
    assert counts.tolist() == long_tail_profile(20, 50, 10)
    assert sorted(set(ds["validation"]["label"])) == list(range(20))
    assert set(class_groups(counts)) == {"medium", "few"}
    again = load_target_dataset(args)
    assert again["train"].features["label"].names == names  # seeded class choice


def test_load_target_dataset_errors(tmp_path):
    ds = Dataset.from_dict({"img": [b"x"], "y": [0]})
    ds.to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ConfigError, match=r"no column\(s\) \['image', 'label'\]"):
        load_target_dataset(DataArguments(dataset_name="parquet", train_files=[str(tmp_path / "t.parquet")]))
    with pytest.raises(ConfigError, match="no data file matches"):
        load_target_dataset(DataArguments(dataset_name="parquet", train_files=[str(tmp_path / "missing-*.parquet")]))
    with pytest.raises(ConfigError, match="no target data"):
        load_target_dataset(DataArguments())


def _jpeg(color, size=(16, 16)):
    buf = io.BytesIO()
    PILImage.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def test_zero_count_class_fails_before_training(tmp_path):
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c"])})
    Dataset.from_dict(
        {"image": [{"bytes": _jpeg("red"), "path": None}] * 2, "label": [0, 1]}, features=features
    ).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ConfigError, match="no training image, e.g. 'c'"):
        load_target_dataset(DataArguments(dataset_name="parquet", train_files=[str(tmp_path / "t.parquet")]))


def test_lt_split_file(tmp_path, tiny_valid):
    root = tmp_path / "images"
    lines = []
    for i in range(6):
        row = tiny_valid[i]
        rel = f"cls{i % 3}/img{i}.jpg"
        os.makedirs(root / f"cls{i % 3}", exist_ok=True)
        row["image"].save(root / rel)
        lines.append(f"{rel} {i % 3}")
    (tmp_path / "ImageNet_LT_train.txt").write_text("\n".join(lines) + "\n")
    ds = load_lt_split_file(str(tmp_path / "ImageNet_LT_train.txt"), str(root))
    assert len(ds) == 6 and ds.features["label"].names == ["0", "1", "2"]
    assert ds[0]["image"].size == (64, 64)
    args = DataArguments(lt_train_list=str(tmp_path / "ImageNet_LT_train.txt"), lt_image_root=str(root))
    assert class_counts(load_target_dataset(args)["train"]).tolist() == [2, 2, 2]
    (tmp_path / "bad.txt").write_text("cls0/img0.jpg\n")
    with pytest.raises(ConfigError, match="bad.txt:1: expected"):
        load_lt_split_file(str(tmp_path / "bad.txt"), str(root))
    (tmp_path / "missing.txt").write_text("nope/none.jpg 0\n")
    with pytest.raises(ConfigError, match="image not found"):
        load_lt_split_file(str(tmp_path / "missing.txt"), str(root))


# ---------------------------------------------------------------- auxiliary sets


def _aux_dataset(names, neighbor_of, per_class=3):
    features = Features({"image": Image(), "label": ClassLabel(names=names), "neighbor_of": List(Value("string"))})
    rows = {"image": [], "label": [], "neighbor_of": []}
    for k, name in enumerate(names):
        for _ in range(per_class):
            rows["image"].append({"bytes": _jpeg("blue"), "path": None})
            rows["label"].append(k)
            rows["neighbor_of"].append(neighbor_of[name])
    return Dataset.from_dict(rows, features=features)


def test_merge_label_space_and_pairs():
    aux = _aux_dataset(["koi", "tiger cat"], {"koi": ["goldfish"], "tiger cat": ["tabby", "lion"]})
    space = merge_label_space(["goldfish", "tabby", "lion"], aux)
    assert space.names == ["goldfish", "tabby", "lion", "koi", "tiger cat"]
    assert space.neighbor_pairs.tolist() == [[0, 3], [1, 4], [2, 4]]
    counts = merged_class_counts([100, 20, 5], aux["label"], 2, max_aux_per_class=2)
    assert counts.tolist() == [100, 20, 5, 2, 2]


def test_merge_label_space_errors():
    aux = _aux_dataset(["Goldfish"], {"Goldfish": ["tabby"]})
    with pytest.raises(ConfigError, match="equal target class names"):
        merge_label_space(["goldfish", "tabby"], aux)
    aux = _aux_dataset(["koi"], {"koi": ["carp"]})
    with pytest.raises(ConfigError, match=r"unknown target class\(es\) \['carp'\]"):
        merge_label_space(["goldfish", "tabby"], aux)


def test_load_aux_dataset_checks_columns(tmp_path):
    aux = _aux_dataset(["koi"], {"koi": ["goldfish"]})
    aux.to_parquet(str(tmp_path / "aux.parquet"))
    assert len(load_aux_dataset(str(tmp_path / "aux.parquet"))) == 3
    aux.remove_columns("neighbor_of").to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['neighbor_of'\]"):
        load_aux_dataset(str(tmp_path / "bad.parquet"))


def test_demo_aux_folder_loads_with_load_dataset():
    aux = load_aux_dataset("recipes/demo/data/aux")
    assert aux.features["label"].num_classes == 12
    space = merge_label_space(
        load_dataset("parquet", data_files="recipes/demo/data/target/train.parquet")["train"].features["label"].names,
        aux,
    )
    assert len(space.neighbor_pairs) == 12


def test_merged_dataset_shifts_aux_labels():
    aux = _aux_dataset(["koi"], {"koi": ["goldfish"]}, per_class=2)
    features = Features({"image": Image(), "label": ClassLabel(names=["goldfish", "tabby"])})
    target = Dataset.from_dict(
        {"image": [{"bytes": _jpeg("red"), "path": None}] * 3, "label": [0, 1, 1]}, features=features
    )
    merged = MergedImageDataset(target, aux, num_targets=2)
    assert len(merged) == 5
    assert [merged[i]["labels"] for i in range(5)] == [0, 1, 1, 2, 2]
    assert merged.labels.tolist() == [0, 1, 1, 2, 2]


def test_imagefolder_source(tmp_path, tiny_valid):
    # class sub-folders of real JPEGs, train/ and validation/ splits: the transformers-example layout
    for split, rows in (("train", range(0, 6)), ("validation", range(6, 9))):
        for i in rows:
            row = tiny_valid[i]
            folder = tmp_path / "folder" / split / ("cat" if i % 2 else "dog")
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{i}.jpg")
    ds = load_target_dataset(DataArguments(dataset_name=str(tmp_path / "folder")))
    assert ds["train"].features["label"].names == ["cat", "dog"]
    assert class_counts(ds["train"]).tolist() == [3, 3] and len(ds["validation"]) == 3
    assert ds["train"][0]["image"].size == (64, 64)


def test_corrupt_image_names_its_row():
    features = Features({"image": Image(), "label": ClassLabel(names=["goldfish"])})
    rows = [{"bytes": _jpeg("red"), "path": None}, {"bytes": _jpeg("red")[:40], "path": None}]  # second: truncated
    target = Dataset.from_dict({"image": rows, "label": [0, 0]}, features=features)
    from neighbor_lt.augment import ImageTransform

    merged = MergedImageDataset(target, None, num_targets=1, transform=ImageTransform(8, (0.5,) * 3, (0.5,) * 3))
    assert merged[0]["pixel_values"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="target image at row 1 cannot be decoded"):
        merged[1]


def test_merge_training_set_on_the_demo_data():
    from neighbor_lt.data import merge_training_set

    args = DataArguments(
        dataset_name="parquet",
        train_files=["recipes/demo/data/target/train.parquet"],
        aux_dataset="recipes/demo/data/aux",
        max_aux_per_class=30,
    )
    target = load_target_dataset(args)
    merged = merge_training_set(args, target, seed=3)
    assert merged.space.num_targets == 20 and len(merged.space.aux_names) == 12
    assert merged.class_counts[:20].tolist() == merged.target_counts.tolist()
    assert merged.class_counts[20:].tolist() == [30.0] * 12  # 40 images each, 30 drawn per epoch
    assert len(merged.sampler) == len(target["train"]) + 12 * 30 and merged.sampler.seed == 3
    no_aux = merge_training_set(DataArguments(**{**vars(args), "aux_dataset": None}), target)
    assert no_aux.aux is None and len(no_aux.class_counts) == 20 and len(no_aux.sampler) == len(target["train"])
