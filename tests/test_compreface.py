"""The CompreFace-compatible API (``/api/v1``).

Two levels: the blueprint in a bare Flask app over the real store on SQLite, with a
scripted gateway standing in for the workers (shapes, status codes, errors); then the
released ``compreface-sdk``, installed into its own virtual environment, driving the real
stack on MariaDB + Redis with LFW photos.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import uuid
import venv
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from flask import Flask
from PIL import Image
from sqlalchemy import select

from tests.support import cli_api_key, needs_markers
from veilface import errors
from veilface.api.compreface import blueprint as compreface_blueprint
from veilface.api.compreface import ids, replies
from veilface.api.compreface.errors import translate
from veilface.api.gateway import Candidate, FaceScore, IdentifiedFace
from veilface.api.params import install_gateway
from veilface.api.ratelimit import Limits
from veilface.config import load_settings
from veilface.messaging.messages import FaceBox
from veilface.models.builtins import builtin
from veilface.store import galleries as store
from veilface.store.apikeys import create_api_key
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.store.models import Gallery, Template

# -- pure functions -------------------------------------------------------------------------


def test_image_ids_are_uuids_that_carry_the_template_id():
    for template_id in (1, 123456, 2**40 + 7):
        image_id = ids.image_id_for(template_id)
        assert uuid.UUID(image_id).version == 8
        assert ids.template_id_of(image_id) == template_id
    assert ids.template_id_of(str(uuid.uuid4())) is None
    assert ids.template_id_of("not-a-uuid") is None
    assert ids.template_id_of("123") is None


def test_similarity_maps_cosine_onto_zero_one():
    assert replies.compreface_similarity(1.0) == 1.0
    assert replies.compreface_similarity(0.0) == 0.5
    assert replies.compreface_similarity(-1.0) == 0.0
    assert replies.compreface_similarity(0.36) == 0.68
    assert replies.compreface_similarity(1.00001) == 1.0  # CKKS noise never leaves [0, 1]


def test_box_uses_compreface_corners():
    box = replies.box_json((-2.4, 10.6, 100.0, 120.2), 0.987654)
    assert box == {"probability": 0.98765, "x_max": 98, "y_max": 131, "x_min": 0, "y_min": 11}


def test_veilface_errors_become_compreface_errors():
    no_face = translate(errors.NoFace())
    assert (no_face.status, no_face.code, no_face.message) == (400, 28, "No face is found in the given image")
    many = translate(errors.MultipleFaces())
    assert (many.status, many.code) == (400, 31)
    assert translate(errors.Unavailable()).status == 503
    assert translate(errors.VeilfaceError()).code == 0
    # A refinement of a translated error is translated as its parent, with its own message.
    client_key = translate(errors.ClientKeyGallery("the server cannot decide a match"))
    assert (client_key.status, client_key.code, client_key.message) == (
        400,
        36,
        "the server cannot decide a match",
    )
    assert (translate(errors.KeyModeConflict()).status, translate(errors.InvalidKeySet()).code) == (400, 26)


# -- store additions on SQLite ----------------------------------------------------------------


@pytest.fixture()
def sessions(tmp_path):
    engine = make_engine(load_settings({}, var_dir=tmp_path))
    create_schema(engine)
    return session_factory(engine)


def _template(session, gallery, subject, image: bytes, version: str = "m1") -> Template:
    row = Template(
        gallery_id=gallery.id,
        subject_id=subject.id,
        model_version=version,
        image_sha256=hashlib.sha256(image).hexdigest(),
        block_no=0,
        slot=store.next_sequence(session, gallery.id, version),
        state="delta",
        ciphertext=b"ciphertext",
    )
    session.add(row)
    session.flush()
    return row


def test_list_templates_pages_live_templates_only(sessions):
    with session_scope(sessions) as s:
        gallery = store.get_or_create_gallery(s, "g")
        alice, bob = (
            store.get_or_create_subject(s, gallery, "alice"),
            store.get_or_create_subject(s, gallery, "bob"),
        )
        rows = [
            _template(s, gallery, alice, b"a1"),
            _template(s, gallery, alice, b"a2"),
            _template(s, gallery, bob, b"b1"),
        ]
        store.delete_template(s, rows[1])
        page, total = store.list_templates(s, gallery, offset=0, limit=1)
        assert total == 2 and [r.template_id for r in page] == [rows[0].id]
        page, total = store.list_templates(s, gallery, subject="bob")
        assert total == 1 and page[0].subject == "bob"
        with pytest.raises(errors.NotFound):
            store.get_live_template(s, gallery, rows[1].id)
        assert (
            store.find_template(
                s, gallery.id, alice.id, rows[0].model_version, hashlib.sha256(b"a2").hexdigest()
            )
            is None
        )


def test_rename_merges_into_an_existing_subject(sessions):
    with session_scope(sessions) as s:
        gallery = store.get_or_create_gallery(s, "g")
        alice, bob = (
            store.get_or_create_subject(s, gallery, "alice"),
            store.get_or_create_subject(s, gallery, "bob"),
        )
        _template(s, gallery, alice, b"a1")
        _template(s, gallery, alice, b"same")
        _template(s, gallery, bob, b"same")
        merged = store.rename_subject(s, gallery, alice, "bob")
        assert merged.name == "bob"
        assert [x["subject"] for x in store.list_subjects(s, gallery)] == ["bob"]
        assert store.list_templates(s, gallery)[1] == 2
        carol = store.rename_subject(s, gallery, merged, "carol")
        assert carol.name == "carol" and store.delete_all_subjects(s, gallery) == 1
        assert store.list_templates(s, gallery)[1] == 0


# -- the blueprint over a scripted gateway ------------------------------------------------------

KEY, READ_KEY, UNBOUND_KEY = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
SAME, OTHER = 0.8, 0.0  # scripted cosine similarities


def photo(*faces: tuple[str, float, float]) -> bytes:
    """A scripted 'image': faces as (person, size in pixels, detector score)."""
    return json.dumps([{"who": w, "box": [10, 10, size, size], "score": p} for w, size, p in faces]).encode()


class ScriptedGateway:
    """The Gateway's interface over the real store; faces and similarities come from the image."""

    def __init__(self, sessions, settings):
        self.sessions, self.settings = sessions, settings
        self.limits = Limits.from_settings(settings)
        self.registry = SimpleNamespace(active=lambda: SimpleNamespace(version="scripted-1"))
        self.who: dict[int, str] = {}
        self.down = False

    def session(self):
        return session_scope(self.sessions)

    def _faces(self, image: bytes) -> list[tuple[str, FaceBox]]:
        if self.down:
            raise errors.Unavailable("no embedder is online")
        faces = [(f["who"], FaceBox(tuple(f["box"]), f["score"])) for f in json.loads(image)]
        # The embedder lists the main face first; scripted boxes share a corner, so it is the largest.
        return sorted(faces, key=lambda f: f[1].box[2], reverse=True)

    def enroll(self, gallery_name, subject_name, images, *, main_face):
        faces = self._faces(images[0])
        if not faces:
            raise errors.NoFace()
        if len(faces) > 1 and not main_face:
            raise errors.MultipleFaces()
        who = faces[0][0]
        with self.session() as s:  # like the embedder: the subject comes with its first template
            gallery = store.get_or_create_gallery(s, gallery_name)
            subject = store.get_or_create_subject(s, gallery, subject_name)
            digest = hashlib.sha256(images[0]).hexdigest()
            row = store.find_template(s, gallery.id, subject.id, "scripted-1", digest)
            row = row or _template(s, gallery, subject, images[0], "scripted-1")
            self.who[row.id] = who
            return {"subject": subject_name, "template_ids": [row.id]}

    def _similarity(self, who: str, template_id: int) -> float:
        return SAME if self.who[template_id] == who else OTHER

    def identify(self, gallery_name, image, *, top_k, threshold):
        with self.session() as s:
            rows, _ = store.list_templates(s, store.get_gallery(s, gallery_name), limit=1000)
        found = []
        for who, face in self._faces(image):
            best: dict[str, float] = {}
            for r in rows:
                best[r.subject] = max(best.get(r.subject, -1.0), self._similarity(who, r.template_id))
            ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
            found.append(IdentifiedFace(list(face.box), face.score, [Candidate(*kv) for kv in ranked], None))
        return found

    def detect(self, image):
        return [face for _, face in self._faces(image)]

    def verify_template(self, gallery_name, template_id, image):
        return [FaceScore(face, self._similarity(who, template_id)) for who, face in self._faces(image)]

    def compare(self, source, target):
        first = self._faces(source)[0]
        return first[1], [FaceScore(f, SAME if w == first[0] else OTHER) for w, f in self._faces(target)]


