"""The HE benchmark: its pure helpers (how a streamed import is cut into blocks, timing summaries)
and one small run end to end."""

from __future__ import annotations

import json
import tempfile

import numpy as np

from veilface.bench.he import (
    block_indices,
    identity_centres,
    live_templates,
    main,
    noisy_templates,
    synthetic_gallery,
)
from veilface.bench.matcher_pool import summary
from veilface.search.layout import baby_steps_for


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


def test_the_bench_runs_end_to_end_and_reports_the_block_time_of_each_layout(tmp_path, monkeypatch):
    """A small run of ``python -m veilface.bench.he``: scores within 1e-4 of plaintext, and the block
    throughput of the gallery's own layout, the single-step one and a 2^20 gallery's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the bench's keys and SQLite file
    out = tmp_path / "he.json"
    main(f"--gallery 64 --dim 256 --queries 2 --delta 4 --naive-sample 2 --out {out}".split())
    report = json.loads(out.read_text())
    assert report["max_abs_error"] <= 1e-4 and report["topk_agreement"] == 1.0
    assert report["baby_steps"] == [baby_steps_for(256, 1)]
    assert report["baby_steps_2p20"] == baby_steps_for(256, 2**20 // report["block_capacity"])
    for field in (
        "templates_per_s_per_core",
        "templates_per_s_per_core_single_step",
        "templates_per_s_per_core_2p20_layout",
    ):
        assert report[field] > 0, field
