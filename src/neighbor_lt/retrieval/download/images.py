"""Validate downloaded bytes as an image: size limits, decompression-bomb guard, RGB conversion, resize."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from .config import DownloadConfig


def decode_image(data: bytes, config: DownloadConfig) -> tuple[str, str, Image.Image | None]:
    """Decode and validate image bytes: returns (outcome, detail, RGB image resized to ``max_side``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > config.max_pixels:
                return "too_large", f"decompression bomb guard: {width}x{height} pixels", None
            if min(width, height) < config.min_side:
                return "too_small", f"{width}x{height}", None
            if image.format == "JPEG":
                image.draft("RGB", (config.max_side, config.max_side))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return "too_large", f"decompression bomb: {e}", None
    except Exception as e:  # Pillow raises many types for truncated or non-image bytes
        return "not_image", f"{type(e).__name__}: {e}"[:200], None
    unchanged = image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= config.max_side
    unchanged = unchanged and image.size == (width, height)  # draft() may have shrunk it
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    else:
        image = image.convert("RGB")
    image.thumbnail((config.max_side, config.max_side), Image.Resampling.BICUBIC)
    image.info["unchanged"] = unchanged
    return "ok", "", image
