import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    Dinov2Config,
    Dinov2ForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    pipeline,
)

from neighbor_lt.configs import ModelArguments
from neighbor_lt.modeling import (
    find_classifier,
    layer_id_of,
    layerwise_param_groups,
    load_image_processor,
    load_model,
    mask_auxiliary_classes,
    num_layers_of,
)

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
LABELS = {0: "goldfish", 1: "tabby", 2: "koi", 3: "tiger cat"}  # 2 targets, 2 auxiliary


def tiny_vit(num_labels=4, id2label=LABELS):
    config = ViTConfig(**TINY, image_size=32, patch_size=8, num_labels=num_labels, id2label=id2label,
                       label2id={v: k for k, v in id2label.items()})  # fmt: skip
    return ViTForImageClassification(config)


def test_mask_keeps_target_rows_and_labels():
    torch.manual_seed(0)
    model = tiny_vit().eval()
    masked = mask_auxiliary_classes(model, 2).eval()
    assert masked.config.num_labels == 2
    assert masked.config.id2label == {0: "goldfish", 1: "tabby"}
    assert masked.config.label2id == {"goldfish": 0, "tabby": 1}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full, cut = model(pixel_values=x).logits, masked(pixel_values=x).logits
    assert cut.shape == (3, 2)
    assert torch.allclose(cut, full[:, :2])
    assert model.config.num_labels == 4  # the original is untouched
    with pytest.raises(ValueError, match="num_target_classes"):
        mask_auxiliary_classes(model, 5)


def test_masked_model_loads_in_a_bare_pipeline(tmp_path):
    torch.manual_seed(0)
    masked = mask_auxiliary_classes(tiny_vit(), 2)
    masked.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
    preds = classifier(Image.new("RGB", (64, 48), "orange"), top_k=5)
    assert {p["label"] for p in preds} == {"goldfish", "tabby"}  # auxiliary classes are gone
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-4)


def test_find_classifier_on_dinov2():
    config = Dinov2Config(**TINY, image_size=32, patch_size=8, num_labels=4)
    model = Dinov2ForImageClassification(config)
    _, attr, head = find_classifier(model)
    assert attr == "classifier" and head.in_features == 64  # CLS + mean patch token
    assert mask_auxiliary_classes(model, 3).classifier.out_features == 3


def test_load_model_from_checkpoints(tmp_path):
    # DINOv2 and CLIP through the real from_pretrained path, from tiny random checkpoints saved locally.
    dino_dir = tmp_path / "dinov2"
    Dinov2ForImageClassification(Dinov2Config(**TINY, image_size=32, patch_size=8, num_labels=7)).save_pretrained(
        dino_dir
    )
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(dino_dir)
    model = load_model(ModelArguments(model_name_or_path=str(dino_dir)), LABELS)
    assert type(model).__name__ == "Dinov2ForImageClassification"
    assert model.classifier.out_features == 4 and model.config.id2label[2] == "koi"
    processor = load_image_processor(ModelArguments(model_name_or_path=str(dino_dir), image_size=32), model)
    assert processor.size["height"] == 32

    from transformers import CLIPModel

    clip_dir = tmp_path / "clip"
    clip = CLIPConfig(
        text_config={**TINY, "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={**TINY, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(clip).save_pretrained(clip_dir)
    model = load_model(ModelArguments(model_name_or_path=str(clip_dir)), LABELS)
    assert type(model).__name__ == "CLIPForImageClassification"
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 4)


def test_scratch_model_with_overrides():
    args = ModelArguments(model_type="vit", image_size=32, config_overrides="hidden_size=32,num_hidden_layers=2,"
                          "num_attention_heads=2,intermediate_size=64,patch_size=8")  # fmt: skip
    model = load_model(args, LABELS)
    assert model.config.hidden_size == 32 and model.config.image_size == 32 and model.config.num_labels == 4


def test_layer_ids_on_real_vit_dinov2_and_clip_parameter_names():
    from transformers import CLIPForImageClassification

    vision = {**TINY, "image_size": 32, "patch_size": 8}
    models = [
        tiny_vit(),
        Dinov2ForImageClassification(Dinov2Config(**vision, num_labels=4)),
        CLIPForImageClassification(
            CLIPConfig(text_config={**TINY, "vocab_size": 99}, vision_config=vision, num_labels=4)
        ),
    ]
    for model in models:
        names = [n for n, _ in model.named_parameters()]
        assert num_layers_of(model) == 2, type(model).__name__
        ids = {n: layer_id_of(n, 2) for n in names}
        assert ids["classifier.weight"] == 3
        assert {ids[n] for n in names if ".embeddings." in n or "pre_layrnorm" in n} == {0}
        # every parameter of block i sits at depth i + 1
        block_ids = {ids[n] for n in names if ".layers.1." in n or ".layer.1." in n}
        assert block_ids == {2}, type(model).__name__
        assert sorted(set(ids.values())) == [0, 1, 2, 3]


def test_layerwise_param_groups():
    model = tiny_vit()
    assert num_layers_of(model) == 2
    groups = layerwise_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["classifier.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["vit.layers.1.mlp.fc2.weight"]["lr"] == pytest.approx(1e-3 * 0.5)
    assert by_name["vit.layers.0.mlp.fc2.weight"]["lr"] == pytest.approx(1e-3 * 0.25)
    assert by_name["vit.embeddings.patch_embeddings.projection.weight"]["lr"] == pytest.approx(1e-3 * 0.125)
    assert by_name["vit.layers.0.mlp.fc2.bias"]["weight_decay"] == 0.0
    assert by_name["vit.embeddings.cls_token"]["weight_decay"] == 0.0
    assert by_name["classifier.weight"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_mask_picks_the_head_when_a_backbone_layer_has_num_labels_outputs():
    # hidden_size == num_labels: every block's fc2 also has num_labels outputs; only the classifier is cut.
    id2label = {i: f"c{i}" for i in range(32)}
    model = tiny_vit(num_labels=32, id2label=id2label)
    masked = mask_auxiliary_classes(model, 20)
    assert masked.classifier.out_features == 20
    assert all(layer.mlp.fc2.out_features == 32 for layer in masked.vit.layers)
