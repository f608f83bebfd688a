"""API v1 in-process: the real gateway app over SQLite and a real key set, no worker
(``tests/inprocess.py``): authentication, limits, parsing, the store, error bodies and the
OpenAPI document are the production code. Fast: no process is started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from tests.inprocess import ADMIN_KEY, Api, build_api, code
from veilface import errors
from veilface.api.openapi import document
from veilface.config import load_settings
from veilface.messaging.messages import TASK_ENROLL, TASK_PROBE
from veilface.store import galleries as store
from veilface.store.models import Template

PHOTO = b"\xff\xd8 not really a JPEG: the scripted embedder never opens it"
FACE = {"box": [10.0, 20.0, 80.0, 90.0], "score": 0.99}


@pytest.fixture
def make_api(tmp_path: Path, key_dir: Path) -> Callable[..., Api]:
    """``make_api(**settings)``: the app over a fresh SQLite database and a scripted transport."""

    def make(**overrides) -> Api:
        environ = {"VEILFACE_VAR_DIR": str(tmp_path), "VEILFACE_KEY_DIR": str(key_dir)}
        environ["VEILFACE_SHARED_DIR"] = str(load_settings().shared_dir)
        return build_api(load_settings(environ, bootstrap_api_key=ADMIN_KEY, **overrides))

    return make


@pytest.fixture
def api(make_api) -> Api:
    return make_api()


# -- authentication ---------------------------------------------------------------------------


def test_a_missing_or_unknown_key_is_401_and_a_read_key_may_not_change_anything(api: Api):
    assert code(api("GET", "/v1/galleries", key=None)) == (401, "unauthorized")
    assert code(api("GET", "/v1/galleries", key="no-such-key-" + "x" * 24)) == (401, "unauthorized")
    read = api.key("read")
    assert api("GET", "/v1/galleries", key=read)[:2] == (200, {"galleries": []})
    assert code(api("DELETE", "/v1/galleries/g", key=read)) == (403, "forbidden")
    files = {"image": PHOTO}
    assert code(api("POST", "/v1/galleries/g/subjects/s/faces", key=read, files=files)) == (403, "forbidden")


def test_a_gallery_bound_key_acts_on_its_gallery_only(api: Api):
    bound = api.key("admin", gallery="mine")
    assert api("PUT", "/v1/galleries/mine", key=bound, json={"projection": None})[0] == 200
    status, body, _ = api("PUT", "/v1/galleries/theirs", key=bound, json={"projection": None})
    assert (status, body["error"]["code"]) == (403, "forbidden") and "mine" in body["error"]["message"]


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("top_k=many", "top_k must be an integer"),
        ("top_k=", "top_k must be an integer"),
        ("top_k=0", "top_k must be between 1 and 100"),
        ("top_k=101", "top_k must be between 1 and 100"),
        ("threshold=high", "threshold must be a number"),
        ("threshold=1.5", "threshold must be a cosine similarity in [-1, 1]"),
        ("threshold=nan", "threshold must be a cosine similarity in [-1, 1]"),
    ],
)
def test_bad_search_parameters_are_400_with_the_parameter_named(api: Api, query: str, message: str):
    status, body, _ = api("POST", f"/v1/galleries/g/identify?{query}", files={"image": PHOTO})
    assert (status, body) == (400, {"error": {"code": "bad_request", "message": message}})
    assert api.transport.sent == []  # refused before any task


def test_uploads_and_names_are_checked_before_any_task(api: Api):
    assert code(api("POST", "/v1/galleries/g/identify")) == (400, "bad_request")
    assert code(api("POST", "/v1/galleries/g/identify", files={"image": b""})) == (415, "invalid_image")
    assert code(api("POST", "/v1/verify", files={"image1": PHOTO})) == (400, "bad_request")
    path = "/v1/galleries/g/subjects/s/faces"
    assert code(api("POST", f"{path}?face=side", files={"image": PHOTO})) == (400, "bad_request")
    assert code(api("POST", "/v1/galleries/%20/subjects/s/faces", files={"image": PHOTO})) == (
        400,
        "bad_request",
    )
    assert code(api("POST", "/v1/galleries/g/subjects/%01/faces", files={"image": PHOTO})) == (
        400,
        "bad_request",
    )
    assert code(api("PUT", "/v1/galleries/g", data="projection=pca128")) == (400, "bad_request")
    assert code(api("PUT", "/v1/galleries/g", json={"projection": 128})) == (400, "bad_request")
    assert api.transport.sent == []


# -- statuses ---------------------------------------------------------------------------------


def test_unknown_resources_and_methods(api: Api):
    assert code(api("GET", "/v1/nowhere")) == (404, "not_found")
    assert code(api("GET", "/v1/verify")) == (405, "method_not_allowed")
    assert code(api("GET", "/v1/galleries/absent/subjects")) == (404, "unknown_gallery")
    api("PUT", "/v1/galleries/g", json={"projection": None})
    assert code(api("GET", "/v1/galleries/g/subjects/nobody")) == (404, "unknown_subject")
    assert code(api("PUT", "/v1/galleries/g", json={"projection": "no-such-projection"})) == (
        404,
        "not_found",
    )


def test_enrollment_goes_sealed_to_the_embedder(api: Api):
    api.transport.answers[TASK_ENROLL] = {
        "template_id": 7,
        "model_version": "scripted-1",
        "face": FACE,
        "created": True,
    }
    status, body, _ = api("POST", "/v1/galleries/g/subjects/alice/faces", files={"image": PHOTO})
    assert status == 201
    assert body == {
        "subject": "alice",
        "enrolled": 1,
        "template_ids": [7],
        "faces": [FACE],
        "model_version": "scripted-1",
    }
    [(task, [message], _queue)] = api.transport.sent
    assert task == TASK_ENROLL and message["subject"] == "alice" and message["sealed_image"]
    assert PHOTO.hex() not in str(message) and "not really a JPEG" not in str(message)


def test_a_gallery_that_holds_templates_keeps_its_projection(api: Api):
    with api.gateway.session() as session:
        gallery = store.configure_gallery(session, "g", "pca128")
        subject = store.get_or_create_subject(session, gallery, "alice")
        session.add(
            Template(
                gallery_id=gallery.id,
                subject_id=subject.id,
                model_version="scripted-1",
                image_sha256="0" * 64,
                block_no=0,
                slot=0,
                state="delta",
                ciphertext=b"ciphertext",
            )
        )
    status, body, _ = api("PUT", "/v1/galleries/g", json={"projection": None})
    assert (status, body["error"]["code"]) == (409, "conflict") and "holds templates" in body["error"][
        "message"
    ]


def test_identify_lists_a_face_that_cannot_be_matched(api: Api):
    api("PUT", "/v1/galleries/g", json={"projection": None})
    probe = {"face": FACE, "model_version": "scripted-1", "ciphertext": None, "quality_reason": "too_small"}
    api.transport.answers[TASK_PROBE] = [probe]
    status, body, _ = api("POST", "/v1/galleries/g/identify", files={"image": PHOTO})
    assert (status, body) == (
        200,
        {
            "faces": [
                {
                    "box": FACE["box"],
                    "score": FACE["score"],
                    "candidates": [],
                    "match": None,
                    "quality_reason": "too_small",
                }
            ]
        },
    )


def test_an_upload_over_the_limit_is_413(make_api):
    api = make_api(max_upload_bytes=1024)
    big = {"image": b"x" * 4096}
    assert code(api("POST", "/v1/galleries/g/identify", files=big)) == (413, "image_too_large")


def test_a_read_key_past_its_limit_is_429_with_retry_after(make_api):
    api = make_api(rate_limit_per_minute=2)
    read = api.key("read")
    assert [api("GET", "/v1/galleries", key=read)[0] for _ in range(2)] == [200, 200]
    status, body, headers = api("GET", "/v1/galleries", key=read)
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert api("GET", "/v1/galleries")[0] == 200  # admin keys are not limited


@pytest.mark.parametrize(
    "failure",
    [errors.Unavailable("no embedder is online"), OperationalError("SELECT 1", {}, ConnectionError())],
    ids=["worker", "database"],
)
def test_a_backend_down_is_503_with_retry_after_on_both_apis(api: Api, failure: Exception):
    api.transport.answers[TASK_PROBE] = failure
    bound = api.key("admin", gallery="cf")
    status, body, headers = api("POST", "/v1/verify", files={"image1": PHOTO, "image2": PHOTO})
    assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "unavailable", "5")
    status, body, headers = api("POST", "/api/v1/detection/detect", key=bound, files={"file": PHOTO})
    assert (status, body["code"], headers["Retry-After"]) == (503, 41, "5")


# -- the OpenAPI document ---------------------------------------------------------------------


def test_the_openapi_document_lists_every_error_code(api: Api):
    status, served, _ = api("GET", "/openapi.json", key=None)
    assert status == 200 and served == document()
    listed = served["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    declared = [
        v.code for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.VeilfaceError)
    ]
    assert set(declared) <= set(listed)
    assert {"conflict", "method_not_allowed", "internal"} <= set(listed)
    assert len(listed) == len(set(listed))
