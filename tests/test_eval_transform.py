"""The evaluation transform: shorter side resized, then a center crop, as the checkpoints' own processors do.

Each processor is built with the settings of its checkpoint's ``preprocessor_config.json`` (no download):
facebook/dinov2-base (BitImageProcessor, shortest edge 256, crop 224, bicubic, ImageNet mean / std),
openai/clip-vit-base-patch16 (CLIPImageProcessor, shortest edge 224, crop 224, bicubic, CLIP mean / std) and
google/vit-base-patch16-224 (ViTImageProcessor, 224 x 224 squash, bilinear, mean / std 0.5).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    Dinov2Config,
    Dinov2ForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from neighbor_lt.augment import ImageTransform, ProcessorTransform
from neighbor_lt.configs import ConfigError, ModelArguments
from neighbor_lt.modeling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_processor,
    load_image_processor,
    processor_crop_pct,
)

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def dinov2_processor():
    return BitImageProcessorPil(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    )  # fmt: skip


def clip_processor():
    return CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )  # fmt: skip


def vit_processor():
    return ViTImageProcessorPil(
        size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


@pytest.fixture(scope="module")
def image():
    """A non-square image with detail everywhere (a squash and a crop give different pixels)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (301, 457, 3), dtype=np.uint8))


def _checkpoint(folder, processor):
    model = Dinov2ForImageClassification(Dinov2Config(**TINY, image_size=224, patch_size=16, num_labels=3))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


def _pixels(processor, image):
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("make, pct", [(dinov2_processor, 224 / 256), (clip_processor, 1.0)])
def test_cropping_checkpoints_are_evaluated_as_their_own_processor(tmp_path, image, make, pct):
    """image_size 224 (as the paper configs set it) keeps the checkpoint's protocol instead of squashing to 224."""
    own = make()
    model = _checkpoint(tmp_path, own)
    ours = load_image_processor(ModelArguments(model_name_or_path=str(tmp_path), image_size=224), model)
    assert processor_crop_pct(ours) == pytest.approx(pct)
    reference = _pixels(own, image)
    torch.testing.assert_close(ProcessorTransform(ours)(image), reference, atol=0, rtol=0)
    # the PIL transform of MAE evaluation and the feature plots gives the same tensor
    mean, std = own.image_mean, own.image_std
    torch.testing.assert_close(ImageTransform(224, mean, std, crop_pct=pct)(image), reference, atol=1e-6, rtol=0)
    # what image_size used to give: the whole image squashed to 224 x 224, a different tensor
    squashed = make()
    squashed.size, squashed.crop_size = {"height": 224, "width": 224}, {"height": 224, "width": 224}
    assert (_pixels(squashed, image) - reference).abs().max() > 0.5


def test_a_smaller_image_size_keeps_the_checkpoints_crop_pct(tmp_path, image):
    model = _checkpoint(tmp_path, dinov2_processor())
    ours = load_image_processor(ModelArguments(model_name_or_path=str(tmp_path), image_size=112), model)
    reference = BitImageProcessorPil(
        size={"shortest_edge": 128}, crop_size={"height": 112, "width": 112}, resample=3,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    )  # fmt: skip
    torch.testing.assert_close(_pixels(ours, image), _pixels(reference, image), atol=0, rtol=0)
    # an explicit crop_pct wins over the checkpoint's
    full = load_image_processor(ModelArguments(model_name_or_path=str(tmp_path), image_size=112), model, crop_pct=1.0)
    assert _pixels(full, image).shape == (3, 112, 112) and processor_crop_pct(full) == 1.0
    assert not torch.equal(_pixels(full, image), _pixels(reference, image))


def test_a_squashing_checkpoint_gets_a_center_crop_of_0875(tmp_path, image):
    """ViT's (and MAE's) processor squashes; evaluation crops 224 from the shorter side resized to 256, with the
    checkpoint's own mean, std and filter."""
    model = ViTForImageClassification(ViTConfig(**TINY, image_size=224, patch_size=16, num_labels=3))
    model.save_pretrained(tmp_path)
    vit_processor().save_pretrained(tmp_path)
    ours = load_image_processor(ModelArguments(model_name_or_path=str(tmp_path)), model)
    assert processor_crop_pct(ours) == 0.875
    # reference: PIL's own resize and crop, then the checkpoint's processor (a 224 x 224 input passes unchanged)
    w, h = image.size
    resized = image.resize((int(256 * w / h), 256), Image.BILINEAR)
    left = (resized.width - 224) // 2
    cropped = resized.crop((left, 16, left + 224, 240))
    reference = _pixels(vit_processor(), cropped)
    torch.testing.assert_close(ProcessorTransform(ours)(image), reference, atol=0, rtol=0)
    assert (_pixels(vit_processor(), image) - reference).abs().max() > 0.5  # the squash differs
    tf = ImageTransform(224, (0.5,) * 3, (0.5,) * 3, resample=Image.BILINEAR)
    torch.testing.assert_close(tf(image), reference, atol=1e-6, rtol=0)


def test_scratch_processor_round_trips_and_keeps_the_size(tmp_path, image):
    model = ViTForImageClassification(ViTConfig(**TINY, image_size=64, patch_size=8, num_labels=3))
    processor = load_image_processor(ModelArguments(model_type="vit", image_size=64), model)
    assert processor.size["height"] == 64 and processor_crop_pct(processor) == 0.875
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor_crop_pct(loaded) == 0.875
    torch.testing.assert_close(_pixels(loaded, image), _pixels(processor, image), atol=0, rtol=0)
    torch.testing.assert_close(
        _pixels(processor, image), ImageTransform(64, IMAGENET_MEAN, IMAGENET_STD)(image), atol=1e-6, rtol=0
    )
    tall = image.transpose(Image.Transpose.ROTATE_90)  # the shorter side is the width now
    torch.testing.assert_close(
        _pixels(processor, tall), ImageTransform(64, IMAGENET_MEAN, IMAGENET_STD)(tall), atol=1e-6, rtol=0
    )
    with pytest.raises(ConfigError, match="crop_pct"):
        crop_processor(64, crop_pct=1.5)
