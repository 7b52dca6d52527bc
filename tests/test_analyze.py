"""recipes/analyze.py end to end on demo-shaped runs (tiny ViT, the demo data), and the plotting helpers."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from neighbor_lt.metrics import long_tail_accuracy
from neighbor_lt.plots import load_run, plot_group_accuracy, plot_per_class_accuracy, project_2d
from neighbor_lt.run_folder import RunFolder, RunInfo

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo"


def _demo_info() -> dict:
    spec = importlib.util.spec_from_file_location("make_demo_data", DEMO / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    demo_args = yaml.safe_load((DEMO / "train.yaml").read_text())
    counts = [150, 125, 104, 87, 73, 61, 51, 42, 35, 29, 25, 20, 17, 14, 12, 10, 8, 7, 5, 5]
    return {
        "target_classes": module.TARGETS, "target_train_counts": counts, "auxiliary_classes": list(module.AUX),
        "neighbor_of": module.AUX, "loss": "neighbor_silencing", "lambda_s": 0.1,
        "max_aux_per_class": demo_args["max_aux_per_class"],
    }  # fmt: skip


def _make_run(folder: Path, info: dict, seed: int) -> Path:
    """A run folder as recipes/train.py leaves it, with a tiny random masked model and made-up predictions."""
    folder.mkdir(parents=True)
    names = info["target_classes"]
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=16,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
    (folder / "neighbor_lt.json").write_text(json.dumps(info))
    demo_args = yaml.safe_load((DEMO / "train.yaml").read_text())
    args = {
        **demo_args,
        "train_files": [str(DEMO / "data" / "target" / "train.parquet")],
        "eval_files": [str(DEMO / "data" / "target" / "validation.parquet")],
        "aux_dataset": str(DEMO / "data" / "aux"),
        "eval_split": "validation",
        "output_dir": str(folder),
    }
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    rng = np.random.default_rng(seed)
    references = np.repeat(np.arange(len(names)), 25)
    predictions = np.where(rng.random(references.size) < 0.4 + 0.02 * seed, references, 0)
    results = long_tail_accuracy(predictions, references, info["target_train_counts"])
    out = {k: results[k] for k in ("overall", "many", "medium", "few")}
    out.update(group_sizes=results["group_sizes"], split="validation", num_images=int(references.size))
    (folder / "eval_results.json").write_text(json.dumps(out))
    RunFolder(folder).write_per_class(results, RunInfo.from_dict(info))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    info = _demo_info()
    return _make_run(root / "neighbors", info, seed=0), _make_run(root / "baseline", {**info, "loss": "ce"}, seed=1)


def _load_analyze():
    spec = importlib.util.spec_from_file_location("analyze_recipe", REPO / "recipes" / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_analyze_writes_three_plots_and_card_links_them(runs, tmp_path):
    first, second = (shutil.copytree(r, tmp_path / r.name) for r in runs)
    written = _load_analyze().main(
        [str(first), str(second), "--labels", "neighbors", "baseline", "--max_images_per_class", "8",
         "--projection", "pca"]
    )  # fmt: skip
    names = [Path(p).name for p in written]
    assert names == ["per_class_accuracy.png", "group_accuracy.png", "feature_map.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 500 and image.height > 300
    card = ModelCard.load(first / "README.md")
    for name in names:
        assert f"]({name})" in card.text
    assert [r.metric_config for r in card.data.eval_results] == ["overall", "many", "medium", "few"]


def test_feature_map_classes_can_be_chosen(runs, tmp_path):
    analyze = _load_analyze()
    out = tmp_path / "plots"
    written = analyze.main(
        [str(runs[0]), "--output_dir", str(out), "--head_class", "golden retriever", "--tail_class", "lemon",
         "--before", str(runs[1]), "--max_images_per_class", "6", "--projection", "pca"]
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["feature_map.png", "group_accuracy.png", "per_class_accuracy.png"]
    assert not (runs[0] / "README.md").exists()  # plots elsewhere: the run's card is left alone
    assert len(written) == 3
    with pytest.raises(ValueError, match="not a target class"):
        analyze.main([str(runs[0]), "--output_dir", str(out), "--tail_class", "unicorn", "--projection", "pca"])


def test_group_and_per_class_plots_handle_an_empty_group(runs, tmp_path):
    run = load_run(str(runs[0]))
    assert run.label == "neighbors (neighbor_silencing, 12 aux)"
    run.results["many"] = float("nan")
    run.per_class = [r for r in run.per_class if r["group"] != "many"]
    for plot, name in ((plot_group_accuracy, "g.png"), (plot_per_class_accuracy, "p.png")):
        assert Path(plot([run], str(tmp_path / name))).stat().st_size > 10_000


def test_project_2d_falls_back_to_pca():
    coords, method = project_2d(np.random.default_rng(0).normal(size=(30, 8)), "pca")
    assert coords.shape == (30, 2) and method == "pca"


def test_load_run_needs_an_evaluated_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval_results.json"):
        load_run(str(tmp_path))


def test_a_small_dataset_gets_no_many_bars_or_band(tmp_path, monkeypatch):
    from neighbor_lt import plots

    info = {**_demo_info(), "target_train_counts": [60, 50, 45, 40, 35, 30, 28, 26, 25, 24, 23, 22, 21, 20, 12, 10,
                                                    8, 7, 5, 5]}  # fmt: skip
    run = plots.load_run(str(_make_run(tmp_path / "small", info, seed=0)))
    assert run.results["group_sizes"]["many"] == 0 and math.isnan(run.results["many"])
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_group_accuracy([run], str(tmp_path / "g.png"))
    plots.plot_per_class_accuracy([run], str(tmp_path / "p.png"))
    ticks = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert ticks[0] == "Overall" and [t.split("\n")[0] for t in ticks[1:]] == ["Medium", "Few"]
    band_labels = [t.get_text() for t in figures[1].axes[0].texts]
    assert band_labels == ["Few", "Medium"]
    legend = [t.get_text() for t in figures[1].axes[0].get_legend().get_texts()]
    assert "Many class" not in legend and "Few class" in legend


def test_a_missing_plots_extra_is_named():
    import subprocess
    import sys

    code = "import sys; sys.modules['matplotlib'] = None; import neighbor_lt.plots"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and 'pip install "neighbor-lt[plots]"' in done.stderr


def test_the_group_legend_gives_each_runs_training_budget(runs, tmp_path, monkeypatch):
    from neighbor_lt import plots

    long_run, short_run = (shutil.copytree(r, tmp_path / r.name) for r in runs)
    for folder, epochs, steps, images in ((long_run, 20.0, 140, 8960), (short_run, 2.0, 14, 896)):
        results = json.loads((folder / "eval_results.json").read_text())
        (folder / "eval_results.json").write_text(
            json.dumps({**results, "train_steps": steps, "train_images": images})
        )
        (folder / "train_results.json").write_text(json.dumps({"epoch": epochs, "train_loss": 1.0}))
    loaded = [plots.load_run(str(long_run), "neighbors"), plots.load_run(str(short_run), "baseline")]
    assert loaded[0].budget == "20 epochs, 140 steps, 8,960 images"
    assert loaded[1].budget == "2 epochs, 14 steps, 896 images"
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_group_accuracy(loaded, str(tmp_path / "g.png"))
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["neighbors\n20 epochs, 140 steps, 8,960 images", "baseline\n2 epochs, 14 steps, 896 images"]


def test_training_budget_from_what_the_run_folder_has():
    from neighbor_lt.plots import training_budget

    assert training_budget({}, {"epoch": 1.0}, {}) == "1 epoch"
    assert training_budget({"train_steps": 3}, {"epoch": 0.4286}, {}) == "0.4 epochs, 3 steps"
    assert training_budget({}, {}, {"num_train_epochs": 20, "max_steps": -1}) == "20 epochs"
    assert training_budget({}, {}, {"num_train_epochs": 3, "max_steps": 50}) == "50 steps"
    assert training_budget({}, {}, {}) == ""


def test_the_log_axis_labels_more_than_powers_of_ten(runs, tmp_path, monkeypatch):
    from neighbor_lt import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_per_class_accuracy([load_run(str(runs[0]))], str(tmp_path / "p.png"))
    ax = figures[0].axes[0]
    figures[0].canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert ax.get_xscale() == "log" and {"5", "10", "20", "50", "100"} <= set(shown), shown


def test_feature_map_neighbors_get_distinct_colours():
    from neighbor_lt.plots import feature_map_styles

    neighbors = {"black widow": ["tarantula", "garden spider", "scorpion"], "lemon": ["orange", "banana", "fig"]}
    styles = feature_map_styles("black widow", "lemon", neighbors)
    colours = [colour for colour, *_ in styles.values()]
    assert len(styles) == 8 and len(set(colours)) == 8  # every class its own colour
    assert {styles[n][1] for n in neighbors["black widow"]} == {"^"} and {
        styles[n][1] for n in neighbors["lemon"]
    } == {"s"}
