"""The stack on its embedded defaults (SQLite, filesystem queue): the demo path, and every
documented bad input answered with its status and error code while the service keeps serving.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support import (
    enroll_main_face,
    faceless_jpeg,
    match_of_main_face,
    needs_markers,
    png_claiming,
    run_stack,
    stack_env,
)
from veilface.config import load_settings
from veilface.crypto.keyfiles import generate_message_keys
from veilface.crypto.params import CkksParams
from veilface.crypto.secret import generate_keyset
from veilface.local.stack import Stack
from veilface.models.projection import fit_pca
from veilface.models.registry import ModelRegistry

pytestmark = pytest.mark.stack

GALLERY = "embedded"


def test_enroll_and_identify_on_embedded_defaults(embedded_stack, admin_headers, lfw_people):
    people = lfw_people[:3]
    for photos in people:
        enroll_main_face(embedded_stack, admin_headers, photos[0], GALLERY)
    target = people[2]
    assert match_of_main_face(embedded_stack, admin_headers, target[1], GALLERY) == target[0].parent.name


@pytest.fixture(scope="module")
@needs_markers("stack")
def ensemble_stack(tmp_path_factory, key_dir: Path) -> Iterator[Stack]:
    """The embedded stack serving the ensemble version: 1024-D templates, compaction after 4."""
    var_dir = tmp_path_factory.mktemp("var-ensemble")
    env = stack_env(var_dir, key_dir, VEILFACE_RECOGNIZER="edgeface_xs_xxs")
    env["VEILFACE_COMPACTION_THRESHOLD"] = "4"
    yield from run_stack(env, var_dir)


def test_the_ensemble_version_serves_end_to_end(ensemble_stack, lfw_people):
    headers = {"X-API-Key": ensemble_stack.env["VEILFACE_BOOTSTRAP_API_KEY"]}
    people = lfw_people[100:106]
    for photos in people:
        enroll_main_face(ensemble_stack, headers, photos[0], GALLERY)
    subjects = f"{ensemble_stack.url}/v1/galleries/{GALLERY}/subjects"
    listing = requests.get(subjects, headers=headers, timeout=10).json()
    assert listing["active_model_version"] == "edgeface_xs_xxs"
    assert all(s["model_versions"] == {"edgeface_xs_xxs": 1} for s in listing["subjects"])
    # The delta passed the compaction threshold: a packed block of 1024 diagonals is searched too.
    database = ensemble_stack.env["VEILFACE_VAR_DIR"] + "/veilface.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            states = dict(
                db.execute(
                    "SELECT state, COUNT(*) FROM templates WHERE subject_id IS NOT NULL GROUP BY state"
                ).fetchall()
            )
        if states.get("packed", 0) >= 4:
            break
        time.sleep(1)
    assert states.get("packed", 0) >= 4 and sum(states.values()) == len(people), states
    for photos in people:
        assert match_of_main_face(ensemble_stack, headers, photos[1], GALLERY) == photos[0].parent.name


@pytest.fixture(scope="module")
@needs_markers("stack")
def short_keys_stack(tmp_path_factory) -> Iterator[Stack]:
    """The embedded stack serving the 1024-D default on a key set whose Galois keys serve 512-D
    templates at most (as key sets made before the ensemble became the default)."""
    key_dir = tmp_path_factory.mktemp("keys-512")
    generate_keyset(key_dir, CkksParams(max_dim=512))
    generate_message_keys(key_dir)
    var_dir = tmp_path_factory.mktemp("var-short-keys")
    yield from run_stack(stack_env(var_dir, key_dir, VEILFACE_RECOGNIZER="edgeface_xs_xxs"), var_dir)


def test_a_model_longer_than_the_keys_serve_is_refused_with_the_way_out(short_keys_stack, lfw_people):
    headers = {"X-API-Key": short_keys_stack.env["VEILFACE_BOOTSTRAP_API_KEY"]}
    photo = lfw_people[110][0]
    r = requests.post(
        f"{short_keys_stack.url}/v1/galleries/{GALLERY}/subjects/{photo.parent.name}/faces",
        headers=headers,
        files=[("image", photo.read_bytes())],
        timeout=120,
    )
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "unavailable"
    assert "1024-D templates" in error["message"] and "at most 512-D" in error["message"], error
    assert "veilface keys rotate" in error["message"], error
    subjects = f"{short_keys_stack.url}/v1/galleries/{GALLERY}/subjects"
    listing = requests.get(subjects, headers=headers, timeout=10)
    assert listing.status_code == 200 and listing.json()["subjects"] == [], listing.text  # nothing stored


def test_a_compact_gallery_serves_on_keys_too_short_for_the_full_templates(short_keys_stack, lfw_people):
    """A gallery's projection sets the template dimension: 256-D templates of the 1024-D default fit
    the 512-D key set that refuses its full templates (the embedder checks what it encrypts)."""
    headers = {"X-API-Key": short_keys_stack.env["VEILFACE_BOOTSTRAP_API_KEY"]}
    embeddings = np.random.default_rng(11).normal(size=(600, 1024))
    fitted = fit_pca("pca256", "edgeface_xs_xxs", embeddings, 256)
    replace(fitted, threshold=0.5).save(ModelRegistry(load_settings(short_keys_stack.env)).projections_path)
    url = f"{short_keys_stack.url}/v1/galleries/compact"
    r = requests.put(url, json={"projection": "pca256"}, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    photo = lfw_people[111][0]
    enroll_main_face(short_keys_stack, headers, photo, "compact")
    assert match_of_main_face(short_keys_stack, headers, photo, "compact") == photo.parent.name


BAD_INPUTS = [
    ("empty file", lambda lfw: b"", 415, "invalid_image"),
    ("text renamed .jpg", lambda lfw: b"this is not an image\n" * 20, 415, "invalid_image"),
    ("truncated JPEG", lambda lfw: lfw[0][0].read_bytes()[:600], 415, "invalid_image"),
    ("20000x20000 PNG", lambda lfw: png_claiming(20000, 20000), 413, "image_too_large"),
    ("30 MB upload", lambda lfw: b"\xff\xd8" + b"\x00" * (30 * 1024 * 1024), 413, "image_too_large"),
    ("no face", lambda lfw: faceless_jpeg(), 422, "no_face"),
]


@pytest.mark.parametrize(("what", "make", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_documented_error(embedded_stack, admin_headers, lfw_people, what, make, status, code):
    url = f"{embedded_stack.url}/v1/galleries/{GALLERY}/subjects/bad-input/faces"
    r = requests.post(url, headers=admin_headers, files=[("image", ("x.jpg", make(lfw_people)))], timeout=120)
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:200]}"
    assert r.json()["error"]["code"] == code
    assert "Traceback" not in r.text
    assert requests.get(f"{embedded_stack.url}/healthz", timeout=10).status_code == 200


def test_an_unknown_face_choice_is_refused_and_enrolls_nothing(embedded_stack, admin_headers, lfw_people):
    subjects = f"{embedded_stack.url}/v1/galleries/{GALLERY}/subjects"
    r = requests.post(
        f"{subjects}/face-choice/faces",
        headers=admin_headers,
        files=[("image", lfw_people[0][0].read_bytes())],
        params={"face": "largest"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
    assert "main" in r.json()["error"]["message"]
    assert requests.get(f"{subjects}/face-choice", headers=admin_headers, timeout=10).status_code == 404


def test_missing_or_wrong_api_key_is_401(embedded_stack):
    url = f"{embedded_stack.url}/v1/galleries"
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = requests.get(url, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_bearer_auth_and_openapi(embedded_stack, admin_headers):
    key = admin_headers["X-API-Key"]
    r = requests.get(
        f"{embedded_stack.url}/v1/galleries", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert r.status_code == 200
    spec = requests.get(f"{embedded_stack.url}/openapi.json", timeout=10).json()
    assert "/v1/galleries/{gallery}/identify" in spec["paths"]


def test_unknown_gallery_is_404(embedded_stack, admin_headers, lfw_people):
    r = requests.post(
        f"{embedded_stack.url}/v1/galleries/nope/identify",
        headers=admin_headers,
        files=[("image", lfw_people[0][0].read_bytes())],
        timeout=60,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_gallery"


def test_readyz_and_metrics(embedded_stack, admin_headers):
    assert requests.get(f"{embedded_stack.url}/readyz", timeout=10).json() == {"ready": True}
    ready = requests.get(f"{embedded_stack.url}/readyz", headers=admin_headers, timeout=10).json()
    assert ready["ready"] is True
    assert ready["checks"]["embedder"]["online"][0]["provider"] == "CPUExecutionProvider"
    metrics = requests.get(f"{embedded_stack.url}/metrics", headers=admin_headers, timeout=10).text
    assert "veilface_http_requests_total" in metrics
