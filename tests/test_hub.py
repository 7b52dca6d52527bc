"""Cards and pushes, with every Hub call intercepted at the `huggingface_hub.HfApi` boundary (no network)."""

import importlib.util
import json
import math
import shutil
import types
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoModelForImageClassification

from neighbor_lt import hub
from neighbor_lt.configs import ConfigError

REPO = Path(__file__).resolve().parents[1]
# hidden_size 48, not 32: with 20 + 12 = 32 labels, a 32-wide MLP layer also has num_labels outputs, and the core's
# find_classifier (modeling.py) then masks that layer instead of the classifier
TINY = "hidden_size=48,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,patch_size=16"
SECRET = "hf_not_a_real_token_123"
WHOAMI = {"name": "me", "orgs": [{"name": "neighbor-lt"}], "auth": {"accessToken": {"role": "write"}}}


class FakeHub:
    """Records what `HfApi` would send: repositories, branches, commits (with file contents) and folder uploads."""

    def __init__(self, whoami=WHOAMI):
        self.calls, self.commits, self.folders = [], [], []
        self.whoami_result = whoami

    def install(self, mp: pytest.MonkeyPatch):
        fake = self

        def whoami(self, token=None, **kwargs):
            fake.calls.append(("whoami", token))
            if isinstance(fake.whoami_result, Exception):
                raise fake.whoami_result
            return fake.whoami_result

        def create_repo(self, repo_id, *, private=None, repo_type=None, exist_ok=False, **kwargs):
            repo_id = repo_id if "/" in repo_id else f"me/{repo_id}"
            fake.calls.append(("create_repo", repo_id, repo_type, private))
            prefix = "datasets/" if repo_type == "dataset" else ""
            return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

        def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
            fake.calls.append(("create_branch", repo_id, branch))

        def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
            files = {}
            for op in operations:
                src = op.path_or_fileobj
                files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
            fake.calls.append(("create_commit", repo_id, revision))
            fake.commits.append({"repo_id": repo_id, "revision": revision or "main", "files": files})
            return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(fake.commits)}")

        def upload_folder(self, *, folder_path, repo_id, repo_type=None, allow_patterns=None, ignore_patterns=None,
                          **kwargs):  # fmt: skip
            # the same selection upload_folder makes: every file under the folder, filtered by the patterns
            root = Path(folder_path)
            rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            chosen = list(filter_repo_objects(rel, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
            fake.calls.append(("upload_folder", repo_id, repo_type))
            fake.folders.append({"repo_id": repo_id, "files": {r: (root / r).read_bytes() for r in chosen}})
            return f"https://huggingface.co/datasets/{repo_id}/commit/1"

        for name, fn in dict(locals()).items():
            if name in ("whoami", "create_repo", "create_branch", "create_commit", "upload_folder"):
                mp.setattr(HfApi, name, fn)
        return self


def _load_train_recipe():
    spec = importlib.util.spec_from_file_location("train_recipe", REPO / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_train_args(output_dir, *extra):
    return [
        "--max_steps", "2", "--num_train_epochs", "1", "--config_overrides", TINY, "--dataloader_num_workers", "0",
        "--max_eval_samples", "60", "--per_device_train_batch_size", "16", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """The demo recipe, tiny, with push_to_hub and an unmasked revision; the Hub intercepted."""
    out = tmp_path_factory.mktemp("demo_push")
    fake = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp)
        mp.chdir(REPO)
        argv = _tiny_train_args(out, "--push_to_hub", "true", "--hub_model_id", "neighbor-lt/demo-tiny",
                                "--hub_token", SECRET, "--push_unmasked_revision", "unmasked")  # fmt: skip
        _load_train_recipe().main(argv)
    return out, fake


def test_push_uploads_exactly_the_masked_model_files(pushed):
    out, fake = pushed
    assert [c[0] for c in fake.calls] == ["whoami", "create_repo", "create_commit", "create_branch", "create_commit"]
    assert fake.calls[0] == ("whoami", SECRET)
    main = fake.commits[0]
    assert (main["repo_id"], main["revision"]) == ("neighbor-lt/demo-tiny", "main")
    assert sorted(main["files"]) == [
        "README.md", "all_results.json", "args.yaml", "config.json", "eval_results.json", "model.safetensors",
        "neighbor_lt.json", "per_class_accuracy.csv", "preprocessor_config.json", "train_results.json",
    ]  # fmt: skip
    config = json.loads(main["files"]["config.json"])
    info = json.loads(main["files"]["neighbor_lt.json"])
    assert list(config["id2label"].values()) == info["target_classes"] and len(info["target_classes"]) == 20
    assert main["files"]["model.safetensors"] == (out / "model.safetensors").read_bytes()
    model = AutoModelForImageClassification.from_pretrained(out)  # what `pipeline(..., model=repo)` would load
    assert model.classifier.out_features == 20
    # the token is in the local args.yaml but never leaves the machine
    assert all(SECRET.encode() not in content for c in fake.commits for content in c["files"].values())
    assert yaml.safe_load(main["files"]["args.yaml"])["hub_token"] == "<redacted>"


def test_unmasked_checkpoint_goes_to_its_own_branch(pushed):
    out, fake = pushed
    assert fake.calls[3] == ("create_branch", "neighbor-lt/demo-tiny", "unmasked")
    unmasked = fake.commits[1]
    assert unmasked["revision"] == "unmasked"
    assert sorted(unmasked["files"]) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert len(json.loads(unmasked["files"]["config.json"])["id2label"]) == 20 + 12
    assert b"unmasked" in unmasked["files"]["README.md"]


def test_pushed_card_parses_with_four_metric_model_index(pushed):
    out, fake = pushed
    text = fake.commits[0]["files"]["README.md"].decode()
    card = ModelCard(text)  # huggingface_hub's own parsing of the front matter
    data = card.data
    assert data.pipeline_tag == "image-classification" and data.library_name == "transformers"
    assert data.license and "neighbor-lt" in data.tags
    results = data.eval_results
    assert [r.metric_config for r in results] == ["overall", "many", "medium", "few"]
    saved = json.loads((out / "eval_results.json").read_text())
    for r in results:
        assert r.task_type == "image-classification" and r.metric_type == "accuracy"
        assert r.dataset_split == "validation"
        assert r.metric_value == pytest.approx(saved[r.metric_config], abs=1e-4)
    model_name, again = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert model_name == "demo-tiny" and len(again) == 4
    # training settings and how the neighbors were found
    assert "| loss | `neighbor_silencing`, lambda_s = 0.1 |" in text
    assert "| auxiliary images per class per epoch (cap) | 30 |" in text
    assert "| lemon | 5 | Few | orange |" in text
    assert "a local auxiliary set `aux` (not on the Hub)" in text and "recipes/demo/data/aux" not in text
    assert 'pipeline("image-classification", model="neighbor-lt/demo-tiny")' in text


def test_card_reads_backend_from_neighbor_manifest(tmp_path, pushed):
    out, _ = pushed
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("*.safetensors", "unmasked"))
    aux = tmp_path / "curate" / "aux_dataset"
    aux.mkdir(parents=True)
    (tmp_path / "curate" / "neighbors").mkdir()
    manifest = {"version": 1, "backend": "openai", "model": "gpt-4o", "settings": {"k": 5, "ratios": [1, 1, 3]}}
    (tmp_path / "curate" / "neighbors" / "neighbors.json").write_text(json.dumps(manifest))
    card = hub.write_model_card(str(run))
    assert "was not recorded" in card.text
    args = yaml.safe_load((run / "args.yaml").read_text())
    args["aux_dataset"] = str(aux)
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    card = hub.write_model_card(str(run))
    assert "proposed by the `openai` search backend (model `gpt-4o`) with k = 5, ratios = [1, 1, 3]" in card.text
    assert (run / "README.md").read_text() == str(card)


def test_card_without_evaluation_or_with_an_empty_group(tmp_path, pushed):
    out, _ = pushed
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("*.safetensors", "unmasked", "eval_results.json"))
    card = hub.render_model_card(str(run))
    assert card.data.eval_results is None and "has not been evaluated" in card.text
    results = {"overall": 0.5, "many": 0.7, "medium": 0.4, "few": math.nan, "group_sizes": {}}
    card = hub.render_model_card(str(run), results=results)
    assert [r.metric_config for r in ModelCard(str(card)).data.eval_results] == ["overall", "many", "medium"]


def test_card_shows_the_plots_present(tmp_path, pushed):
    out, _ = pushed
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("unmasked"))
    (run / "group_accuracy.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    card = hub.render_model_card(str(run))
    assert "![Accuracy by group](group_accuracy.png)" in card.text and "feature_map.png" not in card.text
    assert "group_accuracy.png" in hub.model_files(str(run))


# ----------------------------------------------------------------------------------------------------------------
# check_hub_access: fails before training
# ----------------------------------------------------------------------------------------------------------------


def _http_error(status):
    response = types.SimpleNamespace(status_code=status, headers={}, request=None, url="https://huggingface.co")
    return HfHubHTTPError(f"{status} error", response=response)


@pytest.mark.parametrize(
    "hub_model_id, token, whoami, match",
    [
        (None, "hf_x", WHOAMI, "hub_model_id is empty"),
        ("a/b/c", "hf_x", WHOAMI, "not a valid repository id"),
        ("me/model", None, WHOAMI, "no Hugging Face token"),
        ("me/model", "hf_x", _http_error(401), "rejected"),
        ("me/model", "hf_x", {**WHOAMI, "auth": {"accessToken": {"role": "read"}}}, "read-only"),
        ("someone-else/model", "hf_x", WHOAMI, "cannot write to namespace 'someone-else'"),
    ],
)
def test_check_hub_access_errors(monkeypatch, hub_model_id, token, whoami, match):
    FakeHub(whoami).install(monkeypatch)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(hub.HubAccessError, match=match):
        hub.check_hub_access(hub_model_id, token)


def test_check_hub_access_ok(monkeypatch):
    fake = FakeHub().install(monkeypatch)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_local")
    assert hub.check_hub_access("neighbor-lt/model", None) == "neighbor-lt/model"
    assert hub.check_hub_access("model", "hf_x") == "me/model"
    assert fake.calls == [("whoami", "hf_local"), ("whoami", "hf_x")]


def test_bad_token_fails_before_training(monkeypatch, tmp_path):
    fake = FakeHub(_http_error(401)).install(monkeypatch)
    monkeypatch.chdir(REPO)
    argv = _tiny_train_args(tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/x", "--hub_token", "hf_bad")
    with pytest.raises(hub.HubAccessError, match="rejected"):
        _load_train_recipe().main(argv)
    assert fake.calls == [("whoami", "hf_bad")]
    assert not any(tmp_path.iterdir())  # nothing was trained or saved


# ----------------------------------------------------------------------------------------------------------------
# Auxiliary dataset
# ----------------------------------------------------------------------------------------------------------------


def test_push_aux_dataset_renders_card_and_uploads_folder(monkeypatch, tmp_path):
    fake = FakeHub().install(monkeypatch)
    folder = tmp_path / "aux"
    shutil.copytree(REPO / "recipes" / "demo" / "data" / "aux", folder)
    (folder / "README.md").unlink()
    hub.push_aux_dataset(str(folder), "neighbor-lt/demo-aux", token="hf_x")
    assert fake.calls == [("create_repo", "neighbor-lt/demo-aux", "dataset", True),
                          ("upload_folder", "neighbor-lt/demo-aux", "dataset")]  # fmt: skip
    files = fake.folders[0]["files"]
    assert sorted(files) == ["README.md", "data/train-00000-of-00001.parquet"]
    card = DatasetCard(files["README.md"].decode())
    assert card.data.task_categories == ["image-classification"] and "neighbor-lt" in card.data.tags
    assert "**480** images in **12** auxiliary classes" in card.text
    assert "| orange | lemon | 40 |" in card.text
    assert 'load_dataset("neighbor-lt/demo-aux", split="train")' in card.text


def test_push_aux_dataset_keeps_an_existing_card(monkeypatch, tmp_path):
    fake = FakeHub().install(monkeypatch)
    folder = tmp_path / "aux"
    shutil.copytree(REPO / "recipes" / "demo" / "data" / "aux", folder)
    before = (folder / "README.md").read_bytes()
    hub.push_aux_dataset(str(folder), "neighbor-lt/demo-aux")
    assert fake.folders[0]["files"]["README.md"] == before


def test_push_aux_dataset_pushes_a_webdataset_set_as_built(monkeypatch, tmp_path):
    """build.format: webdataset: the tar shards and the card (which alone names the classes) go up as they are."""
    from test_retrieval_builder import make_run

    from neighbor_lt.curate import CurateContext
    from neighbor_lt.retrieval.stages import run_build

    make_run(tmp_path, per_class=6)
    run_build({"max_images_per_class": 4, "rows_per_shard": 5, "format": "webdataset"}, CurateContext(str(tmp_path)))
    folder = tmp_path / "aux_dataset"
    fake = FakeHub().install(monkeypatch)
    hub.push_aux_dataset(str(folder), "neighbor-lt/demo-aux-wds")
    files = fake.folders[0]["files"]
    assert sorted(files) == ["README.md", *(f"data/train-{i:05d}-of-00003.tar" for i in range(3))]
    assert files["README.md"] == (folder / "README.md").read_bytes()  # the built card, not one rendered again
    (folder / "README.md").unlink()  # the tars alone cannot name the classes: one line, nothing sent
    with pytest.raises(ConfigError, match=r"README.md not found: a WebDataset set's class names are declared only"):
        hub.push_aux_dataset(str(folder), "neighbor-lt/demo-aux-wds")
    assert len(fake.folders) == 1


def _card_with_args(tmp_path, out, **changes):
    run = tmp_path / "run"
    if not run.exists():
        shutil.copytree(out, run, ignore=shutil.ignore_patterns("*.safetensors", "unmasked"))
    args = yaml.safe_load((out / "args.yaml").read_text())
    args.update(changes)
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    return ModelCard(str(hub.render_model_card(str(run))))


def test_card_names_the_dataset_never_a_local_path(tmp_path, pushed):
    out, _ = pushed
    data_dir = str(REPO / "recipes/demo/data/target")
    card = _card_with_args(tmp_path, out, train_files=[f"{data_dir}/train.parquet"])  # an absolute path
    index = card.data.to_dict()["model-index"][0]["results"][0]["dataset"]
    assert index == {"name": "target", "type": "target", "split": "validation"}
    assert data_dir not in str(card) and card.data.datasets is None
    assert card.data.license == "other" and card.data.license_name == "training-data-terms"

    card = _card_with_args(tmp_path, out, dataset_id="ImageNet-LT", model_license_name="imagenet-terms",
                           model_license_link="https://image-net.org/download.php")  # fmt: skip
    index = card.data.to_dict()["model-index"][0]["results"][0]["dataset"]
    assert (index["name"], index["type"]) == ("ImageNet-LT", "imagenet-lt") and card.data.datasets is None
    assert (card.data.license_name, card.data.license_link) == ("imagenet-terms", "https://image-net.org/download.php")

    card = _card_with_args(tmp_path, out, dataset_id="me/my-lt-set", aux_dataset="me/my-lt-aux")
    index = card.data.to_dict()["model-index"][0]["results"][0]["dataset"]
    assert (index["name"], index["type"]) == ("me/my-lt-set", "me/my-lt-set")
    assert card.data.datasets == ["me/my-lt-set", "me/my-lt-aux"]


def test_card_of_a_small_dataset_leaves_out_the_empty_group(tmp_path, pushed):
    out, _ = pushed
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("*.safetensors", "unmasked"))
    results = {"overall": 0.5, "many": math.nan, "medium": 0.4, "few": 0.6,
               "group_sizes": {"many": 0, "medium": 12, "few": 8}}  # fmt: skip
    text = str(hub.render_model_card(str(run), results=results))
    assert "| | Overall | Medium | Few |" in text and "| top-1 % | 50.00 | 40.00 | 60.00 |" in text
    assert "(Many: no class)" in text and "| n/a |" not in text


def test_card_of_a_run_not_on_the_hub_loads_its_folder_and_hides_local_paths(tmp_path, pushed):
    out, _ = pushed
    aux = tmp_path / "private" / "curate" / "aux_dataset"
    card = str(_card_with_args(tmp_path, out, hub_model_id=None, aux_dataset=str(aux)))
    assert f'pipeline("image-classification", model="{tmp_path / "run"}")' in card  # the folder, not a basename
    assert "a local auxiliary set `aux_dataset` (not on the Hub)" in card and str(aux) not in card
    assert "| auxiliary images per class per epoch (cap) |" in card

    baseline = str(_card_with_args(tmp_path, out, aux_dataset=None, loss="balanced_softmax"))
    assert "auxiliary images per class per epoch (cap)" not in baseline  # no auxiliary images, no cap
