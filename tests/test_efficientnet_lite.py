"""The EfficientNet-Lite0 converter against an independent plain-torch forward of the original weights.

The reference below is written from the published architecture (EfficientNet-B0's MBConv layout; Lite: ReLU6, no
squeeze-excitation, stem 32 and head 1280 fixed; TF "same" padding; BatchNorm eps 1e-3) with the parameter names of
``efficientnet_pytorch``, and loads the package's state dict with ``strict=True``: it shares no code with the
converter or with transformers.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import load_dataset
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from neighbor_lt.configs import ConfigError, ModelArguments
from neighbor_lt.efficientnet_lite import (
    SE_IDENTITY_BIAS,
    convert_efficientnet_lite0,
    convert_state_dict,
    imagenet1k_classes,
    imagenet1k_id2label,
    main,
    package_checkpoint,
)
from neighbor_lt.modeling import layerwise_param_groups, load_image_processor, load_model

# (repeats, kernel, stride, expansion, in, out) of EfficientNet-B0 / Lite0
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip


class SameConv(nn.Conv2d):
    """TF "same" padding computed from the input size (the extra pixel goes right / bottom)."""

    def forward(self, x):
        (ih, iw), (kh, kw), s = x.shape[-2:], self.weight.shape[-2:], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class RefBlock(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv, self._bn0 = SameConv(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv, self._bn2 = SameConv(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.residual else h


class RefLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, stride=2, bias=False), nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.ModuleList(
            RefBlock(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e)
            for r, k, s, e, cin, cout in STAGES
            for j in range(r)
        )
        self._conv_head, self._bn1 = SameConv(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._fc(F.relu6(self._bn1(self._conv_head(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def checkpoint():
    try:
        return package_checkpoint()
    except ConfigError as err:
        pytest.fail(f"{err} (install.sh installs it with the dev extra)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, checkpoint):
    return convert_efficientnet_lite0(str(tmp_path_factory.mktemp("lite0")))


@pytest.fixture(scope="module")
def reference(checkpoint):
    model = RefLite0()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def valid_images(tiny_imagenet_dir):
    ds = load_dataset("parquet", data_files={"valid": str(tiny_imagenet_dir / "valid-*.parquet")})["valid"]
    ds = ds.select(range(0, len(ds), len(ds) // 24))  # 24 images of 24 different classes
    return [im.convert("RGB") for im in ds["image"]], list(ds["wnid"])


def test_converted_folder_matches_the_reference_forward_on_real_images(folder, reference, valid_images):
    images, wnids = valid_images
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (len(images), 3, 224, 224)
    with torch.no_grad():
        ours, ref = model(pixel_values=pixels).logits, reference(pixels)
    assert (ours - ref).abs().max().item() < 1e-3
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    # the weights are ImageNet-1k's: most of these upsampled 64 px images get their own wnid (chance: 1 in 1000)
    predicted = [model.config.id2label[i] for i in ours.argmax(1).tolist()]
    expected = [imagenet1k_id2label()[{c["wnid"]: c["label"] for c in imagenet1k_classes()}[w]] for w in wnids]
    assert sum(p == e for p, e in zip(predicted, expected)) >= len(images) // 4  # ImageNet's mean / std: 4 of 25
    # an odd size is padded differently (transformers' fixed right / bottom pixel), an even one matches
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        assert (model(pixel_values=x).logits - reference(x)).abs().max().item() < 1e-3


def test_squeeze_excitation_is_an_exact_identity_and_stays_one_under_training(folder):
    assert torch.sigmoid(torch.tensor(SE_IDENTITY_BIAS)).item() == 1.0
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.sigmoid(torch.tensor(SE_IDENTITY_BIAS, dtype=dtype)).item() == 1.0
    model = AutoModelForImageClassification.from_pretrained(folder)
    se = model.efficientnet.encoder.blocks[5].squeeze_excite
    x = torch.randn(2, se.dim, 7, 7) * 5
    assert torch.equal(se(x), x)
    # one AdamW step of fine-tuning (layer-wise decay, weight decay) leaves every SE weight where it was
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".squeeze_excite." in n}
    head = model.classifier.weight.detach().clone()
    model.train()
    groups = layerwise_param_groups(model, lr=1e-2, weight_decay=0.05, layer_decay=0.85)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], betas=(0.9, 0.95))
    loss = F.cross_entropy(model(pixel_values=torch.randn(4, 3, 64, 64)).logits, torch.tensor([1, 2, 3, 4]))
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not torch.equal(head, model.classifier.weight)  # the step did train
    assert torch.equal(se(x), x)


def test_product_loads_the_folder_with_a_new_head_and_96_px(folder):
    args = ModelArguments(model_name_or_path=folder, image_size=96)
    model = load_model(args, {0: "goldfish", 1: "tabby", 2: "koi"})
    assert model.classifier.out_features == 3 and model.config.hidden_act == "relu6"
    original = AutoModelForImageClassification.from_pretrained(folder)
    assert torch.equal(model.efficientnet.encoder.top_conv.weight, original.efficientnet.encoder.top_conv.weight)
    processor = load_image_processor(args, model)
    assert processor.crop_size == {"height": 96, "width": 96} and list(processor.image_mean) == [0.5, 0.5, 0.5]
    groups = layerwise_param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lrs = {n: g["lr"] for g in groups for n in g["names"]}
    assert lrs["efficientnet.embeddings.convolution.weight"] < lrs["efficientnet.encoder.blocks.0.projection.project_conv.weight"] < lrs["classifier.weight"]  # fmt: skip


def test_bad_checkpoints_are_refused_with_the_key(tmp_path, checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["_blocks.1._se_reduce.weight"] = torch.zeros(4, 96, 1, 1)  # a B0 checkpoint has SE layers
    with pytest.raises(ConfigError, match="_se_reduce"):
        convert_state_dict(state)
    with pytest.raises(ConfigError, match="does not exist"):
        main([str(tmp_path / "out"), "--checkpoint", str(tmp_path / "missing.pth")])
    with pytest.raises(ConfigError, match="even"):
        main([str(tmp_path / "out"), "--image_size", "97"])
    small = {k: v for k, v in torch.load(checkpoint, map_location="cpu", weights_only=True).items() if "_fc" not in k}
    torch.save(small, tmp_path / "headless.pth")
    with pytest.raises(ConfigError, match="classifier"):
        main([str(tmp_path / "out"), "--checkpoint", str(tmp_path / "headless.pth")])


def test_imagenet_classes_are_the_1000_sorted_wnids_and_cover_tiny_imagenet(tiny_imagenet_dir):
    classes = imagenet1k_classes()
    wnids = [c["wnid"] for c in classes]
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids)
    assert len(set(imagenet1k_id2label().values())) == 1000
    tiny = {line.split("\t")[1] for line in (tiny_imagenet_dir / "classes.tsv").read_text().splitlines()[1:]}
    assert len(tiny) == 200 and tiny <= set(wnids)
    assert np.all(np.diff([c["label"] for c in classes]) == 1)


def test_freeze_blocks_trains_only_the_later_blocks_and_the_head(folder):
    args = ModelArguments(model_name_or_path=folder, freeze_blocks=12)
    model = load_model(args, {0: "goldfish", 1: "tabby"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trainable and "efficientnet.encoder.top_conv.weight" in trainable
    assert "efficientnet.encoder.blocks.12.expansion.expand_conv.weight" in trainable
    assert not any(n.startswith("efficientnet.embeddings.") for n in trainable)
    assert not any(n.startswith(f"efficientnet.encoder.blocks.{i}.") for i in range(12) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    groups = layerwise_param_groups(model, lr=1e-2, weight_decay=0.05, layer_decay=0.85)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    model.train()
    F.cross_entropy(model(pixel_values=torch.randn(4, 3, 64, 64)).logits, torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    for bad in (17, -1):
        with pytest.raises(ConfigError, match="freeze_blocks must be in 1..16"):
            load_model(ModelArguments(model_name_or_path=folder, freeze_blocks=bad), {0: "a", 1: "b"})
