"""A he-matcher that lies, for tests/test_malicious_matcher.py only.

It is the real worker (:mod:`veilface.workers.matcher`, public keys, the real database)
with its search and pair tasks replaced by versions that answer as an attacker who holds
the matcher would. Start it from the repository root with
``celery -A tests.lying_matcher worker -Q match ...``.

The lie is read at every task from the file named by ``LYING_MATCHER_MODE_FILE``:

* ``honest``: the real answer;
* ``relabel_packed``: a victim's stored template, rotated with the public Galois keys,
  switched down to the packed level and labelled a score (the attack of issue 20);
* ``relabel``: the same template switched down to the score level, its scale field set to
  the scale a genuine score has, so that only the gateway's value checks stand in the way;
* ``scale``: the real answer with its scale field divided by 48 (the decrypted scores come
  out 48 times larger: a forged match);
* ``redis``: the ``relabel`` answer written straight into the Redis result backend for
  the pending task, as anyone who can write to Redis could; the task itself answers late;
* ``shift BLOCK SLOT``: the real answer with the score of one slot raised by 0.3 (added
  homomorphically with the public keys), which keeps it inside ``[-1, 1]``: what a matcher
  that forges one decision would do. The test names the slot (a sentinel, or a face).

Lies that only a batched search allows (a search carries every face of an image; a pair
is answered honestly in these modes), for tests/test_batched_search.py:

* ``drop_probe``: the part of the last probe left out (less work, or hiding a face);
* ``duplicate_probe``: the first probe's part sent again in place of the second's (one
  search's work passed off as two);
* ``swap_probes``: the parts of the first two probes exchanged, each with its own digest
  (the first face would get the second face's candidates if parts were matched by position).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis
from sqlalchemy import select

from veilface.crypto.codec import Kind
from veilface.crypto.public import PublicContext
from veilface.messaging.messages import (
    TASK_PAIR,
    TASK_SEARCH,
    ProbeScores,
    ScoreAnswer,
    SearchAnswer,
)
from veilface.search.results import ScoreResult
from veilface.store.db import session_scope
from veilface.store.models import Template
from veilface.workers import matcher as real

app = real.app
#: How far each stolen template is rotated: a new component reaches slot 0 at every call.
_rotation = {"steps": 0}


def _mode() -> str:
    return Path(os.environ["LYING_MATCHER_MODE_FILE"]).read_text().strip()


def _context() -> PublicContext:
    return real.worker().runtime.context


def _stolen_template(dim: int, scale: float, level) -> bytes:
    """A victim's stored template ciphertext, rotated, switched down to ``level``, relabelled."""
    ctx = _context()
    with session_scope(real.worker().runtime.sessions) as session:
        blob = session.scalar(select(Template.ciphertext).where(Template.state == "delta").limit(1))
    template = ctx.loads(blob, Kind.TEMPLATE, level=ctx.top_level)
    _rotation["steps"] = (_rotation["steps"] + 1) % dim
    stolen = ctx.rotate(template, _rotation["steps"])
    ctx.evaluator.mod_switch_to_inplace(stolen, level)
    stolen.scale = scale
    return ctx.dumps(stolen, Kind.SCORE)


def _scaled(blob: bytes, factor: float) -> bytes:
    ctx = _context()
    ciphertext = ctx.loads(blob, Kind.SCORE, level=ctx.score_level, sizes=(2, 3))
    ciphertext.scale = ciphertext.scale * factor
    return ctx.dumps(ciphertext, Kind.SCORE)


def _shifted(result: ScoreResult, slot: int, amount: float) -> bytes:
    """``result``'s score ciphertext with ``amount`` added to the score of in-block ``slot``."""
    ctx = _context()
    ciphertext = ctx.loads(result.ciphertext, Kind.SCORE, level=ctx.score_level, sizes=(2, 3))
    lane, position = ctx.layout(result.dim).locate(slot)
    values = np.zeros(ctx.slots, dtype=np.complex128)
    values[position] = amount if lane == 0 else 1j * amount
    plain = ctx.encode(values, ciphertext.parms_id(), ciphertext.scale)
    ctx.evaluator.add_plain_inplace(ciphertext, plain)
    return ctx.dumps(ciphertext, Kind.SCORE)


