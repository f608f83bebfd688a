"""Who scores what: blocks over matchers (rendezvous hashing) and the probes of one search."""

from __future__ import annotations

from veilface.search.routing import assign, owner, spread_probes

WORKERS = ["matcher1@a", "matcher2@a", "matcher3@a"]


def test_each_block_goes_to_its_owner_and_a_new_worker_takes_only_its_share():
    before = assign(WORKERS[:2], range(64), key=lambda b: f"7:v1:{b}")
    after = assign(WORKERS, range(64), key=lambda b: f"7:v1:{b}")
    assert sorted(b for blocks in before.values() for b in blocks) == list(range(64))
    for worker in WORKERS[:2]:
        assert set(after[worker]) <= set(before[worker])
    assert after[WORKERS[2]], "the new worker owns some blocks"
    assert all(owner(WORKERS, f"7:v1:{b}") == w for w, blocks in after.items() for b in blocks)


def test_blocks_spread_over_several_matchers_get_every_probe():
    assignment = {"matcher1@a": [0, 2], "matcher2@a": [1], "matcher3@a": []}
    assert spread_probes(assignment, 3, "7") == [
        ("matcher1@a", [0, 2], (0, 1, 2)),
        ("matcher2@a", [1], (0, 1, 2)),
    ]


def test_one_probe_stays_with_the_owner_of_a_small_gallery():
    assignment = {"matcher1@a": [], "matcher2@a": [0], "matcher3@a": []}
    assert spread_probes(assignment, 1, "7") == [("matcher2@a", [0], (0,))]


def test_the_probes_of_a_small_gallery_are_dealt_over_the_owner_and_the_idle_matchers():
    assignment = {"matcher1@a": [], "matcher2@a": [0], "matcher3@a": []}
    two = spread_probes(assignment, 2, "7")
    assert two[0] == ("matcher2@a", [0], (0,))
    (helper, blocks, probes) = two[1]
    assert helper in {"matcher1@a", "matcher3@a"} and blocks == [0] and probes == (1,)

    five = spread_probes(assignment, 5, "7")
    assert [worker for worker, _, _ in five] == [
        "matcher2@a",
        helper,
        ({"matcher1@a", "matcher3@a"} - {helper}).pop(),
    ]
    assert sorted(i for _, _, probes in five for i in probes) == [0, 1, 2, 3, 4]
    assert all(blocks == [0] for _, blocks, _ in five)
    assert spread_probes(assignment, 5, "7") == five, "the same helpers, in the same order, every time"


def test_with_one_matcher_nothing_is_spread():
    assert spread_probes({"matcher1@a": [0]}, 4, "7") == [("matcher1@a", [0], (0, 1, 2, 3))]
