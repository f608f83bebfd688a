"""A read-key holder who asks many questions: what the answers say and how many are answered.

A second gateway with the default limits (except the per-subject verify limit, lowered to 3 to
keep the test short) runs on the session stack's database, Redis and workers. Read keys get
the decision and at most ``read_top_k_max`` candidates at or above the threshold, rounded to
2 decimals; eval and admin keys get full precision; a mosaic of many faces gets at most
``max_faces_per_request`` searches; requests per key, verifications per subject and failed
logins per address are limited with 429 and ``Retry-After``; a read CompreFace key creates no
gallery. The least-squares template reconstruction that rebuilt a template from 500 answers
(cosine 1.00) gets nothing usable from a read key. ``docs/reliability.md`` has the figures.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from sqlalchemy import func, select

from tests.support import UNTHROTTLED, cli_api_key, enroll_main_face, gateway_process, mosaic, needs_markers
from veilface.api.ratelimit import WINDOW_S
from veilface.config import load_settings
from veilface.face.pipeline import FacePipeline
from veilface.models.registry import ModelRegistry
from veilface.store import galleries as store
from veilface.store.apikeys import create_api_key
from veilface.store.db import make_engine, session_factory, session_scope
from veilface.store.models import ApiKey, AuditEntry, Gallery

pytestmark = pytest.mark.stack

GALLERY = "read-limits"
VICTIM = "victim"
#: Other photos of the victim enrolled under other names: more than 5 candidates above the threshold.
ALIASES = 6
OTHERS = 4
SUBJECT_VERIFY_LIMIT = 3
PROBES = 500
DEFAULTS = load_settings({})


@dataclass
class Setup:
    url: str
    sessions: object
    redis_url: str
    read: str
    eval: str
    admin: str
    #: (photo enrolled as VICTIM, a photo of the victim enrolled nowhere)
    victim: tuple[Path, Path]
    #: A gallery subject who is not the victim, and a photo of someone else.
    other: str
    stranger: Path
    threshold: float

    def post(self, path: str, key: str, photo: bytes, **params) -> requests.Response:
        return requests.post(
            f"{self.url}{path}",
            headers={"X-API-Key": key},
            files=[("image", ("x.jpg", photo))],
            params=params,
            timeout=120,
        )


@pytest.fixture(scope="module")
@needs_markers("stack")
def setup(stack, mysql_redis_env, admin_headers, lfw_people, tmp_path_factory) -> Iterator[Setup]:
    """The gallery (victim, 6 aliases, 4 others), keys of each scope and the limited gateway."""
    settings = load_settings(mysql_redis_env)
    sessions = session_factory(make_engine(settings))
    victim = next(p for p in lfw_people[200:] if len(p) >= ALIASES + 2)
    others = [p for p in lfw_people[300:] if p[0].parent != victim[0].parent][:OTHERS]
    enroll_main_face(stack, admin_headers, victim[0], GALLERY, VICTIM)
    for n, photo in enumerate(victim[1 : ALIASES + 1], 1):
        enroll_main_face(stack, admin_headers, photo, GALLERY, f"alias-{n}")
    for people in others:
        enroll_main_face(stack, admin_headers, people[0], GALLERY)
    with session_scope(sessions) as session:
        read = create_api_key(session, "read-limits-read", "read")
    evaluation = cli_api_key(mysql_redis_env, "--name", "read-limits-eval", "--scope", "eval")
    env = {k: v for k, v in mysql_redis_env.items() if k not in UNTHROTTLED}
    env["VEILFACE_SUBJECT_VERIFY_PER_MINUTE"] = str(SUBJECT_VERIFY_LIMIT)
    with gateway_process(env, tmp_path_factory.mktemp("read-limits") / "gateway.log") as url:
        yield Setup(
            url,
            sessions,
            mysql_redis_env["VEILFACE_BROKER_URL"],
            read,
            evaluation,
            admin_headers["X-API-Key"],
            (victim[0], victim[ALIASES + 1]),
            others[0][0].parent.name,
            lfw_people[400][0],
            ModelRegistry(settings).active().threshold,
        )
    with session_scope(sessions) as session:
        for gallery in session.scalars(select(Gallery).where(Gallery.name.like(f"{GALLERY}%"))):
            store.delete_gallery(session, gallery)
        for row in session.scalars(select(ApiKey).where(ApiKey.name.like("read-limits-%"))):
            session.delete(row)


def _new_window(room_s: float) -> None:
    """Wait for the next one-minute limit window if fewer than ``room_s`` seconds are left of this one."""
    left = WINDOW_S - time.time() % WINDOW_S
    if left < room_s:
        time.sleep(left + 0.5)


def _rounded(value: float) -> bool:
    return value == round(value, 2)


# -- what an answer says -----------------------------------------------------------------------


def test_read_key_gets_the_decision_and_few_rounded_candidates(setup: Setup):
    query = setup.victim[1].read_bytes()
    path = f"/v1/galleries/{GALLERY}/identify"
    read = setup.post(path, setup.read, query, top_k=100, threshold=-1)
    assert read.status_code == 200, read.text
    face = read.json()["faces"][0]
    assert face["match"] in {VICTIM, *(f"alias-{n}" for n in range(1, ALIASES + 1))}
    assert all(c["similarity"] >= setup.threshold and _rounded(c["similarity"]) for c in face["candidates"])

    for key in (setup.eval, setup.admin):
        full = setup.post(path, key, query, top_k=100).json()["faces"][0]
        assert full["match"] == face["match"]
        assert len(full["candidates"]) == 1 + ALIASES + OTHERS
        assert any(c["similarity"] < setup.threshold for c in full["candidates"])
        assert not all(_rounded(c["similarity"]) for c in full["candidates"])
    # Most of the victim's seven subjects pass the threshold, yet 5 are shown; a threshold of -1
    # did not lower the cut.
    above = [c for c in full["candidates"] if c["similarity"] >= setup.threshold]
    assert len(above) > DEFAULTS.read_top_k_max == 5
    assert [c["subject"] for c in face["candidates"]] == [c["subject"] for c in above[:5]]

    stranger = setup.post(path, setup.read, setup.stranger.read_bytes(), top_k=100).json()["faces"][0]
    assert stranger["match"] is None and stranger["candidates"] == []


def test_read_key_verification_says_the_decision_only(setup: Setup):
    def verify(subject: str, key: str, photo: Path) -> dict:
        path = f"/v1/galleries/{GALLERY}/subjects/{subject}/verify"
        return setup.post(path, key, photo.read_bytes()).json()

    no = verify(setup.other, setup.read, setup.stranger)
    assert no == {"match": False, "similarity": None, "threshold": setup.threshold}
    yes = verify(VICTIM, setup.read, setup.victim[1])
    assert yes["match"] is True and _rounded(yes["similarity"])
    full = verify("alias-1", setup.eval, setup.stranger)
    assert full["match"] is False and isinstance(full["similarity"], float)


# -- a photo of many faces ---------------------------------------------------------------------


def test_a_mosaic_gets_at_most_the_capped_number_of_searches(setup: Setup, lfw_people):
    image = mosaic([setup.victim[1], *(p[0] for p in lfw_people[500:524])])
    r = setup.post(f"/v1/galleries/{GALLERY}/identify", setup.read, image, top_k=100)
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    searched = [f for f in faces if "quality_reason" not in f]
    skipped = [f for f in faces if f.get("quality_reason") == "not_searched"]
    assert len(faces) > DEFAULTS.max_faces_per_request, f"only {len(faces)} faces found in the mosaic"
    assert len(searched) == DEFAULTS.max_faces_per_request == 10 and "quality_reason" not in faces[0]
    assert skipped and all(f["candidates"] == [] and f["match"] is None for f in skipped)
    assert all(len(f["candidates"]) <= 5 for f in searched)

    # The same through the CompreFace API, with a read key bound to the gallery.
    with session_scope(setup.sessions) as session:
        bound = create_api_key(session, "read-limits-cf", "read", gallery=GALLERY, key=str(uuid.uuid4()))
    answer = requests.post(
        f"{setup.url}/api/v1/recognition/recognize",
        headers={"x-api-key": bound},
        files=[("file", ("x.jpg", image))],
        params={"prediction_count": 100},
        timeout=120,
    ).json()
    notes = [f.get("note") for f in answer["result"]]
    assert notes.count("face not matched: not_searched") == len(skipped), answer
    for face in answer["result"]:
        assert len(face["subjects"]) <= 5 and all(_rounded(s["similarity"]) for s in face["subjects"])
        threshold = (1 + setup.threshold) / 2
        assert all(s["similarity"] >= round(threshold, 2) for s in face["subjects"])


# -- limits: per key, per subject, per client address -------------------------------------------


def test_rate_limit_is_on_by_default_for_read_keys(setup: Setup):
    with session_scope(setup.sessions) as session:
        key = create_api_key(session, "read-limits-burst", "read")
    _new_window(room_s=40)
    statuses, retry_after = [], None
    for _ in range(DEFAULTS.rate_limit_per_minute + 3):
        r = requests.get(f"{setup.url}/v1/galleries", headers={"X-API-Key": key}, timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited"
            retry_after = int(r.headers["Retry-After"])
    assert statuses == [200] * 120 + [429] * 3
    assert retry_after is not None and 1 <= retry_after <= WINDOW_S
    # Admin keys are not limited (they enroll in bulk; benchmarks and the demo use them).
    admin = requests.get(f"{setup.url}/v1/galleries", headers={"X-API-Key": setup.admin}, timeout=30)
    assert admin.status_code == 200


def test_verifications_of_one_subject_are_limited_across_keys(setup: Setup):
    with session_scope(setup.sessions) as session:
        first, second = (create_api_key(session, f"read-limits-verify-{n}", "read") for n in (1, 2))
    path = f"/v1/galleries/{GALLERY}/subjects/alias-2/verify"
    photo = setup.victim[1].read_bytes()
    _new_window(room_s=30)
    answers = [setup.post(path, key, photo) for key in (first, second, first, second)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.text for r in answers]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= WINDOW_S
    # Another subject, and an admin key, are not held back.
    assert setup.post(f"/v1/galleries/{GALLERY}/subjects/alias-3/verify", first, photo).status_code == 200
    assert setup.post(path, setup.admin, photo).status_code == 200


@pytest.fixture
def auth_counts(setup: Setup) -> Iterator[None]:
    """Forgets the failed-login counts of this test's address afterwards, so that later tests may log in."""
    yield
    client = redis.Redis.from_url(setup.redis_url)
    for name in client.scan_iter("veilface:ratelimit:auth:*"):
        client.delete(name)


