"""Client-held keys (issue 19): the client's key set, local faces, encryption, decryption and ranking.

No server runs here: a stand-in (:class:`EngineServer`) answers the client's requests with the
engine's own scoring code (the delta kernel the he-matcher runs) under the public context the
client uploaded, so what the client decrypts and ranks are genuine encrypted scores of real LFW
photos. The command line's error paths run against a small HTTP stub. The end-to-end test on the
stack lands with the server side of the contract.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from tests.support import faceless_jpeg
from veilface.client.ciphertexts import encrypted_probes, encrypted_templates
from veilface.client.faces import LocalFaces, UnsupportedModel, local_model
from veilface.client.gallery import Image, PrivateGallery
from veilface.client.keys import ClientKeys, KeyDirError, init_keys
from veilface.client.scores import BadAnswer, rank
from veilface.config import load_settings
from veilface.crypto import codec
from veilface.crypto.codec import Kind, peek_dim
from veilface.crypto.public import PublicContext
from veilface.models.registry import ModelRegistry
from veilface.models.version import ModelVersion
from veilface.search.delta import load_template, merge_groups, score_delta
from veilface.search.engine import MaskCache, prepare_probe

ROOT = Path(__file__).resolve().parent.parent
N_IDENTITIES = 8
SERVER_MODULES = ("flask", "celery", "sqlalchemy", "gunicorn", "redis", "kombu")


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("client") / "keys"
    init_keys(folder)
    return folder


@pytest.fixture(scope="module")
def keys(keys_dir: Path) -> ClientKeys:
    return ClientKeys.load(keys_dir)


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The active model as the server describes it: its files under the server's own folder."""
    settings = load_settings()
    return ModelRegistry(settings).active().located(Path("/srv/elsewhere/models")).as_dict()


# -- the key set ------------------------------------------------------------------------------


def test_keys_init_writes_two_files_0600_and_refuses_to_overwrite(keys_dir: Path, keys: ClientKeys):
    assert sorted(p.name for p in keys_dir.iterdir()) == ["public.ctx", "secret.ctx"]
    for path in keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in keys_dir.iterdir()}
    with pytest.raises(KeyDirError, match="refusing to overwrite"):
        init_keys(keys_dir)
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in keys_dir.iterdir()}
    # What the client uploads is a public context: the server's loader accepts it (it refuses a secret key).
    assert PublicContext.from_bytes(keys.public_blob()).fingerprint == keys.fingerprint


def test_a_missing_key_folder_names_the_fix(tmp_path: Path):
    with pytest.raises(KeyDirError, match="veilface client keys init --dir"):
        ClientKeys.load(tmp_path / "nowhere")


# -- local faces ------------------------------------------------------------------------------


def test_the_servers_model_description_runs_from_the_local_models_folder(model: dict[str, Any]):
    settings = load_settings()
    local = local_model(model, settings.shared_models_dir)
    assert local.version == model["version"] and local.missing_files() == []
    with pytest.raises(UnsupportedModel, match="not found in"):
        local_model(model, settings.shared_models_dir / "missing")
    projected = {
        **model,
        "network": {"kind": "projected", "base": model["network"], "projection": "p", "dim": 128},
    }
    with pytest.raises(UnsupportedModel, match="projection"):
        local_model(projected, settings.shared_models_dir)


# -- encrypted scores, decrypted and ranked by the client --------------------------------------


