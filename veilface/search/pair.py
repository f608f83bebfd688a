"""The 1:1 kernel: one probe scored against one template ciphertext, with public keys only.

The he-matcher answers a comparison with it and the encrypted evaluation
(:mod:`veilface.eval.encrypted`) measures it, so both compute exactly the same thing.
"""

from __future__ import annotations

from veilface.crypto.codec import Kind, peek_dim
from veilface.crypto.public import PublicContext
from veilface.search.delta import load_template, merge_groups, score_delta
from veilface.search.engine import MaskCache, prepare_probe
from veilface.search.results import ScoreResult


def score_pair(ctx: PublicContext, probe: bytes, template: bytes) -> ScoreResult:
    """The encrypted score of ``probe`` against a template encrypted in slot 0.

    The template is scored as a delta of one (block 0, version 0, slot 0), the result the
    gateway decrypts for a 1:1 comparison; the dimension is the probe's.
    """
    dim = peek_dim(probe)
    groups = merge_groups(ctx, dim, [(0, load_template(ctx, template, dim))])
    scores = score_delta(ctx, groups, prepare_probe(ctx, probe, dim), MaskCache(ctx, dim))
    return ScoreResult(0, 0, "delta", dim, (0,), ctx.dumps(scores, Kind.SCORE))
