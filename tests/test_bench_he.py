"""Pure helpers of the HE benchmark: how a streamed import is cut into blocks, and timing summaries."""

from __future__ import annotations

import numpy as np

from veilface.bench.he import (
    block_indices,
    identity_centres,
    live_templates,
    noisy_templates,
    synthetic_gallery,
)
from veilface.bench.matcher_pool import summary


def test_block_indices_cover_the_import_in_order_one_block_each():
    chunks = list(block_indices(10, 4))
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_live_templates_map_block_and_slot_to_the_template():
    live = live_templates(10, 4)
    assert len(live) == 10 and live[(0, 0)] == 0 and live[(2, 1)] == 9 and (2, 2) not in live


def test_streamed_templates_are_the_gallery_of_one_draw():
    whole, centres, owner = synthetic_gallery(40, 16, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    streamed_centres = identity_centres(40, 16, rng)
    streamed = np.vstack([noisy_templates(streamed_centres, i, rng) for i in block_indices(40, 16)])
    assert np.allclose(streamed, whole) and np.array_equal(owner, np.arange(40) % len(centres))


def test_summary():
    assert summary([3.0, 1.0, 2.0, 6.0]) == {"p50": 2.5, "mean": 3.0, "max": 6.0}