@pytest.fixture()
def gw(sessions, tmp_path):
    with session_scope(sessions) as s:
        create_api_key(s, "cf", "admin", gallery="cf", key=KEY)
        create_api_key(s, "cf-read", "read", gallery="cf", key=READ_KEY)
        create_api_key(s, "unbound", "admin", key=UNBOUND_KEY)
    return ScriptedGateway(sessions, load_settings({}, var_dir=tmp_path))


@pytest.fixture()
def api(gw):
    app = Flask("compreface-test")
    install_gateway(app, gw)
    app.register_blueprint(compreface_blueprint)
    client = app.test_client()

    def call(method: str, path: str, key: str | None = KEY, files: dict | None = None, **kwargs):
        headers = {"x-api-key": key} if key else {}
        data = {k: (io.BytesIO(v), "x.jpg") for k, v in (files or {}).items()} or None
        response = client.open(f"/api/v1{path}", method=method, headers=headers, data=data, **kwargs)
        return response.status_code, response.get_json()

    return call


def test_keys_as_compreface_checks_them(api, sessions):
    assert api("GET", "/recognition/subjects", key=None) == (
        400,
        {"message": "Missing header: x-api-key", "code": 20},
    )
    status, body = api("GET", "/recognition/subjects", key="nope")
    assert (status, body["code"]) == (404, 10)
    status, body = api("GET", "/recognition/subjects", key=UNBOUND_KEY)
    assert (status, body["code"]) == (404, 10) and "--gallery" in body["message"]
    status, body = api("POST", "/recognition/subjects", key=READ_KEY, json={"subject": "x"})
    assert (status, body["code"]) == (405, 32)
    # A read key creates nothing, not even its gallery (CompreFace's service) on first use.
    status, body = api("GET", "/recognition/subjects/", key=READ_KEY)
    assert (status, body["code"]) == (403, 32) and "does not exist yet" in body["message"]
    with session_scope(sessions) as s:
        assert s.scalar(select(Gallery).where(Gallery.name == "cf")) is None
    assert api("GET", "/recognition/subjects/") == (200, {"subjects": []})
    assert api("GET", "/recognition/subjects/", key=READ_KEY) == (200, {"subjects": []})


