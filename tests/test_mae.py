"""The from-scratch path: MAE pre-training, the classifier built on the MAE encoder, mismatch errors, configs."""

import importlib.util
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining

from neighbor_lt.configs import (
    ConfigError,
    DataArguments,
    ModelArguments,
    NeighborLTTrainingArguments,
    parse_args,
    resolve_resume,
)
from neighbor_lt.mae import (
    MAEModelArguments,
    MAETrainingArguments,
    apply_base_learning_rate,
    build_mae_model,
    classifier_from_mae,
    encoder_state_dict,
    grid_size,
    reconstruction_grid,
)
from neighbor_lt.modeling import layerwise_param_groups, load_model
from neighbor_lt.trainer import NeighborSilencingTrainer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo" / "data" / "target"
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_OVERRIDES = ",".join(f"{k}={v}" for k, v in TINY.items() if k not in ("image_size", "patch_size"))
LABELS = {0: "cat", 1: "dog", 2: "fox"}


def _recipe(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mae_dir(tmp_path):
    """A saved tiny MAE whose encoder weights are far from any fresh initialisation."""
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**TINY))
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            param.copy_(torch.randn_like(param) + 3.0 + i)  # a re-initialised tensor cannot equal these
    model.save_pretrained(tmp_path / "mae")
    return tmp_path / "mae", model


def test_classifier_from_mae_loads_the_pretrained_encoder(mae_dir):
    folder, mae = mae_dir
    model = load_model(ModelArguments(model_name_or_path=str(folder)), LABELS)
    assert model.config.model_type == "vit" and model.config.id2label == LABELS
    pretrained, loaded = encoder_state_dict(mae), encoder_state_dict(model)
    assert set(pretrained) == set(loaded) and len(loaded) == 38
    for name, tensor in pretrained.items():
        assert torch.equal(loaded[name], tensor), f"{name} was not loaded from the checkpoint"
    # The head is new (tiny init as in MAE fine-tuning), the decoder and mask ratio are gone.
    assert model.classifier.weight.shape == (3, 32) and model.classifier.weight.abs().max() < 1e-3
    assert not any("decoder" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # MAE's frozen sin-cos positions are trained again
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)
    groups = layerwise_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert {g["lr_scale"] for g in groups} == {0.75**3, 0.75**2, 0.75, 1.0}  # embeddings, 2 blocks, head


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"image_size": 64}, "image_size=64 (checkpoint: 32)"),
        ({"config_overrides": "image_size=48"}, "image_size=48 (checkpoint: 32)"),
        ({"config_overrides": "patch_size=4"}, "patch_size=4 (checkpoint: 8)"),
        ({"config_overrides": "hidden_size=64"}, "hidden_size=64 (checkpoint: 32)"),
    ],
)
def test_mismatched_fine_tuning_config_is_named(mae_dir, kwargs, named):
    folder, _ = mae_dir
    with pytest.raises(ConfigError, match=r"does not match the MAE checkpoint") as err:
        load_model(ModelArguments(model_name_or_path=str(folder), **kwargs), LABELS)
    assert named in str(err.value)


