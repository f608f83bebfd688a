"""A photo of many faces, built from real LFW photos: the mosaic of issue 20."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def mosaic(photos: list[Path], columns: int = 5, tile: int = 150) -> bytes:
    """The ``photos``, each cropped to ``tile`` pixels around its centre (where LFW puts the
    face), as one JPEG of ``columns`` tiles per row."""
    rows = -(-len(photos) // columns)
    canvas = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for n, photo in enumerate(photos):
        with Image.open(photo) as im:
            width, height = im.size
            left, top = (width - tile) // 2, (height - tile) // 2
            crop = np.asarray(im.convert("RGB").crop((left, top, left + tile, top + tile)))
        row, col = divmod(n, columns)
        canvas[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = crop
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, "JPEG", quality=92)
    return out.getvalue()