def test_add_list_and_delete_examples(api):
    status, body = api("POST", "/recognition/faces?subject=alice", files={"file": photo(("alice", 90, 0.99))})
    assert status == 201 and body["subject"] == "alice"
    alice_id = body["image_id"]
    assert api("POST", "/recognition/faces?subject=x", files={"file": photo()})[1]["code"] == 28
    two = photo(("bob", 90, 0.99), ("carol", 40, 0.6))
    assert api("POST", "/recognition/faces?subject=bob", files={"file": two})[1]["code"] == 31
    assert api("GET", "/recognition/subjects")[1] == {"subjects": ["alice"]}  # failed adds create none
    status, body = api("POST", "/recognition/faces?subject=bob&det_prob_threshold=0.8", files={"file": two})
    assert status == 201
    api(
        "POST", "/recognition/faces", files={"file": photo(("bob", 80, 0.9))}, query_string={"subject": "bob"}
    )
    assert api("POST", "/recognition/faces", files={"file": two})[1]["code"] == 26  # no subject

    status, page = api("GET", "/recognition/faces?page=1&size=2")
    assert status == 200 and page["total_elements"] == 3 and page["total_pages"] == 2
    assert page["page_number"] == 1 and page["page_size"] == 2 and len(page["faces"]) == 1
    assert api("GET", "/recognition/faces?subject=bob")[1]["total_elements"] == 2

    assert api("DELETE", f"/recognition/faces/{alice_id}") == (
        200,
        {"image_id": alice_id, "subject": "alice"},
    )
    assert api("DELETE", f"/recognition/faces/{alice_id}")[1]["code"] == 44
    assert api("DELETE", "/recognition/faces/not-an-id")[1] == {
        "message": "Image Id is not valid",
        "code": 44,
    }
    status, again = api(
        "POST", "/recognition/faces?subject=alice", files={"file": photo(("alice", 90, 0.99))}
    )
    assert status == 201 and again["image_id"] != alice_id  # a deleted example is enrolled anew
    assert api("DELETE", "/recognition/faces?subject=bob") == (200, {"deleted": 2})
    assert api("DELETE", "/recognition/faces?subject=nobody") == (200, {"deleted": 0})
    assert api("DELETE", "/recognition/faces") == (200, {"deleted": 1})