def test_checkpoint_of_another_architecture(tmp_path, mae_dir):
    folder, _ = mae_dir
    # Config says vit_mae, weights are something else.
    save_file(
        {"backbone.conv.weight": torch.zeros(4, 3)}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    with pytest.raises(ConfigError, match="another architecture") as err:
        load_model(ModelArguments(model_name_or_path=str(folder)), LABELS)
    assert "embeddings.cls_token" in str(err.value)
    # A non-MAE config handed to the MAE path.
    common = {"num_labels": 3, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    with pytest.raises(ConfigError, match="'vit' checkpoint, not vit_mae"):
        classifier_from_mae(ModelArguments(model_name_or_path=str(tmp_path)), ViTConfig(), common)


def test_reconstruction_grid_is_deterministic_and_sized():
    model = build_mae_model(MAEModelArguments(image_size=32, patch_size=8, config_overrides=TINY_OVERRIDES))
    pixels = torch.randn(3, 3, 32, 32)
    grid = reconstruction_grid(model, pixels, mean=(0.5,) * 3, std=(0.5,) * 3, seed=1)
    assert isinstance(grid, Image.Image) and grid.size == grid_size(3, 32)
    again = reconstruction_grid(model, pixels, mean=(0.5,) * 3, std=(0.5,) * 3, seed=1)
    assert grid.tobytes() == again.tobytes()
    assert model.training  # the train/eval mode is restored


def test_mae_defaults_and_base_learning_rate(tmp_path):
    args = MAETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=64, base_learning_rate=1.5e-4)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.9, 0.95, 0.05)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert apply_base_learning_rate(args) == pytest.approx(1.5e-4 * 64 / 256)
    model = build_mae_model(MAEModelArguments(image_size=32, patch_size=8, config_overrides=TINY_OVERRIDES))
    assert model.config.mask_ratio == 0.75 and model.config.norm_pix_loss
    with pytest.raises(ConfigError, match="not a multiple"):
        build_mae_model(MAEModelArguments(image_size=30, patch_size=8))


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, str(tmp_path)) is None
    assert resolve_resume("last", str(tmp_path)) is None  # nothing yet: start fresh
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    assert resolve_resume("last", str(tmp_path)).endswith("checkpoint-12")
    with pytest.raises(ConfigError, match="no checkpoint folder"):
        resolve_resume(str(tmp_path / "missing"), str(tmp_path))


