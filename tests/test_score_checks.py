"""The gateway's checks on a matcher's answer (veilface.search.checks), in process."""

from __future__ import annotations

import numpy as np
import pytest

from veilface.crypto.codec import Kind
from veilface.crypto.layout import BlockLayout
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.search import checks
from veilface.search.checks import ForgedAnswer, GalleryState, ShardPlan, noise_tolerance
from veilface.search.delta import load_template, merge_groups, score_delta
from veilface.search.engine import MaskCache, prepare_probe
from veilface.search.results import ScoreResult

DIM = 128
SLOTS = 4096
CAPACITY = 2 * SLOTS
LAYOUT = BlockLayout(SLOTS, DIM)
TOLERANCE = noise_tolerance(0)
PLAN = ShardPlan("matcher1@host", DIM, frozenset({0, 2}))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("keys")
    generate_keyset(key_dir)
    return PublicContext.load(key_dir / "public.ctx"), SecretContext.load(key_dir / "secret.ctx")


def result(block_no=0, source="delta", dim=DIM, slots=(0, 1)) -> ScoreResult:
    return ScoreResult(block_no, 1, source, dim, slots, b"")


def state(counter: int = 5, versions: dict[int, int] | None = None, live=frozenset({0})) -> GalleryState:
    """A gallery whose blocks ``live`` hold a live template at slot 0."""
    return GalleryState.of(counter, {0: 3} if versions is None else versions, [(b, 0) for b in live])


def vector_with(scores: dict[int, float]) -> np.ndarray:
    """A decrypted score vector holding ``scores`` (slot -> value) and small noise elsewhere."""
    vector = np.random.default_rng(0).uniform(-1, 1, SLOTS) * (1 + 1j) * TOLERANCE / 10
    for slot, value in scores.items():
        lane, position = (int(x) for x in LAYOUT.locate(slot))
        vector[position] += 1j * value if lane else value
    return vector


def test_a_well_formed_answer_passes():
    answer = [result(0, "block", slots=(0, 5)), result(0, "delta", slots=(7,)), result(2, "delta")]
    checks.check_shard_answer(PLAN, answer, state(live={0, 2, 9}), CAPACITY)
    checks.check_shard_answer(PLAN, [], state(live={1}), CAPACITY)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ([result(0), result(1), result(2)], "not asked"),
        ([result(0), result(0, slots=(3,)), result(2)], "twice"),
        ([result(0, dim=2 * DIM), result(2)], "dim"),
        ([result(0, source="template"), result(2)], "source"),
        ([result(0)], r"no scores for block\(s\) \[2\]"),
        ([result(0, slots=(1, 0)), result(2)], "slot list"),
        ([result(0, slots=(1, 1)), result(2)], "slot list"),
        ([result(0, slots=(CAPACITY,)), result(2)], "slot list"),
        ([result(0, slots=(-1,)), result(2)], "slot list"),
        ([result(0, slots=("1",)), result(2)], "types"),
        ([result([0]), result(2)], "types"),
        ([result(True), result(2)], "types"),
    ],
)
def test_an_answer_outside_the_plan_is_refused(answer, reason):
    with pytest.raises(ForgedAnswer, match=reason):
        checks.check_shard_answer(PLAN, answer, state(live={0, 2}), CAPACITY)


def test_a_pair_answer_is_one_delta_score_of_slot_zero():
    checks.check_pair_answer([result(slots=(0,))], DIM)
    for answer in ([], [result(slots=(0,))] * 2, [result(slots=(1,))], [result(source="block", slots=(0,))]):
        with pytest.raises(ForgedAnswer):
            checks.check_pair_answer(answer, DIM)
    with pytest.raises(ForgedAnswer):
        checks.check_pair_answer([result(slots=(0,))], 2 * DIM)


def test_expected_lanes_per_source():
    gallery = GalleryState.of(CAPACITY + 3, {}, [(0, 7), (1, 2), (4, 9)])
    assert [gallery.allocated(b, CAPACITY) for b in range(5)] == [CAPACITY, 3, 0, 0, 10]
    assert gallery.live_blocks == {0, 1, 4}
    assert GalleryState.of(10, {}, []).allocated(0, CAPACITY) == 10
    # A packed block may hold a score at every allocated slot (deleted ones stay in it), with
    # the margin of its version in the database ...
    allowed, tolerance = checks.expected_lanes(result(source="block", slots=(2,)), state(), CAPACITY)
    assert list(allowed) == [0, 1, 2, 3, 4] and tolerance == noise_tolerance(3) > TOLERANCE
    # ... a delta only at the slots it scored.
    allowed, tolerance = checks.expected_lanes(result(slots=(2, 4)), state(), CAPACITY)
    assert list(allowed) == [2, 4] and tolerance == TOLERANCE
    with pytest.raises(ForgedAnswer, match="never allocated"):
        checks.expected_lanes(result(slots=(2, 5)), state(), CAPACITY)
    for versions in ({}, {0: 0}):
        with pytest.raises(ForgedAnswer, match="unknown version"):
            checks.expected_lanes(result(source="block"), state(versions=versions), CAPACITY)


def test_genuine_looking_scores_pass_and_anything_else_is_refused():
    allowed = np.array([0, 1, 40])
    genuine = vector_with({0: 0.7, 1: -1.0, 40: 1 + TOLERANCE / 2})
    checks.check_scores(LAYOUT, genuine, allowed, TOLERANCE, "x")
    for forged in ({0: 48.1}, {1: -1 - 2 * TOLERANCE}, {2: 0.01}, {SLOTS + 7: 3 * TOLERANCE}):
        with pytest.raises(ForgedAnswer):
            checks.check_scores(LAYOUT, vector_with({0: 0.5, **forged}), allowed, TOLERANCE, "x")
    with pytest.raises(ForgedAnswer, match="finite"):
        checks.check_scores(LAYOUT, vector_with({0: np.nan}), allowed, TOLERANCE, "x")


def test_a_template_relabelled_at_the_score_level_with_the_genuine_scale_fails_the_value_checks(keys):
    """The level and scale checks cannot stop a template switched all the way down to the score
    level with its scale field set to a genuine score's: its decryption fails the value checks."""
    ctx, secret = keys
    vector = np.random.default_rng(3).standard_normal(DIM)
    probe = prepare_probe(ctx, encrypt_probe(ctx, vector), DIM)
    template = load_template(ctx, encrypt_template(ctx, vector, 0), DIM)
    genuine = score_delta(ctx, merge_groups(ctx, DIM, [(0, template)]), probe, MaskCache(ctx, DIM))
    decrypted = secret.decrypt_scores(ctx.dumps(genuine, Kind.SCORE), "delta")
    checks.check_scores(LAYOUT, decrypted, np.array([0]), TOLERANCE, "pair")
    for steps in (0, 1, 77):
        stolen = ctx.rotate(ctx.copy(template), steps)
        ctx.evaluator.mod_switch_to_inplace(stolen, ctx.score_level)
        stolen.scale = genuine.scale
        decrypted = secret.decrypt_scores(ctx.dumps(stolen, Kind.SCORE), "delta")
        with pytest.raises(ForgedAnswer, match="nonzero values where no template can be"):
            checks.check_scores(LAYOUT, decrypted, np.array([0]), TOLERANCE, "pair")