def test_recognize_with_options(api):
    for who in ("alice", "bob", "carol"):
        api("POST", f"/recognition/faces?subject={who}", files={"file": photo((who, 90, 0.99))})
    group = photo(("bob", 50, 0.7), ("alice", 100, 0.99))
    status, body = api("POST", "/recognition/recognize", files={"file": group})
    assert status == 200 and set(body) == {"result"}
    assert [f["subjects"][0] for f in body["result"]] == [
        {"subject": "alice", "similarity": 0.9},
        {"subject": "bob", "similarity": 0.9},
    ]
    assert body["result"][0]["box"] == {
        "probability": 0.99,
        "x_max": 110,
        "y_max": 110,
        "x_min": 10,
        "y_min": 10,
    }
    query = "limit=1&prediction_count=2&face_plugins=age,gender&status=True"
    status, body = api("POST", f"/recognition/recognize?{query}", files={"file": group})
    assert len(body["result"]) == 1 and len(body["result"][0]["subjects"]) == 2
    assert body["result"][0]["subjects"][1]["similarity"] == 0.5
    assert body["ignored_face_plugins"] == ["age", "gender"] and "calculator" in body["note"]
    assert "total" in body["result"][0]["execution_time"]
    assert body["plugins_versions"]["calculator"] == "veilface.scripted-1"
    status, body = api("POST", "/recognition/recognize?det_prob_threshold=0.8", files={"file": group})
    assert [f["subjects"][0]["subject"] for f in body["result"]] == ["alice"]
    assert api("POST", "/recognition/recognize", files={"file": photo()})[1]["code"] == 28
    assert api("POST", "/recognition/recognize?prediction_count=0", files={"file": group})[1]["code"] == 12
    assert api("POST", "/recognition/recognize?det_prob_threshold=2", files={"file": group})[1]["code"] == 26
    assert api("POST", "/recognition/recognize") == (
        400,
        {"message": "Required request part 'file' is not present", "code": 34},
    )
    encoded = base64.b64encode(group).decode()
    status, body = api("POST", "/recognition/recognize", json={"file": encoded})
    assert status == 200 and len(body["result"]) == 2


def test_verify_an_example(api):
    alice = api("POST", "/recognition/faces?subject=alice", files={"file": photo(("alice", 90, 0.99))})[1]
    status, body = api(
        "POST", f"/recognition/faces/{alice['image_id']}/verify", files={"file": photo(("alice", 80, 0.9))}
    )
    assert status == 200
    assert body["result"] == [
        {
            "box": {"probability": 0.9, "x_max": 90, "y_max": 90, "x_min": 10, "y_min": 10},
            "subject": "alice",
            "similarity": 0.9,
        }
    ]
    body = api(
        "POST", f"/recognition/faces/{alice['image_id']}/verify", files={"file": photo(("bob", 80, 0.9))}
    )[1]
    assert body["result"][0]["similarity"] == 0.5
    missing = ids.image_id_for(999)
    assert api("POST", f"/recognition/faces/{missing}/verify", files={"file": photo(("bob", 80, 0.9))})[
        1
    ] == {
        "message": f"Image {missing} not found",
        "code": 44,
    }