class EngineServer:
    """Stands in for the gateway and a he-matcher: the contract's answers, scored by the engine.

    It holds only what the server would: the uploaded public context, the ciphertexts and the
    slot-to-subject map; every probe is scored with the delta kernel under the client's keys.
    """

    def __init__(self, model: dict[str, Any]):
        self.model = model
        self.ctx: PublicContext | None = None
        self.owners: dict[int, str] = {}
        self.templates: dict[int, bytes] = {}
        self.next_slot = 0

    def create_gallery(self, gallery: str, public_context: bytes) -> dict[str, Any]:
        self.ctx = PublicContext.from_bytes(public_context)
        return self.gallery(gallery)

    def gallery(self, gallery: str) -> dict[str, Any]:
        assert self.ctx is not None
        return {
            "name": gallery,
            "keys": "client",
            "key_fingerprint": self.ctx.fingerprint,
            "model_version": self.model["version"],
            "dim": ModelVersion.from_dict(self.model).dim,
            "threshold": self.model["threshold"],
            "model": self.model,
        }

    def reserve_slots(self, gallery: str, count: int) -> dict[str, Any]:
        slots = [{"block": 0, "slot": self.next_slot + k} for k in range(count)]
        self.next_slot += count
        dim = ModelVersion.from_dict(self.model).dim
        return {"model_version": self.model["version"], "dim": dim, "slots": slots}

    def add_templates(self, gallery: str, subject: str, templates: list[dict[str, Any]]) -> dict[str, Any]:
        for entry in templates:
            self.templates[entry["slot"]] = base64.b64decode(entry["ciphertext"])
            self.owners[entry["slot"]] = subject
        return {
            "subject": subject,
            "templates": [{"id": t["slot"], "block": 0, "slot": t["slot"]} for t in templates],
        }

    def search(self, gallery: str, probes: list[str], subject: str | None = None) -> dict[str, Any]:
        assert self.ctx is not None
        slots = sorted(s for s, owner in self.owners.items() if subject in (None, owner))
        answers = []
        for probe in probes:
            blob = base64.b64decode(probe)
            dim = peek_dim(blob)
            groups = merge_groups(
                self.ctx, dim, [(s, load_template(self.ctx, self.templates[s], dim)) for s in slots]
            )
            scores = score_delta(
                self.ctx, groups, prepare_probe(self.ctx, blob, dim), MaskCache(self.ctx, dim)
            )
            ciphertext = base64.b64encode(self.ctx.dumps(scores, Kind.SCORE)).decode()
            subjects = [[s, self.owners[s]] for s in slots]
            answers.append(
                {
                    "scores": [
                        {
                            "block": 0,
                            "source": "delta",
                            "dim": dim,
                            "ciphertext": ciphertext,
                            "subjects": subjects,
                        }
                    ]
                }
            )
        return {
            "model_version": self.model["version"],
            "threshold": self.model["threshold"],
            "probes": answers,
        }


@pytest.fixture(scope="module")
def enrolled(keys: ClientKeys, model: dict[str, Any], lfw_people) -> tuple[PrivateGallery, list[list[Path]]]:
    """The first photo of each of ``N_IDENTITIES`` LFW identities enrolled through the client."""
    server = EngineServer(model)
    people = lfw_people[:N_IDENTITIES]
    PrivateGallery.create(server, keys, "private", load_settings())  # type: ignore[arg-type]
    gallery = PrivateGallery(server, keys, "private", load_settings())  # type: ignore[arg-type]
    for photos in people:
        answer = gallery.enroll(
            photos[0].parent.name, [Image(photos[0].read_bytes(), str(photos[0]))], main_face=True
        )
        assert len(answer["templates"]) == 1
    return gallery, people


def test_identify_decrypts_and_ranks_the_right_subject_on_lfw(enrolled):
    gallery, people = enrolled
    for photos in people:
        faces = gallery.identify(Image(photos[1].read_bytes(), str(photos[1])), top_k=3)["faces"]
        best = faces[0]
        assert best["candidates"][0]["subject"] == photos[0].parent.name, best
        assert best["match"] == best["candidates"][0]
        assert len(best["candidates"]) == 3 and len(best["box"]) == 4
        similarities = [c["similarity"] for c in best["candidates"]]
        assert similarities == sorted(similarities, reverse=True)


def test_decrypted_scores_are_the_plaintext_cosines(enrolled, keys: ClientKeys):
    gallery, people = enrolled
    faces: LocalFaces = gallery.faces
    enrolled_vectors = [
        faces.enrollment_face(p[0].read_bytes(), str(p[0]), main=True).embedding for p in people
    ]
    probe = faces.faces(people[2][1].read_bytes(), "probe")[0].embedding
    answer = gallery.api.search("private", encrypted_probes(keys.public, [probe]))["probes"][0]
    ranked = {c.subject: c.similarity for c in rank(keys.secret, answer, N_IDENTITIES)}
    for photos, vector in zip(people, enrolled_vectors, strict=True):
        expected = float(np.dot(vector, probe) / np.linalg.norm(vector) / np.linalg.norm(probe))
        assert abs(ranked[photos[0].parent.name] - expected) < 1e-3


def test_verify_decides_with_the_models_threshold(enrolled):
    gallery, people = enrolled
    same = gallery.verify(people[0][0].parent.name, Image(people[0][1].read_bytes(), "same"))
    other = gallery.verify(people[1][0].parent.name, Image(people[0][1].read_bytes(), "other"))
    assert same["match"] is True and same["similarity"] >= same["threshold"]
    assert other["match"] is False and other["similarity"] < other["threshold"]


def test_a_template_relabelled_as_a_score_is_refused(enrolled, keys: ClientKeys):
    gallery, people = enrolled
    vector = gallery.faces.faces(people[0][1].read_bytes(), "probe")[0].embedding
    template = encrypted_templates(keys.public, [vector], [{"block": 0, "slot": 0}])[0]["ciphertext"]
    forged = {
        "scores": [
            {
                "block": 0,
                "source": "delta",
                "dim": vector.size,
                "ciphertext": template,
                "subjects": [[0, "x"]],
            }
        ]
    }
    with pytest.raises(BadAnswer, match="refused a score ciphertext"):
        rank(keys.secret, forged, 5)
    with pytest.raises(BadAnswer, match="malformed"):
        rank(keys.secret, {"scores": [{"block": 0}]}, 5)


