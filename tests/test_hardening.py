"""Smaller hardening against active attackers, on the real gateway app (Flask, SQLite, a real key
set, no workers): what ``/readyz`` and ``/metrics`` tell whom, the bootstrap key's length and
revocation, projection names that are paths, and JSON bodies nested too deeply.
``docs/reliability.md`` ("Smaller hardening") lists each item with its test.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask

from veilface import errors
from veilface.api import create_app
from veilface.cli import main
from veilface.config import MIN_SECRET_LENGTH, SettingError, load_settings
from veilface.local.stack import SERVICES
from veilface.models.projection import Projection
from veilface.models.registry import ModelRegistry
from veilface.store.apikeys import BOOTSTRAP_NAME, create_api_key
from veilface.store.db import create_schema, make_engine

ADMIN_KEY = "hardening-admin-" + "a" * 24
METRICS_TOKEN = "hardening-metrics-" + "m" * 24
#: Projection names that are paths or not plain names: each a 400, never a file looked up.
BAD_PROJECTION_NAMES = ["/abs/path", "../evil", "a/b", "..", "x..y", ".hidden", "PCA128", "pca\n", "p" * 65]


@pytest.fixture
def make_app(tmp_path: Path, key_dir: Path) -> Callable[..., Flask]:
    """``make_app(**settings)``: a gateway app on one SQLite database and model folder per test."""

    def make(**overrides) -> Flask:
        environ = {"VEILFACE_VAR_DIR": str(tmp_path), "VEILFACE_KEY_DIR": str(key_dir)}
        environ["VEILFACE_SHARED_DIR"] = str(load_settings().shared_dir)
        settings = load_settings(environ, **overrides)
        create_schema(make_engine(settings))  # what `veilface db migrate` does on SQLite
        return create_app(settings)

    return make


@pytest.fixture
def app(make_app) -> Flask:
    return make_app(bootstrap_api_key=ADMIN_KEY, metrics_token=METRICS_TOKEN)


def new_key(app: Flask, scope: str, **kwargs) -> str:
    with app.extensions["veilface"].session() as session:
        return create_api_key(session, f"hardening-{scope}", scope, **kwargs)


def error_code(response) -> str:
    assert "Traceback" not in response.get_data(as_text=True)
    return response.get_json()["error"]["code"]


# -- /healthz, /readyz and /metrics -----------------------------------------------------------


def test_healthz_and_readyz_without_a_key_say_nothing_about_the_deployment(app: Flask):
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    ready = client.get("/readyz")  # no worker runs: not ready
    assert ready.status_code == 503 and ready.get_json() == {"ready": False}
    fingerprint = app.extensions["veilface"].keys.fingerprint
    assert fingerprint[:12] not in ready.get_data(as_text=True)


def test_readyz_details_need_an_admin_key(app: Flask):
    client = app.test_client()
    read = new_key(app, "read")
    assert error_code(client.get("/readyz", headers={"X-API-Key": read})) == "forbidden"
    assert error_code(client.get("/readyz", headers={"X-API-Key": "not-a-key-" * 3})) == "unauthorized"
    assert error_code(client.get("/readyz", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})) == (
        "unauthorized"
    )
    ready = client.get("/readyz", headers={"X-API-Key": ADMIN_KEY})
    report = ready.get_json()
    assert ready.status_code == 503 and report["ready"] is False
    assert report["checks"]["keys"]["fingerprint"] == app.extensions["veilface"].keys.fingerprint
    assert report["checks"]["database"]["ok"] is True and report["checks"]["embedder"]["online"] == []
    assert "threshold" in report["checks"]["model"]


def test_metrics_need_the_metrics_token_or_an_admin_key(app: Flask):
    client = app.test_client()
    read = new_key(app, "read")
    assert error_code(client.get("/metrics")) == "unauthorized"
    assert error_code(client.get("/metrics", headers={"X-API-Key": read})) == "forbidden"
    wrong = {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}x"}
    assert error_code(client.get("/metrics", headers=wrong)) == "unauthorized"
    for headers in ({"Authorization": f"Bearer {METRICS_TOKEN}"}, {"X-API-Key": ADMIN_KEY}):
        metrics = client.get("/metrics", headers=headers)
        assert metrics.status_code == 200, headers
        assert "veilface_http_requests_total" in metrics.get_data(as_text=True)


def test_without_a_metrics_token_only_admin_keys_read_metrics(make_app):
    client = make_app(bootstrap_api_key=ADMIN_KEY).test_client()
    assert error_code(client.get("/metrics", headers={"Authorization": "Bearer "})) == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


# -- the bootstrap key ------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["bootstrap_api_key", "metrics_token"])
def test_a_short_bootstrap_key_or_metrics_token_is_refused(make_app, setting: str):
    with pytest.raises(SettingError, match=f"VEILFACE_{setting.upper()} has 23 characters"):
        make_app(**{setting: "k" * (MIN_SECRET_LENGTH - 1)})


@pytest.mark.stack
def test_gunicorn_refuses_a_short_bootstrap_key_in_one_line(tmp_path: Path, key_dir: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEILFACE_")}
    env.update(
        VEILFACE_VAR_DIR=str(tmp_path),
        VEILFACE_KEY_DIR=str(key_dir),
        VEILFACE_BOOTSTRAP_API_KEY="short-key",
        VEILFACE_BIND="127.0.0.1:0",
    )
    gunicorn = [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"]
    gateway = SERVICES / "gateway"
    done = subprocess.run(gunicorn, cwd=gateway, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert [line for line in output.splitlines() if "gunicorn" not in line] == [
        "veilface gateway refuses to start: VEILFACE_BOOTSTRAP_API_KEY has 9 characters, fewer than "
        f"{MIN_SECRET_LENGTH}: choose a long random one "
        "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    ], output
    assert "Booting worker" not in output  # refused before any worker loads the secret key


def test_bootstrap_key_is_revoked_when_its_variable_is_removed_or_changed(make_app):
    first, second = "first-bootstrap-key-" + "1" * 24, "second-bootstrap-key-" + "2" * 24

    def status(client, key: str) -> int:
        return client.get("/v1/galleries", headers={"X-API-Key": key}).status_code

    client = make_app(bootstrap_api_key=first).test_client()
    assert status(client, first) == 200
    client = make_app(bootstrap_api_key=second).test_client()  # changed: the old one is revoked
    assert (status(client, first), status(client, second)) == (401, 200)
    client = make_app(bootstrap_api_key="").test_client()  # removed
    assert status(client, second) == 401
    client = make_app(bootstrap_api_key=first).test_client()  # a revoked key never comes back
    assert status(client, first) == 401


def test_the_bootstrap_key_name_is_reserved(app: Flask):
    with pytest.raises(errors.BadRequest, match="reserved"), app.extensions["veilface"].session() as session:
        create_api_key(session, BOOTSTRAP_NAME, "admin")


# -- projection names ---------------------------------------------------------------------------


def _evil_projection(folder: Path) -> Path:
    """A projection whose threshold makes everyone match, saved outside the projections folder."""
    matrix = np.eye(512, 16, dtype=np.float32)
    return Projection("evil", "edgeface_xs", np.zeros(512, np.float32), matrix, threshold=-1.0).save(folder)


@pytest.mark.parametrize("name", BAD_PROJECTION_NAMES)
def test_a_projection_name_that_is_not_a_plain_name_is_a_400(app: Flask, name: str):
    response = app.test_client().put(
        "/v1/galleries/hardening", json={"projection": name}, headers={"X-API-Key": ADMIN_KEY}
    )
    assert response.status_code == 400 and error_code(response) == "bad_request"
    assert "projection name" in response.get_json()["error"]["message"]


def test_an_unknown_plain_projection_name_is_a_404(app: Flask):
    response = app.test_client().put(
        "/v1/galleries/hardening", json={"projection": "pca999"}, headers={"X-API-Key": ADMIN_KEY}
    )
    assert response.status_code == 404 and error_code(response) == "not_found"


def test_a_projection_is_loaded_only_from_the_registry_folder(tmp_path: Path):
    registry = ModelRegistry(load_settings(model_dir=tmp_path / "models"))
    outside = _evil_projection(tmp_path)
    relative = f"../../{outside.stem}"
    assert (registry.projections_path / f"{relative}.npz").resolve() == outside.resolve()
    for name in (str(outside.with_suffix("")), relative):
        with pytest.raises(errors.BadRequest, match="projection name"):
            registry.projection(name)
        with pytest.raises(errors.BadRequest, match="projection name"):
            registry.get(f"edgeface_xs:{name}")  # a gallery's stored version is checked the same way


def test_fit_projection_refuses_a_path_before_any_work(tmp_path: Path):
    target = tmp_path / "evil"
    env = {"VEILFACE_MODEL_DIR": str(tmp_path / "models")}
    result = CliRunner().invoke(
        main, ["models", "fit-projection", str(target), "--base", "edgeface_xs"], env=env
    )
    assert isinstance(result.exception, errors.BadRequest) and "projection name" in str(result.exception)
    assert not target.with_suffix(".npz").exists() and not (tmp_path / "models").exists()


# -- JSON nested too deeply -------------------------------------------------------------------


def test_a_json_body_nested_too_deeply_is_a_400_logged_in_one_line(app: Flask, caplog):
    headers = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"}
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        response = client.put("/v1/galleries/hardening", data="[" * 100_000, headers=headers)
    assert response.status_code == 400 and error_code(response) == "bad_request"
    assert response.get_json()["error"]["message"] == "the JSON body is nested too deeply"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "refused a JSON body nested too deeply"
    ]
    assert not any(r.exc_info for r in caplog.records)


def test_a_json_body_nested_too_deeply_is_a_400_on_the_compreface_api(app: Flask):
    key = new_key(app, "admin", gallery="hardening-cf")
    response = app.test_client().put(
        "/api/v1/recognition/subjects/someone",
        data="[" * 100_000,
        headers={"x-api-key": key, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
