"""neighbor_lt.ablation (and recipes/ablate.py): the random control, the config overrides, an end-to-end run."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from neighbor_lt import ablation
from neighbor_lt.configs import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("ablate_recipe", REPO / "recipes" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest():
    return {
        "version": 1,
        "targets": [{"name": "n1", "wnid": "n1"}, {"name": "n2", "wnid": "n2"}, {"name": "n3", "wnid": "n3"}],
        "auxiliary": [
            {"name": "a", "wnid": "x1", "neighbor_of": ["n1", "n2"]},
            {"name": "b", "wnid": "x2", "neighbor_of": ["n1"]},
            {"name": "c", "wnid": "x3", "neighbor_of": ["n3", "n2", "n1"]},
        ],
    }


def test_random_control_keeps_the_bipartite_shape_and_avoids_targets():
    vocabulary = [{"name": f"class {i}", "wnid": f"x{i}"} for i in range(1, 12)] + [{"name": "n2", "wnid": "n2"}]
    control, stats = ablation.random_control_manifest(_manifest(), vocabulary, seed=1)
    real = _manifest()["auxiliary"]
    assert [a["neighbor_of"] for a in control["auxiliary"]] == [a["neighbor_of"] for a in real]
    chosen = [a["wnid"] for a in control["auxiliary"]]
    assert len(set(chosen)) == 3 and "n2" not in chosen
    assert not set(chosen) & {"x1", "x2", "x3"}  # enough fresh classes: none of the real neighbors
    assert stats == {"aux_classes": 3, "real_neighbor_classes": 0, "same_assignment": 0, "fresh_candidates": 8,
                     "fresh_only": False, "seed": 1}  # fmt: skip
    again, _ = ablation.random_control_manifest(_manifest(), vocabulary, seed=1)
    assert again == control
    other, _ = ablation.random_control_manifest(_manifest(), vocabulary, seed=2)
    assert other != control
    small = [{"name": "p", "wnid": "x1"}, {"name": "q", "wnid": "x2"}, {"name": "r", "wnid": "x3"}]
    repaired, stats = ablation.random_control_manifest(_manifest(), small, seed=0)
    assert sorted(a["wnid"] for a in repaired["auxiliary"]) == ["x1", "x2", "x3"]  # a small pool re-pairs
    assert stats["real_neighbor_classes"] == 3
    with pytest.raises(ConfigError, match="needs 3 candidate classes"):
        ablation.random_control_manifest(_manifest(), small[:2], seed=0)


def test_fresh_only_control_never_uses_a_neighbor_class_or_refuses():
    real = {"x1", "x2", "x3"}
    vocabulary = [{"name": f"class {i}", "wnid": f"x{i}"} for i in range(1, 7)]  # x4..x6: nobody's neighbor
    for seed in range(5):
        control, stats = ablation.random_control_manifest(_manifest(), vocabulary, seed=seed, fresh_only=True)
        assert {a["wnid"] for a in control["auxiliary"]} == {"x4", "x5", "x6"}
        assert [a["neighbor_of"] for a in control["auxiliary"]] == [a["neighbor_of"] for a in _manifest()["auxiliary"]]
        assert stats["real_neighbor_classes"] == 0 and stats["fresh_only"] and stats["fresh_candidates"] == 3
    # one class short: the default re-uses a neighbor class, fresh_only says what to change
    _, stats = ablation.random_control_manifest(_manifest(), vocabulary[:5], seed=0)
    assert stats["real_neighbor_classes"] == 1
    with pytest.raises(
        ConfigError, match=r"uses 3 of the vocabulary's 5 .* only 2 are nobody's neighbor.*neighbors\.k"
    ):
        ablation.random_control_manifest(_manifest(), vocabulary[:5], seed=0, fresh_only=True)
    assert not real & {"x4", "x5", "x6"}


def test_fair_control_on_tiny_imagenet_one_neighbor_per_target_leaves_half_the_pool(tmp_path, tiny_imagenet_dir):
    """The recipe's setting (one WordNet neighbor per target) on the real class list: at most half the pool is used,
    so the fresh-only control exists; the default five per target uses nearly all of it and cannot have one."""
    import yaml

    from neighbor_lt import curate

    recipe = yaml.safe_load((REPO / "recipes/tiny_imagenet_lt/efficientnet_lite0/ablate.yaml").read_text())
    assert recipe["control_fresh_only"] is True
    base = yaml.safe_load((REPO / "recipes/tiny_imagenet_lt/curate.yaml").read_text())
    vocab_path = str(tiny_imagenet_dir / "classes.tsv")
    used = {}
    for name, overrides in (("k1", recipe["curate"]["neighbors"]), ("k5", {})):
        cfg = {**base, "output_dir": str(tmp_path / name)}
        cfg["target"] = {**base["target"], "train_files": [str(tiny_imagenet_dir / "train-*.parquet")],
                         "eval_files": [str(tiny_imagenet_dir / "valid-*.parquet")]}  # fmt: skip
        cfg["neighbors"] = {**base["neighbors"], **overrides, "vocabulary": vocab_path}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        curate.run(curate.load_config(str(path), stages=["neighbors"]))
        manifest = json.loads((tmp_path / name / "neighbors" / "neighbors.json").read_text())
        used[name] = manifest
    vocabulary = ablation.read_vocabulary(vocab_path)
    assert len(used["k1"]["auxiliary"]) <= 50
    control, stats = ablation.random_control_manifest(used["k1"], vocabulary, seed=0, fresh_only=True)
    assert stats["real_neighbor_classes"] == 0 and stats["aux_classes"] == len(used["k1"]["auxiliary"])
    assert len(used["k5"]["auxiliary"]) > 50
    with pytest.raises(ConfigError, match="nobody's neighbor"):
        ablation.random_control_manifest(used["k5"], vocabulary, seed=0, fresh_only=True)


def test_read_vocabulary_tsv_and_text(tmp_path, tiny_imagenet_dir):
    vocab = ablation.read_vocabulary(str(tiny_imagenet_dir / "classes.tsv"))
    assert len(vocab) == 200 and vocab[0]["wnid"].startswith("n") and "," not in vocab[0]["name"]
    text = tmp_path / "names.txt"
    text.write_text("tabby cat\n\nlynx\n")
    assert ablation.read_vocabulary(str(text)) == [{"name": "tabby cat", "wnid": None}, {"name": "lynx", "wnid": None}]


def test_paired_test_and_targets():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=30)
    per_class = {"c": {0: base + 0.1, 1: base + 0.1}, "a_steps": {0: base, 1: base}, "d": {0: base + 0.1}}
    groups = ["many"] * 10 + ["medium"] * 10 + ["few"] * 10
    paired = ablation.paired_test(per_class, "c", groups=groups)
    assert paired["c_vs_a_steps"]["all"]["better"] == 30 and paired["c_vs_a_steps"]["all"]["wilcoxon_p"] < 0.001
    assert paired["c_vs_a_steps"]["few"]["classes"] == 10
    assert paired["c_vs_d"]["all"]["tied"] == 30 and paired["c_vs_d"]["seeds"] == [0]
    row = lambda x: {g: (x, 0.0) for g in ablation.GROUPS}  # noqa: E731
    lines = ablation.check_targets({"c": row(40.0), "a_steps": row(35.0), "d": row(41.0), "b": row(39.0)})
    assert any("Few: +5.00" in line and "met" in line for line in lines)
    assert any(line.startswith("(c) - (d) Few: -1.00") and "NOT met" in line for line in lines)
    # the paper's fine-tuning hypotheses: a naive merge does not help the tail, silencing adds >= 2 Few points
    assert "(c) - (b) Few: +1.00 (paper, fine-tuning: >= +2) -> NOT met" in lines
    assert "(b) - (a=) Few: +4.00 (paper, fine-tuning: <= 0) -> NOT met" in lines
    lines = ablation.check_targets({"c": row(40.0), "a_steps": row(39.0), "b": row(37.5)})
    assert "(c) - (b) Few: +2.50 (paper, fine-tuning: >= +2) -> met" in lines
    assert "(b) - (a=) Few: -1.50 (paper, fine-tuning: <= 0) -> met" in lines
    per_class["b"] = {0: base - 0.05, 1: base - 0.05}
    b_vs_a = ablation.paired_tests(per_class, groups=groups)["b_vs_a_steps"]
    assert b_vs_a["few"]["worse"] == 10 and b_vs_a["all"]["mean_diff"] == pytest.approx(-5.0)
    del per_class["b"]
    # (c+v), visually chosen neighbors: against (c), (d) and (a=), with its own bars
    per_class["c_v"] = {0: base + 0.1, 1: base + 0.1}
    paired = ablation.paired_tests(per_class, groups=groups)
    assert {"c_vs_a_steps", "c_vs_d", "c_v_vs_c", "c_v_vs_d", "c_v_vs_a_steps"} <= set(paired)
    assert paired["c_v_vs_c"]["all"]["tied"] == 30 and paired["c_v_vs_d"]["seeds"] == [0]
    assert paired["c_v_vs_a_steps"]["all"]["better"] == 30
    lines = ablation.check_targets({"c": row(40.0), "d": row(41.0), "c_v": row(41.2)})
    assert "(c+v) - (c) Few: +1.20 (target +1.5) -> NOT met" in lines
    assert "(c+v) - (d) Few: +0.20 (target > 0) -> met" in lines


def test_config_overrides_and_errors(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("output_dir: o\ntrain_config: t.yaml\ncurate_config: c.yaml\ntrain: {num_train_epochs: 3}\n")
    config = ablation.parse_config(
        ["--config", str(cfg), "--seeds", "4", "--train.lt_seed", "2", "--curate.neighbors.k", "3", "--variants", "c"]
    )
    assert config.seeds == [4] and config.variants == ["c"]
    assert config.train == {"num_train_epochs": 3, "lt_seed": 2}
    assert config.curate == {"neighbors": {"k": 3}}
    with pytest.raises(ConfigError, match="unknown key"):
        ablation.parse_config(["--config", str(cfg), "--epochs", "3"])
    with pytest.raises(ConfigError, match="unknown variant"):
        ablation.parse_config(["--config", str(cfg), "--variants", "z"])
    with pytest.raises(ConfigError, match="needs a value"):
        ablation.parse_config(["--config", str(cfg), "--seeds"])


def test_the_visual_variant_is_opt_in_and_curates_its_own_set(tmp_path, monkeypatch):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ntrain_config: t.yaml\ncurate_config: {tmp_path / 'c.yaml'}\n")
    (tmp_path / "c.yaml").write_text("neighbors: {backend: wordnet, k: 5}\nretrieve: {backend: pool}\n")
    assert "c_v" not in ablation.parse_config(["--config", str(cfg)]).variants
    with pytest.raises(ConfigError, match="c_v needs visual.rank.model_name_or_path"):
        ablation.parse_config(["--config", str(cfg), "--variants", "c", "c_v"])
    config = ablation.parse_config(
        ["--config", str(cfg), "--variants", "c_v", "--visual.rank.model_name_or_path", "runs/a/seed0",
         "--curate.neighbors.k", "3"]
    )  # fmt: skip
    assert ablation.VARIANTS["c_v"].loss == ablation.VARIANTS["c"].loss and ablation.VARIANTS["c_v"].aux == "visual"
    calls = []

    def fake_curate(path, stages, log):
        calls.append((path, tuple(stages)))
        os.makedirs(tmp_path / "o" / "curate" / "visual" / "neighbors", exist_ok=True)
        (tmp_path / "o" / "curate" / "visual" / "neighbors" / "neighbors.json").write_text(json.dumps(_manifest()))

    monkeypatch.setattr(ablation.curation, "run_curate", fake_curate)
    sets = ablation.curation.curate_visual_set(config, {"dataset_name": "parquet"}, str(tmp_path / "o"))
    ((path, stages),) = calls
    assert stages == ("neighbors", "rank", "retrieve", "filter", "build") and path.endswith(
        "curate/visual/curate.yaml"
    )
    import yaml

    written = yaml.safe_load(open(path))
    assert written["rank"] == {"model_name_or_path": "runs/a/seed0"} and written["neighbors"]["k"] == 3
    assert written["neighbors"]["candidate_factor"] == 3 and written["output_dir"].endswith("curate/visual")
    assert sets["visual"].endswith("curate/visual/aux_dataset") and sets["visual_manifest"]["aux_classes"] == 3


def test_aux_datasets_curated_elsewhere_are_checked(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ntrain_config: t.yaml\n")  # no curate_config: not needed then
    real = tmp_path / "curate" / "neighbors"
    (real / "aux_dataset").mkdir(parents=True)
    (real / "neighbors").mkdir()
    (real / "neighbors" / "neighbors.json").write_text(json.dumps(_manifest()))
    bare = tmp_path / "random_aux"
    bare.mkdir()
    args = ["--config", str(cfg), "--aux_datasets.neighbors", str(real / "aux_dataset")]
    config = ablation.parse_config([*args, "--variants", "a", "a_steps", "b", "c", "--aux_datasets.random", str(bare)])
    assert config.aux_datasets == {"neighbors": str(real / "aux_dataset"), "random": str(bare)}
    sets = ablation.curation.given_sets(config)
    assert sets["neighbors"] == str(real / "aux_dataset") and sets["random"] == str(bare)
    assert sets["manifest"]["aux_classes"] == 3 and sets["manifest"]["pairs"] == 6
    assert sets["control"] == {"aux_dataset": str(bare)}  # no neighbors.json beside it: no statistics
    with pytest.raises(ConfigError, match="aux_datasets.neighbors: .*nope does not exist"):
        ablation.parse_config(["--config", str(cfg), "--aux_datasets.neighbors", str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="variant d needs aux_datasets.random"):
        ablation.parse_config([*args, "--variants", "c", "d"])
    with pytest.raises(ConfigError, match="variant a_steps needs aux_datasets.neighbors"):
        ablation.parse_config(["--config", str(cfg), "--aux_datasets.random", str(bare), "--variants", "a_steps"])
    with pytest.raises(ConfigError, match="unknown set"):
        ablation.parse_config([*args, "--aux_datasets.real", str(bare)])
    with pytest.raises(ConfigError, match="must set curate_config"):  # curating needs it
        ablation.parse_config(["--config", str(cfg)])


def test_aux_datasets_skip_curation_and_reach_the_runs(tmp_path, monkeypatch, capsys):
    """With aux_datasets the recipe curates nothing and hands the given folder to the runs that need it."""
    monkeypatch.chdir(REPO)
    recipe = _load_recipe()

    def no_curation(*args, **kwargs):
        raise AssertionError("curation ran although aux_datasets was given")

    monkeypatch.setattr(ablation.curation, "curate_sets", no_curation)
    monkeypatch.setattr(ablation.curation, "run_curate", no_curation)
    calls = []

    def fake_train(args):
        opts = dict(zip(args[::2], args[1::2]))
        calls.append(opts)
        out = Path(opts["--output_dir"])
        out.mkdir(parents=True)
        groups = {k: 0.5 for k in ablation.GROUPS}
        (out / "eval_results.json").write_text(
            json.dumps({**groups, **{f"train_{k}": v for k, v in groups.items()}, "train_steps": 2, "train_images": 8})
        )
        (out / "per_class_accuracy.csv").write_text(
            "label,name,train_count,group,accuracy\n0,x,9,many,0.5\n1,y,1,few,0.5\n"
        )

    monkeypatch.setattr(ablation.runner, "run_training", fake_train)
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ntrain_config: recipes/demo/train.yaml\n")
    summary = recipe.main(
        ["--config", str(cfg), "--seeds", "0", "--variants", "a_steps", "c",
         "--aux_datasets.neighbors", "recipes/demo/data/aux"]
    )  # fmt: skip
    a_steps, c = calls
    assert c["--aux_dataset"] == "recipes/demo/data/aux" and a_steps["--aux_dataset"] == ""
    assert a_steps["--max_steps"] == str(summary["steps_of_c"]) and summary["steps_of_c"] > 0
    assert summary["aux_datasets"] == {"neighbors": "recipes/demo/data/aux"} and "control" not in summary
    assert summary["neighbors"] == {"aux_dataset": "recipes/demo/data/aux"}  # no neighbors.json next to it
    assert set(summary["variants"]) == {"a_steps", "c"}


def test_ablation_end_to_end_on_tiny_inputs(tmp_path, monkeypatch, capsys):
    """All five variants, one seed, two steps each, through recipes/ablate.py's main(), curate.run and train.run."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("NEIGHBOR_LT_CACHE", str(tmp_path / "cache"))
    recipe = _load_recipe()
    out = tmp_path / "ablate"
    argv = [
        "--config", "recipes/tiny_imagenet_lt/ablate.yaml", "--output_dir", str(out), "--seeds", "0",
        "--train.num_classes", "10", "--train.imbalance_factor", "20", "--train.max_steps", "2",
        "--train.per_device_train_batch_size", "16", "--train.per_device_eval_batch_size", "100",
        "--curate.retrieve.max_results_per_query", "8", "--curate.build.max_images_per_class", "8",
        "--curate.neighbors.k", "2",
    ]  # fmt: skip
    summary = recipe.main(argv)
    assert set(summary["variants"]) == set(ablation.VARIANTS) - set(ablation.OPT_IN)  # (c+v) is asked for by name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["paired"].keys() == {"c_vs_a_steps", "c_vs_b", "c_vs_d", "c_vs_a", "b_vs_a_steps"}
    for name, variant in saved["variants"].items():
        (run,) = variant["runs"]
        assert run["seed"] == 0 and run["train_steps"] == 2 and run["train_images"] == 32
        assert 0 <= run["overall"] <= 1 and 0 <= run["train_overall"] <= 1 and run["wall_s"] > 0
        assert len(run["per_class"]) == 10
        assert (out / "runs" / name / "seed0" / "config.json").exists()  # the masked model
    masked = json.loads((out / "runs" / "c" / "seed0" / "config.json").read_text())
    assert len(masked["id2label"]) == 10  # the auxiliary rows are gone
    control = json.loads((out / "curate" / "random" / "neighbors" / "neighbors.json").read_text())
    real = json.loads((out / "curate" / "neighbors" / "neighbors" / "neighbors.json").read_text())
    assert [a["neighbor_of"] for a in control["auxiliary"]] == [a["neighbor_of"] for a in real["auxiliary"]]
    assert os.path.exists(saved["figure"])
    capsys.readouterr()
    recipe.main(argv)  # resumable: every run is reused
    printed = capsys.readouterr().out
    assert printed.count("(done before)") == 5 and "training ->" not in printed


