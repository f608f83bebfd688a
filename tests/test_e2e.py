"""End to end through HTTP on MariaDB + Redis: enroll 50 LFW identities, identify, delete,
then scan every table, Redis key, log and temporary file for an embedding, a photo or the secret key.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import leaks
from tests.support import REDIS_URL
from veilface.config import load_settings
from veilface.face.pipeline import FacePipeline
from veilface.models.registry import ModelRegistry

pytestmark = pytest.mark.stack

GALLERY = "lfw-e2e"
N_IDENTITIES = 50


def _post(stack, path: str, headers: dict, files: list[tuple[str, Path]], **params) -> requests.Response:
    opened = [(field, (p.name, p.read_bytes(), "image/jpeg")) for field, p in files]
    return requests.post(f"{stack.url}{path}", headers=headers, files=opened, params=params, timeout=120)


@pytest.fixture(scope="module")
def enrolled(stack, admin_headers, lfw_people) -> list[list[Path]]:
    people = lfw_people[:N_IDENTITIES]
    for photos in people:
        subject = photos[0].parent.name
        r = _post(
            stack,
            f"/v1/galleries/{GALLERY}/subjects/{subject}/faces",
            admin_headers,
            [("image", photos[0])],
            face="main",
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["subject"] == subject and body["enrolled"] == 1 and len(body["template_ids"]) == 1
    return people


def test_identify_top1_on_50_lfw_identities(stack, admin_headers, enrolled):
    correct = 0
    for photos in enrolled:
        r = _post(stack, f"/v1/galleries/{GALLERY}/identify", admin_headers, [("image", photos[1])])
        assert r.status_code == 200, r.text
        faces = r.json()["faces"]
        assert faces, f"no face found in {photos[1].name}"
        best = faces[0]  # the main face is listed first
        correct += bool(best["candidates"]) and best["candidates"][0]["subject"] == photos[0].parent.name
        assert all(-1.0001 <= c["similarity"] <= 1.0001 for c in best["candidates"])
    assert correct >= 48, f"top-1 correct on {correct} of {len(enrolled)}"


def test_enrollment_is_idempotent(stack, admin_headers, enrolled):
    photos = enrolled[0]
    path = f"/v1/galleries/{GALLERY}/subjects/{photos[0].parent.name}/faces"
    first = _post(stack, path, admin_headers, [("image", photos[0])], face="main").json()
    again = _post(stack, path, admin_headers, [("image", photos[0])], face="main").json()
    assert first["template_ids"] == again["template_ids"]
    subject = requests.get(f"{stack.url}{path[:-6]}", headers=admin_headers, timeout=30).json()
    assert len(subject["templates"]) == 1


def test_deleted_subject_no_longer_matches(stack, admin_headers, enrolled):
    victim = enrolled[1]
    name = victim[0].parent.name
    r = requests.delete(
        f"{stack.url}/v1/galleries/{GALLERY}/subjects/{name}", headers=admin_headers, timeout=30
    )
    assert r.status_code == 200 and r.json()["deleted_templates"] == 1
    r = _post(stack, f"/v1/galleries/{GALLERY}/identify", admin_headers, [("image", victim[1])])
    assert r.status_code == 200
    for face in r.json()["faces"]:
        assert face["match"] != name
        assert name not in {c["subject"] for c in face["candidates"]}
    r = requests.get(f"{stack.url}/v1/galleries/{GALLERY}/subjects/{name}", headers=admin_headers, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_subject"


def test_verify_endpoints(stack, admin_headers, enrolled):
    same, other = enrolled[2], enrolled[3]
    r = _post(
        stack,
        f"/v1/galleries/{GALLERY}/subjects/{same[0].parent.name}/verify",
        admin_headers,
        [("image", same[1])],
    )
    assert r.status_code == 200, r.text
    assert r.json()["match"] is True
    r = _post(
        stack,
        f"/v1/galleries/{GALLERY}/subjects/{same[0].parent.name}/verify",
        admin_headers,
        [("image", other[1])],
    )
    assert r.json()["match"] is False
    r = _post(stack, "/v1/verify", admin_headers, [("image1", same[0]), ("image2", same[1])])
    assert r.status_code == 200, r.text
    assert r.json()["match"] is True
    r = _post(stack, "/v1/verify", admin_headers, [("image1", same[0]), ("image2", other[0])])
    assert r.json()["match"] is False and r.json()["similarity"] < r.json()["threshold"]


def test_listing(stack, admin_headers, enrolled):
    galleries = requests.get(f"{stack.url}/v1/galleries", headers=admin_headers, timeout=30).json()[
        "galleries"
    ]
    assert any(g["name"] == GALLERY and g["subjects"] >= N_IDENTITIES - 1 for g in galleries)
    body = requests.get(
        f"{stack.url}/v1/galleries/{GALLERY}/subjects", headers=admin_headers, timeout=30
    ).json()
    assert {s["subject"] for s in body["subjects"]} >= {p[0].parent.name for p in enrolled[2:]}
    assert not any(s["needs_reenrollment"] for s in body["subjects"])


# -- the dump test ----------------------------------------------------------------------


def test_dump_holds_no_embedding_photo_or_secret_key(stack, mysql_redis_env, enrolled):
    """After the session's API tests (attacks, CompreFace, console, this module) ran on the shared
    stack: every MariaDB row, Redis value and file the services wrote (logs, temporary files: the
    stack's TMPDIR is inside its var folder) is free of embeddings, photos and the secret key."""
    settings = load_settings(mysql_redis_env)
    pipeline = FacePipeline.from_model(settings, ModelRegistry(settings).active())
    photos = [photo for people in enrolled[:20] for photo in people[:2]]
    vectors = np.array([face.embedding for photo in photos for face in pipeline.analyze(photo.read_bytes())])
    needles = leaks.needles([*photos, settings.secret_context_path])
    secret = settings.secret_context_path.read_bytes()
    # The scanner finds what it looks for, raw or wrapped.
    assert leaks.leak(vectors[3].astype(np.float32).tobytes(), vectors, needles)
    assert leaks.leak(json.dumps(vectors[4].tolist()).encode(), vectors, needles)
    assert leaks.leak(base64.b64encode(photos[5].read_bytes()), vectors, needles)
    assert leaks.leak(b"log line " + secret[len(secret) // 2 - 100 :][:4096], vectors, needles)

    assert not settings.secret_context_path.is_relative_to(settings.var_dir)  # the key lives elsewhere
    written = [path for path in settings.var_dir.rglob("*") if path.is_file()]
    assert any(path.suffix == ".log" for path in written)
    scanned, found = leaks.scan_dump(
        vectors,
        needles,
        database_url=mysql_redis_env["VEILFACE_DATABASE_URL"],
        redis_url=REDIS_URL,
        files=written,
    )
    assert found == []
    assert scanned > N_IDENTITIES
