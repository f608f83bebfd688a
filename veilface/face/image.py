"""Decoding of untrusted uploads into BGR pixel arrays."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from veilface.errors import ImageTooLarge, InvalidImage, VeilfaceError

#: Formats Pillow may try (JPEG includes multi-picture MPO files from phones); the rest of its plugins,
#: EPS among them, which runs Ghostscript, are refused.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_WHITE = (255, 255, 255)


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image into a BGR uint8 ``(height, width, 3)`` array.

    The header is read first and an image of more than ``max_pixels`` pixels is refused with
    :class:`~veilface.errors.ImageTooLarge` before any pixel is decoded. EXIF orientation is applied;
    grey, 16-bit, CMYK, palette and transparent images are converted (transparency over white); of an
    animation only the first frame is kept. Anything that cannot be decoded raises
    :class:`~veilface.errors.InvalidImage`; no other exception escapes.
    """
    if not data:
        raise InvalidImage("the upload is empty")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels; at most {max_pixels} are accepted")
            im.load()
            rgb = _to_rgb(ImageOps.exif_transpose(im))
            return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    except VeilfaceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has more pixels than Pillow accepts: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImage(f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})") from exc
    # Decoders of hostile files fail in many ways (OSError, ValueError, SyntaxError, struct.error,
    # EOFError, MemoryError...); all of them mean the same thing to the caller.
    except Exception as exc:
        raise InvalidImage(f"the image could not be decoded: {exc}") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _scale_to_8_bit(im)
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im if im.mode == "RGB" else im.convert("RGB")


def _scale_to_8_bit(im: Image.Image) -> Image.Image:
    """Map a single-channel 16-bit, 32-bit or float image onto 0-255 grey (Pillow would clip instead).

    16-bit images are scaled from their full range; 32-bit and float ones, whose range is not fixed,
    are stretched from their darkest to their brightest pixel.
    """
    values = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = float(values.min()), float(values.max())
    grey = (values - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8))