def test_sweep_parsing_and_errors():
    from neighbor_lt.ablation.sweep import parse_sweep

    assert parse_sweep("lambda_s=0.01,0.1,0.3,1") == ("lambda_s", [0.01, 0.1, 0.3, 1])
    assert parse_sweep("train.learning_rate=1e-4, 3e-4") == ("learning_rate", [1e-4, 3e-4])
    assert parse_sweep({"max_aux_per_class": [10, 50]}) == ("max_aux_per_class", [10, 50])
    for bad, match in (("lambda_s", "KEY=V1,V2"), ("lambda_s=0.1", "two distinct"), ("lambda_s=1,1", "two distinct"),
                       ("curate.neighbors.k=1,3", "one ablation per value")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            parse_sweep(bad)


def test_sweep_trains_each_value_on_the_development_split_and_plots(tmp_path, monkeypatch, capsys):
    """--sweep: every value x seed of the chosen variants, the value on each run's command line, the development
    split in the runs' config, a summary with mean and sd per value and a figure; finished runs are reused."""
    import yaml

    monkeypatch.chdir(REPO)
    recipe = _load_recipe()
    calls = []

    def fake_train(args):
        opts = dict(zip(args[::2], args[1::2]))
        calls.append(opts)
        train_cfg = yaml.safe_load(Path(opts["--config"]).read_text())
        assert train_cfg["heldout_eval_per_class"] == 2  # the development split
        lam, seed = float(opts["--lambda_s"]), int(opts["--seed"])
        acc = 0.3 + 0.1 * lam + 0.01 * seed  # a known curve with seed noise
        out = Path(opts["--output_dir"])
        out.mkdir(parents=True)
        groups = {k: acc for k in ablation.GROUPS}
        (out / "eval_results.json").write_text(
            json.dumps({**groups, **{f"train_{k}": v for k, v in groups.items()}, "train_steps": 2, "train_images": 8})
        )
        (out / "per_class_accuracy.csv").write_text(
            f"label,name,train_count,group,accuracy\n0,x,9,many,{acc}\n1,y,1,few,{acc}\n"
        )

    monkeypatch.setattr(ablation.runner, "run_training", fake_train)
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ntrain_config: recipes/tiny_imagenet_lt/resnet/train.yaml\n")
    argv = ["--config", str(cfg), "--seeds", "0", "1", "--variants", "c", "--sweep", "lambda_s=0.01,0.3,1",
            "--aux_datasets.neighbors", "recipes/demo/data/aux", "--train.num_classes", "10",
            "--heldout_per_class", "2"]  # fmt: skip
    summary = recipe.main(argv)
    assert sorted((c["--lambda_s"], c["--seed"]) for c in calls) == sorted(
        (v, s) for v in ("0.01", "0.3", "1") for s in ("0", "1")
    )
    assert all("runs-dev/sweep-lambda_s/lambda_s=" in c["--output_dir"] for c in calls)
    rows = {r["value"]: r for r in summary["rows"]}
    assert set(rows) == {0.01, 0.3, 1} and rows[1]["seeds"] == [0, 1]
    assert rows[1]["overall"][0] == pytest.approx(100 * (0.4 + 0.005)) and rows[1]["overall"][1] > 0
    assert rows[0.01]["few"][0] < rows[0.3]["few"][0] < rows[1]["few"][0]
    assert Path(summary["figure"]).stat().st_size > 0
    saved = json.loads((tmp_path / "o" / "runs-dev" / "sweep-lambda_s" / "sweep-lambda_s.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(summary["rows"])) and saved["split"] == "development"
    calls.clear()
    recipe.main(argv)  # resumable: nothing is trained twice
    assert calls == []


def test_curation_lock_makes_a_second_process_wait(tmp_path):
    """Two ablations on one output folder curate it one at a time: the lock is held across processes."""
    import subprocess
    import sys

    from neighbor_lt.ablation.curation import curation_lock

    probe = (
        "import fcntl, sys\n"
        "h = open(sys.argv[1], 'w')\n"
        "try:\n    fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n    print('held')\n"
    )
    lock_file = str(tmp_path / ".curate.lock")
    with curation_lock(str(tmp_path)):
        inside = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True)
    after = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True)
    assert (inside.stdout.strip(), after.stdout.strip()) == ("held", "free")


def test_runs_from_an_earlier_summary_are_reused_and_checked(tmp_path, monkeypatch, capsys):
    """runs_from: a variant x seed recorded in an earlier summary.json is read from it, not trained; a summary of
    other sets, steps or classes is refused with one line; the new summary lists the classes and where runs came
    from."""
    monkeypatch.chdir(REPO)
    recipe = _load_recipe()
    calls = []

    def fake_train(args):
        opts = dict(zip(args[::2], args[1::2]))
        calls.append((opts["--output_dir"].split(os.sep)[-2], int(opts["--seed"])))
        out = Path(opts["--output_dir"])
        out.mkdir(parents=True)
        acc = 0.25 + 0.05 * int(opts["--seed"])
        groups = {k: acc for k in ablation.GROUPS}
        (out / "eval_results.json").write_text(
            json.dumps({**groups, **{f"train_{k}": v for k, v in groups.items()}, "train_steps": 2, "train_images": 8})
        )
        (out / "per_class_accuracy.csv").write_text(
            f"label,name,train_count,group,accuracy\n0,x,9,many,{acc}\n1,y,5,medium,{acc}\n2,z,1,few,{acc}\n"
        )

    monkeypatch.setattr(ablation.runner, "run_training", fake_train)
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "train_config: recipes/demo/train.yaml\nvariants: [a_steps, c]\n"
        "aux_datasets: {neighbors: recipes/demo/data/aux}\n"
    )
    first = recipe.main(["--config", str(cfg), "--output_dir", str(tmp_path / "first"), "--seeds", "0"])
    assert calls == [("a_steps", 0), ("c", 0)]
    assert first["classes"] == [{"name": "x", "group": "many"}, {"name": "y", "group": "medium"},
                                {"name": "z", "group": "few"}]  # fmt: skip
    earlier = tmp_path / "earlier.json"
    earlier.write_text((tmp_path / "first" / "summary.json").read_text())

    # a fresh output folder (the first one's runs are gone): seed 0 comes from the file, seed 1 is trained
    calls.clear()
    capsys.readouterr()
    argv = ["--config", str(cfg), "--output_dir", str(tmp_path / "second"), "--seeds", "0", "1"]
    summary = recipe.main([*argv, "--runs_from", str(earlier)])
    printed = capsys.readouterr().out
    assert calls == [("a_steps", 1), ("c", 1)]
    assert printed.count(f"(from {earlier})") == 2
    for variant in ("a_steps", "c"):
        runs = {r["seed"]: r for r in summary["variants"][variant]["runs"]}
        assert runs.keys() == {0, 1} and runs[0]["from"] == str(earlier) and "from" not in runs[1]
        assert runs[0]["overall"] == 0.25 and runs[1]["overall"] == pytest.approx(0.30)
    assert summary["paired"]["c_vs_a_steps"]["seeds"] == [0, 1]
    assert summary["paired"]["c_vs_a_steps"]["few"]["classes"] == 1  # the groups are known
    assert summary["classes"] == first["classes"]

    # an older summary without "classes": the groups come from the runs made here
    old = json.loads(earlier.read_text())
    del old["classes"]
    earlier.write_text(json.dumps(old))
    summary = recipe.main([*argv, "--runs_from", str(earlier), "--report_only", "true"])
    assert summary["paired"]["c_vs_a_steps"]["few"]["classes"] == 1

    # not comparable: other (c) steps, another split, other classes, not a summary, missing
    bad = tmp_path / "bad.json"
    third = ["--config", str(cfg), "--output_dir", str(tmp_path / "third"), "--seeds", "0", "--runs_from", str(bad)]
    bad.write_text(json.dumps({**old, "steps_of_c": old["steps_of_c"] + 1}))
    with pytest.raises(ConfigError, match=r"bad.json has steps_of_c \d+, this ablation \d+; its runs are not comp"):
        recipe.main(third)
    bad.write_text(json.dumps({**old, "split": "development"}))
    with pytest.raises(ConfigError, match='has split "development", this ablation "evaluation"'):
        recipe.main(third)
    short = json.loads(json.dumps(old))
    short["variants"]["c"]["runs"][0]["per_class"] = [0.5, 0.5]
    bad.write_text(json.dumps(short))
    with pytest.raises(ConfigError, match=r"c seed 0 \(from .*bad.json\) has 2 per-class accuracies, a_steps seed 0"):
        recipe.main(third)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="bad.json is not an ablation summary.json"):
        recipe.main(third)
    assert calls == [("a_steps", 1), ("c", 1)]  # nothing trained by the refused invocations
    with pytest.raises(ConfigError, match="runs_from: .*nope.json not found"):
        ablation.parse_config([*third[:-1], str(tmp_path / "nope.json")])
    with pytest.raises(ConfigError, match="runs_from cannot be combined with sweep"):
        ablation.parse_config([*argv, "--runs_from", str(earlier), "--sweep", "lambda_s=0.1,1"])