#: The lies on the parts of a batched answer, one per probe in the request's order.
BATCH_LIES = {
    "drop_probe": lambda parts: parts[:-1],
    "duplicate_probe": lambda parts: (parts[0], parts[0], *parts[2:]),
    "swap_probes": lambda parts: (parts[1], parts[0], *parts[2:]),
}


def _lie(answer: dict, mode: str) -> dict:
    """The lying version of the honest ``answer`` (a SearchAnswer or ScoreAnswer message)."""
    if "probes" not in answer:
        if mode in BATCH_LIES:
            return answer
        honest = ScoreAnswer.from_message(answer)
        return ScoreAnswer(honest.worker, _lied_scores(honest.scores, mode)).to_message()
    batch = SearchAnswer.from_message(answer)
    if mode in BATCH_LIES:
        parts = BATCH_LIES[mode](batch.probes)
    else:
        parts = tuple(ProbeScores(p.probe_sha256, _lied_scores(p.scores, mode)) for p in batch.probes)
    return SearchAnswer(batch.worker, tuple(parts)).to_message()


def _lied_scores(scores: tuple[ScoreResult, ...], mode: str) -> tuple[ScoreResult, ...]:
    """Each of the honest ``scores`` replaced by the lie of ``mode`` (a value lie)."""
    ctx = _context()
    lied = []
    for result in scores:
        genuine = ctx.loads(result.ciphertext, Kind.SCORE, level=ctx.score_level, sizes=(2, 3))
        if mode.startswith("shift"):
            block_no, slot = map(int, mode.split()[1:])
            hit = result.block_no == block_no and slot in result.slots
            blob = _shifted(result, slot, 0.3) if hit else result.ciphertext
        elif mode == "scale":
            blob = _scaled(result.ciphertext, 1 / 48)
        else:
            level = ctx.packed_level if mode == "relabel_packed" else ctx.score_level
            blob = _stolen_template(result.dim, genuine.scale, level)
        lied.append(
            ScoreResult(result.block_no, result.block_version, result.source, result.dim, result.slots, blob)
        )
    return tuple(lied)


def _answer(task, honest: dict) -> dict:
    """``honest`` (the real task's answer, signed with this worker's name) or the lie of the mode."""
    honest = {**honest, "worker": task.request.hostname} if "worker" in honest else honest
    mode = _mode()
    if mode == "honest" or "error" in honest:
        return honest
    lied = _lie(honest, "relabel" if mode == "redis" else mode)
    if mode != "redis":
        return lied
    _write_result(task.request.id, lied)
    time.sleep(3)  # the forged result is read first; this late answer goes nowhere
    return {"error": {"code": "unavailable", "message": "late"}}


def _write_result(task_id: str, result: dict) -> None:
    """Store ``result`` as the task's result the way Celery's Redis backend does: SET, then PUBLISH."""
    key = f"celery-task-meta-{task_id}"
    meta = json.dumps(
        {
            "status": "SUCCESS",
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": task_id,
        }
    )
    client = redis.Redis.from_url(real.worker().runtime.settings.celery_result_backend)
    client.set(key, meta, ex=600)
    client.publish(key, meta)


app.tasks.unregister(TASK_SEARCH)
app.tasks.unregister(TASK_PAIR)


@app.task(name=TASK_SEARCH, bind=True, **real.TASK_OPTIONS)
def search(self, message: dict) -> dict:
    return _answer(self, real.search.run(message))


@app.task(name=TASK_PAIR, bind=True, **real.TASK_OPTIONS)
def pair(self, probe_b64: str, template_b64: str, key_set: str | None = None) -> dict:
    return _answer(self, real.pair.run(probe_b64, template_b64, key_set))