def test_subjects(api):
    assert api("POST", "/recognition/subjects", json={"subject": "alice"}) == (201, {"subject": "alice"})
    assert api("POST", "/recognition/subjects", json={"subject": "alice"}) == (
        400,
        {"message": "Subject already exists", "code": 43},
    )
    assert api("POST", "/recognition/subjects", json={})[1]["code"] == 26
    api("POST", "/recognition/faces?subject=bob", files={"file": photo(("bob", 90, 0.99))})
    assert api("GET", "/recognition/subjects")[1] == {"subjects": ["alice", "bob"]}
    assert api("PUT", "/recognition/subjects/bob", json={"subject": "robert"}) == (200, {"updated": True})
    assert api("PUT", "/recognition/subjects/robert", json={"subject": "robert"}) == (200, {"updated": False})
    assert api("PUT", "/recognition/subjects/alice", json={"subject": "robert"}) == (200, {"updated": True})
    assert api("GET", "/recognition/subjects")[1] == {"subjects": ["robert"]}
    assert api("PUT", "/recognition/subjects/nobody", json={"subject": "x"}) == (
        404,
        {"message": "Subject nobody not found", "code": 42},
    )
    assert api("DELETE", "/recognition/subjects/robert") == (200, {"subject": "robert"})
    assert api("POST", "/recognition/subjects", json={"subject": "team/a"}) == (201, {"subject": "team/a"})
    assert api("PUT", "/recognition/subjects/team/a", json={"subject": "team/b"}) == (200, {"updated": True})
    assert api("DELETE", "/recognition/subjects/team/b") == (200, {"subject": "team/b"})
    assert api("DELETE", "/recognition/subjects/robert")[1]["code"] == 42
    api("POST", "/recognition/subjects", json={"subject": "x"})
    api("POST", "/recognition/subjects", json={"subject": "y"})
    assert api("DELETE", "/recognition/subjects") == (200, {"deleted": 2})


def test_verification_and_detection_services(api, gw):
    source, target = photo(("alice", 90, 0.99)), photo(("alice", 60, 0.95), ("bob", 80, 0.97))
    status, body = api("POST", "/verification/verify", files={"source_image": source, "target_image": target})
    assert status == 200
    [item] = body["result"]
    assert item["source_image_face"]["box"]["x_max"] == 100
    assert [m["similarity"] for m in item["face_matches"]] == [0.5, 0.9]  # largest face first
    status, body = api(
        "POST",
        "/verification/verify?status=true&limit=1",
        files={"source_image": source, "target_image": target},
    )
    assert len(body["result"][0]["face_matches"]) == 1 and "plugins_versions" in body["result"][0]
    assert api("POST", "/verification/verify", files={"source_image": source})[1]["code"] == 34
    status, body = api("POST", "/detection/detect?face_plugins=landmarks", files={"file": target})
    assert [f["box"]["probability"] for f in body["result"]] == [0.97, 0.95]
    assert body["ignored_face_plugins"] == ["landmarks"]
    gw.down = True
    status, body = api("POST", "/detection/detect", files={"file": target})
    assert (status, body["code"]) == (503, 41)


# -- the released SDK against the real stack ----------------------------------------------------

SDK_REQUIREMENTS = ("compreface-sdk==0.6.0", "urllib3<2")  # its requests-toolbelt 0.9.1 needs urllib3 1.x
SDK_VENV = Path(__file__).resolve().parent.parent / "var" / "compreface-venv"
GALLERY = "compreface-lfw"
N_IDENTITIES = 5

