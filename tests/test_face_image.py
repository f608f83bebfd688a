"""decode_image against ordinary and hostile uploads, all generated here from a real LFW photo."""

from __future__ import annotations

import random
import resource
import time

import numpy as np
import pytest
from PIL import Image

from tests.support import encoded, png_claiming
from veilface.config import load_settings
from veilface.errors import ImageTooLarge, InvalidImage
from veilface.face.image import decode_image

MAX_PIXELS = 40_000_000
LFW_IMAGE = load_settings().data_dir / "lfw" / "images" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"

pytestmark = pytest.mark.skipif(not LFW_IMAGE.exists(), reason="shared LFW data not available")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(LFW_IMAGE) as im:
        return im.convert("RGB")


def test_jpeg_decodes_to_bgr(photo):
    img = decode_image(LFW_IMAGE.read_bytes(), max_pixels=MAX_PIXELS)
    assert img.shape == (250, 250, 3) and img.dtype == np.uint8
    expected_bgr = np.asarray(photo)[:, :, ::-1].astype(int)
    assert np.abs(img.astype(int) - expected_bgr).mean() < 1


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is a text file renamed to photo.jpg\n", b"\xff\xd8\xff\xe0" + b"\0" * 64],
    ids=["empty", "text", "jpeg-magic-only"],
)
def test_non_images_are_invalid(data):
    with pytest.raises(InvalidImage):
        decode_image(data, max_pixels=MAX_PIXELS)


def test_truncated_jpeg_is_invalid(photo):
    data = encoded(photo, "JPEG", quality=90)
    with pytest.raises(InvalidImage, match="decoded"):
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


def test_format_outside_the_allowlist_is_invalid(photo):
    with pytest.raises(InvalidImage, match="accepted format"):
        decode_image(encoded(photo, "PPM"), max_pixels=MAX_PIXELS)


def test_png_bomb_is_refused_from_its_header_fast_and_without_memory():
    bomb = png_claiming(20_000, 20_000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, max_pixels=MAX_PIXELS)
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB


def test_limit_is_checked_before_decoding():
    with pytest.raises(ImageTooLarge, match="8000x8000 pixels; at most 40000000"):
        decode_image(png_claiming(8_000, 8_000), max_pixels=MAX_PIXELS)


def test_pillows_own_bomb_guard_also_gives_too_large():
    with pytest.raises(ImageTooLarge, match="Pillow"):
        decode_image(png_claiming(20_000, 20_000), max_pixels=10**12)


def test_real_image_over_the_limit_is_too_large():
    with pytest.raises(ImageTooLarge, match="250x250"):
        decode_image(LFW_IMAGE.read_bytes(), max_pixels=250 * 250 - 1)


def test_cmyk_jpeg_is_converted(photo):
    img = decode_image(encoded(photo.convert("CMYK"), "JPEG", quality=95), max_pixels=MAX_PIXELS)
    assert img.shape == (250, 250, 3)
    assert np.abs(img.astype(int) - np.asarray(photo)[:, :, ::-1]).mean() < 8


def test_grayscale_jpeg_gets_three_channels(photo):
    img = decode_image(encoded(photo.convert("L"), "JPEG"), max_pixels=MAX_PIXELS)
    assert img.shape == (250, 250, 3)
    assert np.array_equal(img[:, :, 0], img[:, :, 2])


def test_16_bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256 * 32).astype(np.uint16).reshape(32, 256)
    img = decode_image(encoded(Image.fromarray(ramp), "PNG"), max_pixels=MAX_PIXELS)
    assert img.shape == (32, 256, 3)
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
    assert 120 <= img[16, 128, 0] <= 135


def test_animated_gif_keeps_the_first_frame():
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))
    data = encoded(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    img = decode_image(data, max_pixels=MAX_PIXELS)
    assert img.shape == (30, 40, 3)
    assert tuple(img[15, 20]) == (0, 0, 255)  # red, in BGR


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after a 90 degree clockwise turn
    img = decode_image(encoded(im, "JPEG", exif=exif.tobytes(), quality=95), max_pixels=MAX_PIXELS)
    assert img.shape == (60, 20, 3)
    assert img[2, 10].min() > 200 and img[-3, 10].max() < 50  # the band is now at the top


def test_webp_is_supported(photo):
    img = decode_image(encoded(photo, "WEBP", quality=90), max_pixels=MAX_PIXELS)
    assert img.shape == (250, 250, 3)


def test_transparency_is_flattened_on_white():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (0, 0, 10, 10))
    for im in (rgba, rgba.convert("P")):
        img = decode_image(encoded(im, "PNG"), max_pixels=MAX_PIXELS)
        assert tuple(img[5, 2]) == (0, 255, 0) and tuple(img[5, 15]) == (255, 255, 255)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_files_only_raise_our_errors(photo):
    """Random byte flips in real files must end in a decoded image or InvalidImage, nothing else."""
    rng = random.Random(1234)
    originals = [encoded(photo.resize((64, 64)), fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF")]
    for _ in range(300):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            img = decode_image(bytes(data[: rng.randint(8, len(data))]), max_pixels=MAX_PIXELS)
        except (InvalidImage, ImageTooLarge):
            continue
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