def test_failed_logins_are_limited_per_address_and_audited(setup: Setup, auth_counts):
    with session_scope(setup.sessions) as session:
        start = session.scalar(select(func.max(AuditEntry.id))) or 0
    _new_window(room_s=30)
    limit = DEFAULTS.auth_failures_per_minute
    statuses = []
    for _ in range(limit + 2):
        guess = {"X-API-Key": "guess-" + uuid.uuid4().hex}
        r = requests.get(f"{setup.url}/v1/galleries", headers=guess, timeout=30)
        statuses.append(r.status_code)
    assert statuses == [401] * limit + [429] * 2
    assert 1 <= int(r.headers["Retry-After"]) <= WINDOW_S and r.json()["error"]["code"] == "rate_limited"
    # While the address is refused, even a live key from it is (a guess must not learn it was right).
    live = requests.get(f"{setup.url}/v1/galleries", headers={"X-API-Key": setup.read}, timeout=30)
    assert live.status_code == 429
    with session_scope(setup.sessions) as session:
        entries = session.execute(
            select(AuditEntry.api_key_id, AuditEntry.action, AuditEntry.outcome).where(AuditEntry.id > start)
        ).all()
    assert entries.count((None, "authenticate", "unauthorized")) == limit


def test_read_compreface_key_creates_no_gallery(setup: Setup):
    gallery = f"{GALLERY}-never"
    with session_scope(setup.sessions) as session:
        key = create_api_key(session, "read-limits-cf-new", "read", gallery=gallery, key=str(uuid.uuid4()))
    headers = {"x-api-key": key}
    listing = requests.get(f"{setup.url}/api/v1/recognition/subjects", headers=headers, timeout=30)
    recognize = requests.post(
        f"{setup.url}/api/v1/recognition/recognize",
        headers=headers,
        files=[("file", ("x.jpg", setup.stranger.read_bytes()))],
        timeout=120,
    )
    for r in (listing, recognize):
        assert r.status_code == 403 and r.json()["code"] == 32, r.text
    with session_scope(setup.sessions) as session:
        assert session.scalar(select(Gallery).where(Gallery.name == gallery)) is None