#: Runs with the SDK's own Python: takes a JSON config path, prints one JSON document.
CLIENT_SCRIPT = r"""
import json
import sys

from compreface import CompreFace

cfg = json.load(open(sys.argv[1]))
server = CompreFace(cfg["domain"], cfg["port"])
recognition = server.init_face_recognition(cfg["key"])
faces, subjects = recognition.get_face_collection(), recognition.get_subjects()
verification = server.init_face_verification(cfg["key"])
detection = server.init_face_detection(cfg["key"])
read_only = server.init_face_recognition(cfg["read_key"])
out = {"add_subject": subjects.add(cfg["spare"]), "add_subject_again": subjects.add(cfg["spare"])}

enrolled, out["add_refused"] = [], []
for person in cfg["candidates"]:
    if len(enrolled) == cfg["n"]:
        break
    answer = faces.add(image_path=person["enroll"], subject=person["name"])
    if "image_id" in answer:
        enrolled.append(dict(person, image_id=answer["image_id"], answer=answer))
    else:
        out["add_refused"].append(answer)
out["enrolled"] = enrolled
out["list"] = faces.list()
options = {"limit": 0, "det_prob_threshold": 0.5, "prediction_count": 3, "status": True}
options["face_plugins"] = "age,gender"
out["recognize"] = {p["name"]: recognition.recognize(p["probe"], options=options) for p in enrolled}
a, b, c, d = enrolled[:4]
out["verify_same"] = faces.verify(image_path=a["probe"], image_id=a["image_id"])
out["verify_other"] = faces.verify(image_path=b["probe"], image_id=a["image_id"])
out["pair_same"] = verification.verify(source_image_path=a["enroll"], target_image_path=a["probe"])
out["pair_other"] = verification.verify(source_image_path=a["enroll"], target_image_path=b["probe"])
out["detect"] = detection.detect(image_path=a["probe"], options={"status": True})
out["no_face"] = recognition.recognize(image_path=cfg["blank"])
out["read_only_add"] = read_only.get_subjects().add("not-allowed")
out["read_only_recognize"] = read_only.recognize(image_path=a["probe"])
out["rename"] = subjects.update(a["name"], a["name"] + "_renamed")
out["recognize_renamed"] = recognition.recognize(image_path=a["probe"])
out["delete_by_id"] = faces.delete(b["image_id"])
out["delete_by_id_again"] = faces.delete(b["image_id"])
out["recognize_deleted"] = recognition.recognize(image_path=b["probe"], options={"prediction_count": 10})
out["delete_examples"] = faces.delete_all(c["name"])
out["delete_subject"] = subjects.delete(d["name"])
out["delete_missing_subject"] = subjects.delete("nobody-" + d["name"])
out["subjects_before_clear"] = subjects.list()
out["delete_all"] = subjects.delete_all()
out["subjects_after_clear"] = subjects.list()
out["list_after_clear"] = faces.list()
print(json.dumps(out))
"""


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="session")
@needs_markers("install")
def sdk_python() -> Path:
    """Python of a virtual environment holding the released compreface-sdk (cached under var/)."""
    python, stamp = SDK_VENV / "bin" / "python", SDK_VENV / "requirements.txt"
    wanted = "\n".join(SDK_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(SDK_VENV, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(SDK_VENV)
    install = _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *SDK_REQUIREMENTS]
    )
    if install.returncode != 0:
        pytest.fail(f"cannot install {' '.join(SDK_REQUIREMENTS)}:\n{install.stdout}\n{install.stderr}")
    stamp.write_text(wanted)
    return python


def _cli_key(env: dict[str, str], *extra: str) -> str:
    key = cli_api_key(env, "--gallery", GALLERY, "--compreface", *extra)
    assert uuid.UUID(key)  # shaped like a CompreFace service key
    return key


def _largest(answer: dict) -> dict:
    assert "result" in answer, answer
    return max(
        answer["result"],
        key=lambda f: (f["box"]["x_max"] - f["box"]["x_min"]) * (f["box"]["y_max"] - f["box"]["y_min"]),
    )


