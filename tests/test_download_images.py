"""Image validation and hashing of downloaded bytes."""

import io

from PIL import Image

from neighbor_lt.retrieval.download import perceptual_hash


def test_perceptual_hash_is_imagehash_phash(jpegs):
    import io

    import imagehash  # a test dependency only: the downloader and the filters use perceptual_hash

    images = [Image.open(io.BytesIO(data)) for data in jpegs]
    images += [Image.new("RGB", (64, 64), (10, 20, 30)), Image.linear_gradient("L"), Image.new("L", (300, 200), 9)]
    images += [Image.effect_noise((500, 300), 50).convert("RGB"), Image.open(io.BytesIO(jpegs[0])).convert("RGBA")]
    for image in images:
        assert perceptual_hash(image) == str(imagehash.phash(image))


def encoded(image, fmt="JPEG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_decode_image_validates_and_resizes(jpegs):
    from neighbor_lt.retrieval.download import DownloadConfig, decode_image

    config = DownloadConfig(max_side=32, min_side=16, max_pixels=1_000_000)
    outcome, detail, image = decode_image(jpegs[0], config)  # a 64x64 JPEG, resized to 32
    assert (outcome, detail, image.size, image.mode) == ("ok", "", (32, 32), "RGB")
    assert decode_image(jpegs[0], DownloadConfig(max_side=64))[2].info["unchanged"]  # stored as downloaded
    transparent = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    outcome, _, image = decode_image(encoded(transparent, "PNG"), config)
    assert outcome == "ok" and image.getpixel((0, 0)) == (255, 255, 255)  # on white, not black
    assert decode_image(encoded(Image.new("RGB", (8, 40))), config)[:2] == ("too_small", "8x40")
    assert decode_image(encoded(Image.new("L", (2000, 1000)), "PNG"), config)[0] == "too_large"
    assert decode_image(jpegs[0][:200], config)[0] == "not_image"
    assert decode_image(b"<html>", config)[0] == "not_image"