def test_pretrain_resume_then_finetune_end_to_end(tmp_path, monkeypatch):
    pretrain_mae, train = _recipe("pretrain_mae"), _recipe("train")
    out = tmp_path / "mae"
    pretrain = [
        "--dataset_name", "parquet", "--train_files", str(DEMO / "train.parquet"),
        "--eval_files", str(DEMO / "validation.parquet"), "--num_classes", "4", "--max_eval_samples", "8",
        "--image_size", "32", "--patch_size", "8", "--config_overrides", TINY_OVERRIDES,
        "--per_device_train_batch_size", "8", "--num_reconstruction_images", "4", "--save_steps", "1",
        "--dataloader_num_workers", "0", "--report_to", "none", "--do_eval", "--output_dir", str(out),
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pretrain_mae.main([*pretrain, "--max_steps", "2"])
    assert not [w for w in caught if "pin_memory" in str(w.message)]  # a CPU run does not ask for pinned memory
    assert json.loads((out / "config.json").read_text())["model_type"] == "vit_mae"
    assert Image.open(result["reconstructions"]).size == grid_size(4, 32)
    assert (out / "reconstructions" / "step-1.png").exists() and (out / "preprocessor_config.json").exists()
    assert result["eval"]["eval_loss"] > 0
    # Resume: continues from checkpoint-2 instead of starting over.
    pretrain_mae.main([*pretrain, "--max_steps", "3", "--resume_from_checkpoint", "last"])
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and (out / "checkpoint-2").exists()
    mae = ViTMAEForPreTraining.from_pretrained(out)

    finetune = [
        "--config", str(ROOT / "recipes" / "tiny_imagenet_lt" / "scratch" / "train.yaml"),
        "--model_name_or_path", str(out), "--dataset_name", "parquet", "--train_files", str(DEMO / "train.parquet"),
        "--eval_files", str(DEMO / "validation.parquet"), "--num_classes", "4", "--imbalance_factor", "1",
        "--max_eval_samples", "8", "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0",
        "--loss", "bal_bce", "--rand_augment", "", "--output_dir", str(tmp_path / "ft"),
        "--drop_path_rate", "0", "--global_pool", "false",  # the ViT classifier; the YAML's LiVT head is run below
    ]  # fmt: skip
    # A mismatch stops the run before training: nothing is written.
    with pytest.raises(ConfigError, match="image_size=64"):
        train.main([*finetune, "--image_size", "64", "--max_steps", "1"])
    assert not (tmp_path / "ft" / "config.json").exists()
    original_train = NeighborSilencingTrainer.train
    seen = {}

    def spy(self, *args, **kwargs):  # the encoder entering training is the pre-trained one
        seen.update(encoder_state_dict(self.model))
        return original_train(self, *args, **kwargs)

    monkeypatch.setattr(NeighborSilencingTrainer, "train", spy)
    results = train.main([*finetune, "--max_steps", "1"])
    assert all(torch.equal(seen[k], v) for k, v in encoder_state_dict(mae).items())
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model_type"] == "vit"
    assert set(results) >= {"overall", "many", "medium", "few"}
    # The recipe's own LiVT settings (drop path 0.1, global pool): a BEiT classifier on the same encoder tensors.
    seen.clear()
    results = train.main([*finetune[:-4], "--output_dir", str(tmp_path / "livt"), "--max_steps", "1"])
    saved = json.loads((tmp_path / "livt" / "config.json").read_text())
    assert saved["model_type"] == "beit" and saved["drop_path_rate"] == 0.1 and saved["use_mean_pooling"]
    pretrained = encoder_state_dict(mae)
    taken = {k for k in pretrained if k in seen}  # all but the key biases and the final norm (replaced by fc_norm)
    assert len(taken) == len(pretrained) - 2 - 2 and all(torch.equal(seen[k], pretrained[k]) for k in taken)
    assert set(results) >= {"overall", "many", "medium", "few"}


SCRATCH = sorted((ROOT / "recipes").glob("*/scratch"))


def test_every_benchmark_has_scratch_configs():
    names = {p.parent.name for p in SCRATCH}
    assert {"imagenet_lt", "inat2018", "places_lt", "tiny_imagenet_lt"} <= names


@pytest.mark.parametrize("folder", SCRATCH, ids=lambda p: p.parent.name)
def test_scratch_configs_parse_and_agree(folder):
    mae_model, mae_data, mae_train = parse_args(
        (MAEModelArguments, DataArguments, MAETrainingArguments), ["--config", str(folder / "pretrain_mae.yaml")]
    )
    model_args, data_args, train_args = parse_args(
        (ModelArguments, DataArguments, NeighborLTTrainingArguments), ["--config", str(folder / "train.yaml")]
    )
    for key in ("seed", "report_to", "output_dir", "hub_model_id"):
        assert getattr(mae_train, key) is not None and getattr(train_args, key) is not None
    assert (mae_model.mask_ratio, mae_model.norm_pix_loss, mae_train.adam_beta2, mae_train.weight_decay) == (
        0.75,
        True,
        0.95,
        0.05,
    )
    assert getattr(mae_train.lr_scheduler_type, "value", mae_train.lr_scheduler_type) == "cosine"
    assert mae_data.crop_min_scale == 0.2  # MAE's crop scale
    # Stage 2 starts from stage 1's output and reads the same target set.
    assert os.path.normpath(model_args.model_name_or_path) == os.path.normpath(mae_train.output_dir)
    assert (data_args.lt_train_list, data_args.train_files) == (mae_data.lt_train_list, mae_data.train_files)
    if folder.parent.name != "tiny_imagenet_lt":
        assert (mae_model.image_size, mae_model.patch_size, mae_train.num_train_epochs) == (224, 16, 800)
        assert mae_train.base_learning_rate == 1.5e-4
        assert (train_args.learning_rate, train_args.layer_decay, train_args.adam_beta2) == (1e-3, 0.75, 0.95)
        assert (train_args.mixup_alpha, train_args.cutmix_alpha, train_args.rand_augment) == (
            0.8,
            1.0,
            "rand-m9-mstd0.5",
        )
        expected_epochs = 30 if folder.parent.name == "places_lt" else 100
        assert train_args.num_train_epochs == expected_epochs


# --------------------------------------------------------------------------------------------------------------------
# LiVT's fine-tuning: drop path and global average pooling (a BEiT classifier on the MAE encoder)
# --------------------------------------------------------------------------------------------------------------------


def _same_head(source, target):
    with torch.no_grad():
        target.classifier.weight.copy_(torch.randn_like(target.classifier.weight))
        target.classifier.bias.copy_(torch.randn_like(target.classifier.bias))
        source.classifier.load_state_dict(target.classifier.state_dict())


def test_drop_path_classifier_equals_the_vit_one_in_evaluation(mae_dir):
    """BEiT without the key bias computes what the ViT with it computes: the bias shifts every score of a query
    equally, and softmax removes that; drop path is the identity outside training."""
    folder, mae = mae_dir
    vit = load_model(ModelArguments(model_name_or_path=str(folder)), LABELS).eval()
    beit = load_model(ModelArguments(model_name_or_path=str(folder), drop_path_rate=0.1), LABELS).eval()
    assert type(beit).__name__ == "BeitForImageClassification" and beit.config.drop_path_rate == 0.1
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in beit.beit.layers]
    assert rates == [0.0, 0.1]  # linear from 0 to the rate over the blocks, as timm
    assert mae.vit.state_dict()["layers.0.attention.k_proj.bias"].abs().min() > 1  # a bias that would matter
    _same_head(vit, beit)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(beit(pixel_values=x).logits, vit(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
    groups = layerwise_param_groups(beit, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert {g["lr_scale"] for g in groups} == {0.75**3, 0.75**2, 0.75, 1.0}  # embeddings, 2 blocks, head


def test_drop_path_drops_whole_residual_branches_per_sample_in_training(mae_dir):
    folder, _ = mae_dir
    model = load_model(ModelArguments(model_name_or_path=str(folder), drop_path_rate=0.5), LABELS)
    drop = model.beit.layers[1].drop_path  # rate 0.5 in the last of 2 blocks
    branch = torch.ones(4000, 5, 8)
    torch.manual_seed(0)
    model.train()
    out = drop(branch)
    per_sample = out[:, 0, 0]
    assert set(out.flatten().unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert torch.equal(out, per_sample[:, None, None].expand_as(out))  # a whole sample's branch at once
    assert abs((per_sample == 0).float().mean().item() - 0.5) < 0.04
    model.eval()
    assert torch.equal(drop(branch), branch)
    # in training the logits are random; the gradient reaches every block
    model.train()
    x = torch.randn(8, 3, 32, 32)
    assert not torch.equal(model(pixel_values=x).logits, model(pixel_values=x).logits)
    model(pixel_values=x).logits.sum().backward()
    assert model.beit.layers[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_global_pool_classifies_the_normalised_mean_of_patch_tokens(mae_dir, tmp_path):
    """MAE's global_pool: classifier(fc_norm(mean of the patch tokens after the last block)); the final norm is gone."""
    folder, _ = mae_dir
    vit = load_model(ModelArguments(model_name_or_path=str(folder)), LABELS).eval()
    gap = load_model(ModelArguments(model_name_or_path=str(folder), global_pool=True), LABELS).eval()
    assert gap.config.use_mean_pooling and isinstance(gap.beit.layernorm, torch.nn.Identity)
    assert torch.equal(gap.beit.pooler.layernorm.weight, torch.ones(32))  # a new fc_norm
    _same_head(vit, gap)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.vit.embeddings(x)
        for layer in vit.vit.layers:
            tokens = layer(tokens)
        pooled = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), eps=vit.config.layer_norm_eps)
        torch.testing.assert_close(gap(pixel_values=x).logits, vit.classifier(pooled), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(gap(pixel_values=x).logits, vit(pixel_values=x).logits, atol=1e-2)
    # the masked model is a stock transformers model: a bare pipeline loads it
    from transformers import pipeline

    from neighbor_lt.modeling import crop_processor, mask_auxiliary_classes

    mask_auxiliary_classes(gap, 2).save_pretrained(tmp_path / "out")
    crop_processor(32).save_pretrained(tmp_path / "out")
    preds = pipeline("image-classification", model=str(tmp_path / "out"), device="cpu")(Image.new("RGB", (40, 30)))
    assert {p["label"] for p in preds} == {"cat", "dog"}


def test_drop_path_and_global_pool_elsewhere(tmp_path):
    vit = ModelArguments(model_type="vit", image_size=32, config_overrides="hidden_size=32,num_hidden_layers=1")
    with pytest.raises(ConfigError, match="drop_path_rate: transformers' 'vit' models have no stochastic depth"):
        load_model(ModelArguments(**{**vit.__dict__, "drop_path_rate": 0.1}), LABELS)
    with pytest.raises(ConfigError, match="global_pool applies to the fine-tuning of an MAE checkpoint"):
        load_model(ModelArguments(**{**vit.__dict__, "global_pool": True}), LABELS)
    dinov2 = ModelArguments(model_type="dinov2", image_size=32, drop_path_rate=0.2,
                            config_overrides="hidden_size=32,num_hidden_layers=2,num_attention_heads=2,patch_size=8")  # fmt: skip
    assert load_model(dinov2, LABELS).config.drop_path_rate == 0.2