@pytest.fixture(scope="module")
def sdk_run(stack, mysql_redis_env, lfw_people, sdk_python, tmp_path_factory) -> dict:
    """Everything the SDK script saw, as JSON."""
    folder = tmp_path_factory.mktemp("compreface")
    blank = folder / "blank.jpg"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank, "JPEG")
    candidates = [
        {"name": p[0].parent.name, "enroll": str(p[0]), "probe": str(p[1])} for p in lfw_people[100:140]
    ]
    domain, port = stack.url.rsplit(":", 1)
    config = {
        "domain": domain,
        "port": port,
        "key": _cli_key(mysql_redis_env, "--name", "compreface-sdk"),
        "read_key": _cli_key(mysql_redis_env, "--name", "compreface-sdk-read", "--scope", "read"),
        "candidates": candidates,
        "n": N_IDENTITIES,
        "spare": "spare-subject",
        "blank": str(blank),
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "client.py").write_text(CLIENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = _run(
        [str(sdk_python), str(folder / "client.py"), str(folder / "config.json")], env=env, timeout=1200
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


@pytest.mark.install
@pytest.mark.stack
def test_sdk_enrolls_lists_and_recognizes(sdk_run):
    assert sdk_run["add_subject"] == {"subject": "spare-subject"}
    assert sdk_run["add_subject_again"] == {"message": "Subject already exists", "code": 43}
    enrolled = sdk_run["enrolled"]
    assert len(enrolled) == N_IDENTITIES, sdk_run["add_refused"]
    assert all(r["code"] in (28, 31) for r in sdk_run["add_refused"]), sdk_run["add_refused"]
    assert all(ids.template_id_of(p["image_id"]) for p in enrolled)
    listing = sdk_run["list"]
    assert (
        listing["total_elements"] == N_IDENTITIES
        and listing["page_number"] == 0
        and listing["page_size"] == 20
    )
    assert {(f["image_id"], f["subject"]) for f in listing["faces"]} == {
        (p["image_id"], p["name"]) for p in enrolled
    }
    for person in enrolled:
        answer = sdk_run["recognize"][person["name"]]
        face = _largest(answer)
        assert face["subjects"][0]["subject"] == person["name"], answer
        assert all(0.0 <= s["similarity"] <= 1.0 for s in face["subjects"]) and len(face["subjects"]) == 3
        assert answer["ignored_face_plugins"] == ["age", "gender"] and "execution_time" in face
        assert set(answer["plugins_versions"]) == {"detector", "calculator"}


@pytest.mark.install
@pytest.mark.stack
def test_sdk_verifies_and_detects(sdk_run):
    same = sdk_run["verify_same"]["result"][0]
    other = sdk_run["verify_other"]["result"][0]
    assert same["subject"] == sdk_run["enrolled"][0]["name"]
    assert same["similarity"] > other["similarity"]
    pair_same = max(m["similarity"] for m in sdk_run["pair_same"]["result"][0]["face_matches"])
    pair_other = max(m["similarity"] for m in sdk_run["pair_other"]["result"][0]["face_matches"])
    threshold = replies.compreface_similarity(builtin(load_settings().recognizer).threshold)
    assert pair_same > pair_other and pair_other < threshold
    assert sdk_run["detect"]["result"] and "plugins_versions" in sdk_run["detect"]
    assert sdk_run["no_face"] == {"message": "No face is found in the given image", "code": 28}
    assert sdk_run["read_only_add"]["code"] == 32
    assert "result" in sdk_run["read_only_recognize"]


@pytest.mark.install
@pytest.mark.stack
def test_sdk_renames_and_deletes(sdk_run):
    a, b, _, d, e = (p["name"] for p in sdk_run["enrolled"])
    assert sdk_run["rename"] == {"updated": True}
    assert _largest(sdk_run["recognize_renamed"])["subjects"][0]["subject"] == a + "_renamed"
    assert sdk_run["delete_by_id"] == {"image_id": sdk_run["enrolled"][1]["image_id"], "subject": b}
    assert sdk_run["delete_by_id_again"]["code"] == 44
    assert b not in {s["subject"] for s in _largest(sdk_run["recognize_deleted"])["subjects"]}
    assert sdk_run["delete_examples"] == {"deleted": 1}
    assert sdk_run["delete_subject"] == {"subject": d}
    assert sdk_run["delete_missing_subject"]["code"] == 42
    assert set(sdk_run["subjects_before_clear"]["subjects"]) == {a + "_renamed", b, e, "spare-subject"}
    assert sdk_run["delete_all"] == {"deleted": 4}
    assert sdk_run["subjects_after_clear"] == {"subjects": []}
    assert sdk_run["list_after_clear"]["total_elements"] == 0


@pytest.mark.stack
def test_unbound_admin_key_is_refused(stack, admin_headers):
    r = requests.get(f"{stack.url}/api/v1/recognition/subjects", headers=admin_headers, timeout=30)
    assert r.status_code == 404 and r.json()["code"] == 10
    r = requests.get(f"{stack.url}/api/v1/recognition/subjects", timeout=30)
    assert r.json() == {"message": "Missing header: x-api-key", "code": 20}