def test_another_key_set_reads_nothing_from_this_ones_scores(enrolled, keys: ClientKeys, tmp_path: Path):
    """Unlinkability between key sets: a score ciphertext is refused by another client's key, and
    decrypted by force (its header relabelled) it gives noise, not the scores."""
    gallery, people = enrolled
    init_keys(tmp_path / "other")
    other = ClientKeys.load(tmp_path / "other")
    probe = gallery.faces.faces(people[0][1].read_bytes(), "probe")[0].embedding
    answer = gallery.api.search("private", encrypted_probes(keys.public, [probe]))["probes"][0]
    own = {c.subject: c.similarity for c in rank(keys.secret, answer, N_IDENTITIES)}
    with pytest.raises(BadAnswer, match="refused a score ciphertext"):
        rank(other.secret, answer, N_IDENTITIES)
    header = len(codec.MAGIC) + 2  # magic, kind, log2 dim, then 8 bytes of the fingerprint
    relabelled = []
    for score in answer["scores"]:
        blob = base64.b64decode(score["ciphertext"])
        blob = blob[:header] + bytes.fromhex(other.fingerprint[:16]) + blob[header + 8 :]
        relabelled.append({**score, "ciphertext": base64.b64encode(blob).decode()})
    forced = {c.subject: c.similarity for c in rank(other.secret, {"scores": relabelled}, N_IDENTITIES)}
    assert forced.keys() == own.keys()
    assert all(abs(forced[subject] - own[subject]) > 0.1 for subject in own), (own, forced)


# -- installable and runnable without the server ----------------------------------------------


def test_the_client_and_the_cli_import_without_the_servers_modules():
    code = (
        "import sys, json, veilface.client, veilface.cli, veilface.client.gallery, veilface.client.api, "
        "veilface.client.keys, veilface.client.faces, veilface.client.scores, veilface.client.ciphertexts; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_MODULES!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


class _Stub(BaseHTTPRequestHandler):
    """Answers ``routes[(method, path)] = (status, body)``; anything else a JSON 404."""

    routes: ClassVar[dict[tuple[str, str], tuple[int, dict]]] = {}

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.routes.get(
            (self.command, self.path), (404, {"error": {"code": "not_found", "message": "no such route"}})
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stub(keys: ClientKeys, model: dict[str, Any]) -> Iterator[str]:
    _Stub.routes = {
        ("PUT", "/v1/galleries/taken/client-keys"): (
            409,
            {"error": {"code": "conflict", "message": "gallery taken exists"}},
        ),
        ("GET", "/v1/galleries/mine"): (
            200,
            {
                "name": "mine",
                "keys": "client",
                "key_fingerprint": keys.fingerprint,
                "model": model,
                "model_version": model["version"],
                "threshold": model["threshold"],
            },
        ),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "veilface", "client", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


def _one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr


def test_cli_keys_init_refuses_an_existing_key_set(keys_dir: Path):
    _one_line_error(_cli("keys", "init", "--dir", str(keys_dir)), "refusing to overwrite")


def test_cli_errors_are_one_line(stub: str, keys_dir: Path, tmp_path: Path, lfw_people):
    common = ["--url", stub, "--api-key", "k" * 32, "--gallery"]
    photo = str(lfw_people[0][0])
    _one_line_error(
        _cli("create-gallery", *common, "taken", "--keys", str(keys_dir)),
        "server answered 409 conflict: gallery taken exists",
    )
    _one_line_error(
        _cli("identify", *common, "mine", "--keys", str(tmp_path / "none"), photo), "no client key set in"
    )
    faceless = tmp_path / "wall.jpg"
    faceless.write_bytes(faceless_jpeg())
    _one_line_error(
        _cli("identify", *common, "mine", "--keys", str(keys_dir), str(faceless)),
        f"no face found in {faceless}",
    )
    _one_line_error(
        _cli(
            "identify",
            "--url",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            "--gallery",
            "g",
            "--keys",
            str(keys_dir),
            photo,
        ),
        "cannot reach http://127.0.0.1:9",
    )


def test_a_server_command_without_the_server_extra_says_what_to_install():
    code = (
        "import sys; sys.modules['sqlalchemy'] = None; sys.argv = ['veilface', 'galleries', 'list']; "
        "from veilface.cli import run; run()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    _one_line_error(result, "pip install 'veilface[server]'")