# -- the attack: rebuild the victim's template from the answers' scores --------------------------


def _ask(setup: Setup, key: str, photo: Path) -> tuple[int, float | None]:
    """One identification: its status and the victim's similarity, if the answer shows it."""
    r = setup.post(f"/v1/galleries/{GALLERY}/identify", key, photo.read_bytes(), top_k=100)
    if r.status_code != 200:
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= WINDOW_S, r.text
        return 429, None
    faces = r.json()["faces"]
    shown = {c["subject"]: c["similarity"] for c in (faces[0]["candidates"] if faces else [])}
    return 200, shown.get(VICTIM)


def _ask_all(setup: Setup, key: str, photos: list[Path]) -> list[tuple[int, float | None]]:
    """Every question as fast as 4 clients can ask, without waiting after a 429."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda photo: _ask(setup, key, photo), photos))


def _reconstruction_cosine(rows: np.ndarray, scores: list[float | None], truth: np.ndarray) -> float:
    """Cosine of ``truth`` and the least-squares solution of ``rows @ x = scores`` (0 where none)."""
    values = np.array([0.0 if s is None else s for s in scores])
    template = np.linalg.lstsq(rows, values, rcond=None)[0]
    norm = float(np.linalg.norm(template))
    return float(template @ truth / norm) if norm else 0.0


def test_score_regression_attack_learns_nothing_with_a_read_key(setup: Setup, data_dir: Path):
    """The attacker has the model: it embeds its probe photos itself and solves P x = s for the
    victim's template x from the similarities s the gateway returns. With a read key it asks 500
    questions; up to 120 of the answered ones asked with an eval key show what full scores give."""
    victim_folder = setup.victim[0].parent.name
    folders = [f for f in sorted((data_dir / "lfw" / "images").iterdir()) if f.name != victim_folder]
    probes = [sorted(f.glob("*.jpg"))[0] for f in folders[:: len(folders) // PROBES]][:PROBES]
    started = time.monotonic()
    answers = _ask_all(setup, setup.read, probes)
    asking_s = time.monotonic() - started
    answered = [(photo, score) for photo, (code, score) in zip(probes, answers, strict=True) if code == 200]

    settings = load_settings()
    pipeline = FacePipeline.from_model(settings, ModelRegistry(settings).active())
    victim = pipeline.analyze(setup.victim[0].read_bytes())[0].embedding
    used = [
        (photo, score, faces[0].embedding)
        for photo, score in answered
        if (faces := pipeline.analyze(photo.read_bytes()))
    ]
    rows = np.array([embedding for _, _, embedding in used])
    read_cosine = _reconstruction_cosine(rows, [score for _, score, _ in used], victim)

    # Full scores for as many of the same questions as one key gets answered in a minute.
    with session_scope(setup.sessions) as session:
        evaluation = create_api_key(session, "read-limits-eval-attack", "eval")
    contrast = used[: DEFAULTS.rate_limit_per_minute]
    full = _ask_all(setup, evaluation, [photo for photo, _, _ in contrast])
    scored = [
        (row, score) for (_, _, row), (_, score) in zip(contrast, full, strict=True) if score is not None
    ]
    assert len(scored) >= 0.9 * len(contrast), full
    eval_cosine = _reconstruction_cosine(np.array([row for row, _ in scored]), [s for _, s in scored], victim)
    informative = [score for _, score in answered if score is not None]
    print(
        f"\nscore regression: {len(probes)} questions with a read key in {asking_s:.0f} s, "
        f"{len(answered)} answered, {len(probes) - len(answered)} refused (429), {len(informative)} "
        f"carrying a score of the victim: reconstruction cosine {read_cosine:.3f}; {len(scored)} of "
        f"the same questions with an eval key: {eval_cosine:.3f} (test {time.monotonic() - started:.0f} s)"
    )
    assert len(informative) <= 0.02 * PROBES
    assert read_cosine < 0.5 < eval_cosine
