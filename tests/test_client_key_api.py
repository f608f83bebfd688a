"""Client-key galleries through the real gateway app in-process, on MariaDB, with no worker
(``tests/inprocess.py``): what the routes refuse and store, and how the server-side front ends
(API v1 photos, the console's calls, the CompreFace-compatible API) answer such a gallery.

Key sets are real ones (``generate_keyset``, as ``veilface client keys init`` makes them) and
ciphertexts are encrypted with them, as :mod:`veilface.client` does. The end-to-end path with
workers is ``tests/test_client_e2e.py``.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from sqlalchemy import func, select

from tests.inprocess import ADMIN_KEY, Api, build_api, code
from tests.support import MYSQL, MYSQL_DATABASE
from veilface import errors
from veilface.api.compreface.ids import image_id_for
from veilface.config import load_settings
from veilface.crypto.params import DEFAULT_PARAMS, CkksParams
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import generate_keyset
from veilface.store import galleries as store
from veilface.store.keysets import PART_BYTES
from veilface.store.models import Gallery, PublicKeySetPart, Subject, Template

PHOTO = b"\xff\xd8 not really a JPEG: refused before any embedder sees it"
#: What every server-side front end says of a client-key gallery.
WHY = "cannot decide a match"


@dataclass(frozen=True)
class KeySet:
    """A client's public key set: the bytes it uploads and the context it encrypts with."""

    blob: bytes
    context: PublicContext

    @classmethod
    def generate(cls, folder: Path, params: CkksParams = DEFAULT_PARAMS) -> KeySet:
        generate_keyset(folder, params)
        blob = (folder / "public.ctx").read_bytes()
        return cls(blob, PublicContext.from_bytes(blob))


@pytest.fixture(scope="module")
def api(tmp_path_factory, key_dir: Path) -> Iterator[Api]:
    database = f"{MYSQL_DATABASE}_capi"
    environ = {
        "VEILFACE_VAR_DIR": str(tmp_path_factory.mktemp("var-capi")),
        "VEILFACE_KEY_DIR": str(key_dir),
        "VEILFACE_SHARED_DIR": str(load_settings().shared_dir),
        "VEILFACE_DATABASE_URL": MYSQL.create_database(database),
    }
    api = build_api(load_settings(environ, bootstrap_api_key=ADMIN_KEY))
    yield api
    api.gateway.sessions.kw["bind"].dispose()
    MYSQL.drop_database(database)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> KeySet:
    """The client's key set (generating one takes about 0.4 s; the public part is 15.8 MB)."""
    return KeySet.generate(tmp_path_factory.mktemp("client"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> KeySet:
    """Another client's key set."""
    return KeySet.generate(tmp_path_factory.mktemp("stranger"))


_names = itertools.count()


def new_name(prefix: str) -> str:
    """A gallery name no other test of the module uses (they share one database)."""
    return f"{prefix}-{next(_names)}"


def put_keys(api: Api, gallery: str, blob: bytes, key: str = ADMIN_KEY) -> tuple:
    return api(
        "PUT",
        f"/v1/galleries/{gallery}/client-keys",
        key=key,
        data=blob,
        content_type="application/octet-stream",
    )


@pytest.fixture
def gallery(api: Api, client: KeySet) -> str:
    """A new client-key gallery on the client's key set."""
    name = new_name("cg")
    assert put_keys(api, name, client.blob)[0] == 201
    return name


def reserve(api: Api, gallery: str, count: int) -> list[tuple[int, int]]:
    status, body, _ = api("POST", f"/v1/galleries/{gallery}/slots", json={"count": count})
    assert status == 201, body
    return [(p["block"], p["slot"]) for p in body["slots"]]


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def template_item(context: PublicContext, position: tuple[int, int], dim: int, seed: int) -> dict:
    block, slot = position
    vector = np.random.default_rng(seed).standard_normal(dim)
    return {"block": block, "slot": slot, "ciphertext": b64(encrypt_template(context, vector, slot=slot))}


def upload(api: Api, gallery: str, subject: str, items: list, key: str = ADMIN_KEY) -> tuple:
    return api(
        "POST", f"/v1/galleries/{gallery}/subjects/{subject}/templates", key=key, json={"templates": items}
    )


def dim_of(api: Api) -> int:
    return api.gateway.registry.active().dim


def counts(api: Api, gallery: str) -> tuple[bool, int, int, int]:
    """Whether ``gallery`` exists, its subjects, its templates, and every stored key set part."""
    with api.gateway.session() as session:
        row = session.scalar(select(Gallery).where(Gallery.name == gallery))
        parts = session.scalar(select(func.count()).select_from(PublicKeySetPart))
        if row is None:
            return False, 0, 0, parts
        subjects = session.scalar(select(func.count()).where(Subject.gallery_id == row.id))
        templates = session.scalar(select(func.count()).where(Template.gallery_id == row.id))
        return True, subjects, templates, parts


def parts_of(api: Api, fingerprint: str) -> int:
    with api.gateway.session() as session:
        where = PublicKeySetPart.fingerprint == fingerprint
        return session.scalar(select(func.count()).select_from(PublicKeySetPart).where(where))


# -- the key set ------------------------------------------------------------------------------


def _with_secret_key() -> bytes:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2**40
    return context.serialize(save_secret_key=True)


@pytest.fixture(scope="module")
def other_parameters(tmp_path_factory) -> bytes:
    """A complete public key set whose CKKS parameters are not the deployment's."""
    params = CkksParams(coeff_mod_bit_sizes=(50, 30, 30, 50), scale_bits=30)
    return KeySet.generate(tmp_path_factory.mktemp("other-params"), params).blob


@pytest.mark.parametrize(
    ("make", "expected", "reason"),
    [
        (lambda _: b"\x00garbage" * 1000, "invalid_key_set", "not a serialized TenSEAL public context"),
        (lambda _: _with_secret_key(), "invalid_key_set", "holds a secret key"),
        (lambda other: other, "invalid_key_set", "are not this deployment's"),
        (lambda _: b"", "bad_request", "public key set as the body"),
    ],
    ids=["garbage", "secret-key", "other-parameters", "empty"],
)
def test_a_key_set_the_server_cannot_use_is_400_and_nothing_is_stored(
    api: Api, other_parameters: bytes, make, expected: str, reason: str
):
    name = new_name("refused")
    before = counts(api, name)
    status, body, _ = put_keys(api, name, make(other_parameters))
    assert (status, body["error"]["code"]) == (400, expected) and reason in body["error"]["message"]
    assert counts(api, name) == before and before[0] is False


def test_a_client_key_set_makes_a_gallery_that_describes_the_model_without_server_paths(
    api: Api, client: KeySet
):
    name = new_name("created")
    model = api.gateway.registry.active()
    status, body, _ = put_keys(api, name, client.blob)
    assert status == 201
    assert (body["name"], body["keys"], body["key_fingerprint"]) == (
        name,
        "client",
        client.context.fingerprint,
    )
    assert (body["model_version"], body["dim"], body["threshold"]) == (
        model.version,
        model.dim,
        model.threshold,
    )
    files = _files(body["model"])
    assert files and all("/" not in f and "\\" not in f for f in files), files
    assert str(api.gateway.settings.shared_dir) not in json.dumps(body)
    assert parts_of(api, client.context.fingerprint) == -(-len(client.blob) // PART_BYTES)
    status, shown, _ = api("GET", f"/v1/galleries/{name}")
    assert status == 200 and {k: shown[k] for k in body} == body
    assert code(put_keys(api, name, client.blob)) == (409, "conflict")
    assert code(api("PUT", f"/v1/galleries/{name}", json={"keys": "own"})) == (409, "key_mode_conflict")
    status, body, _ = api("PUT", f"/v1/galleries/{name}", json={"projection": None})  # options only
    assert (status, body["keys"]) == (200, "client")


def _files(network: object) -> list[str]:
    """Every ``file`` value anywhere in a model description."""
    if isinstance(network, dict):
        own = [network["file"]] if "file" in network else []
        return own + [f for v in network.values() for f in _files(v)]
    if isinstance(network, list):
        return [f for v in network for f in _files(v)]
    return []


# -- template positions and template ciphertexts ---------------------------------------------


@pytest.mark.parametrize("body", [{"count": 0}, {"count": 65}, {"count": "x"}, {"count": True}, {}, []])
def test_a_count_outside_1_to_64_is_400(api: Api, gallery: str, body):
    assert code(api("POST", f"/v1/galleries/{gallery}/slots", json=body)) == (400, "bad_request")


def test_positions_are_reserved_on_client_key_galleries_only(api: Api, gallery: str):
    status, body, _ = api("POST", f"/v1/galleries/{gallery}/slots", json={"count": 3})
    assert status == 201 and body["dim"] == dim_of(api)
    assert len({(p["block"], p["slot"]) for p in body["slots"]}) == 3
    deployment = new_name("deployment")
    assert api("PUT", f"/v1/galleries/{deployment}", json={})[0] == 200
    assert code(api("POST", f"/v1/galleries/{deployment}/slots", json={"count": 1})) == (409, "conflict")
    assert code(api("POST", "/v1/galleries/absent/slots", json={"count": 1})) == (404, "unknown_gallery")


def test_templates_go_to_reserved_positions_once(api: Api, client: KeySet, gallery: str):
    dim = dim_of(api)
    first, second = reserve(api, gallery, 2)
    unreserved = (second[0], second[1] + 1)
    assert code(upload(api, gallery, "alice", [template_item(client.context, unreserved, dim, 0)])) == (
        400,
        "bad_request",
    )
    status, body, _ = upload(
        api,
        gallery,
        "alice",
        [template_item(client.context, p, dim, i) for i, p in enumerate((first, second))],
    )
    assert status == 201 and body["subject"] == "alice"
    assert [(t["block"], t["slot"]) for t in body["templates"]] == [first, second]
    assert code(upload(api, gallery, "bob", [template_item(client.context, first, dim, 9)])) == (
        409,
        "conflict",
    )
    assert counts(api, gallery)[1:3] == (1, 2)


def test_a_ciphertext_that_is_no_fresh_template_of_the_gallerys_key_set_is_refused(
    api: Api, client: KeySet, stranger: KeySet, gallery: str
):
    dim = dim_of(api)
    (position,) = reserve(api, gallery, 1)
    block, slot = position
    vector = np.random.default_rng(3).standard_normal(dim)
    other_dim = 256 if dim != 256 else 512
    refused = {
        "a probe": encrypt_probe(client.context, vector),
        "another key set's template": encrypt_template(stranger.context, vector, slot=slot),
        "another dimension": encrypt_template(
            client.context, np.random.default_rng(4).standard_normal(other_dim), slot=slot
        ),
        "bytes": b"\x00" * 4096,
    }
    for what, blob in refused.items():
        item = {"block": block, "slot": slot, "ciphertext": b64(blob)}
        assert code(upload(api, gallery, "carol", [item])) == (400, "invalid_ciphertext"), what
    item = {"block": block, "slot": slot, "ciphertext": "not base64!"}
    assert code(upload(api, gallery, "carol", [item])) == (400, "invalid_ciphertext")
    assert counts(api, gallery)[1:3] == (0, 0)  # not even the subject


def test_one_bad_template_in_a_batch_stores_none_of_it(api: Api, client: KeySet, gallery: str):
    dim = dim_of(api)
    positions = reserve(api, gallery, 3)
    items = [template_item(client.context, p, dim, i) for i, p in enumerate(positions)]
    items[2]["ciphertext"] = b64(encrypt_probe(client.context, np.ones(dim)))
    assert code(upload(api, gallery, "dave", items)) == (400, "invalid_ciphertext")
    assert counts(api, gallery)[1:3] == (0, 0)
    assert upload(api, gallery, "dave", items[:2])[0] == 201


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"templates": []},
        {"templates": "x"},
        {"templates": [{"block": 0, "slot": 0}]},
        {"templates": [{"block": "0", "slot": 0, "ciphertext": "AA=="}]},
        {"templates": [{"block": 0, "slot": True, "ciphertext": "AA=="}]},
        {"templates": [{"block": 0, "slot": 0, "ciphertext": 5}]},
        {"templates": [{"block": 0, "slot": 0, "ciphertext": "AA=="}] * 65},
    ],
)
def test_a_template_upload_of_the_wrong_shape_is_400(api: Api, gallery: str, body):
    status, answer, _ = api("POST", f"/v1/galleries/{gallery}/subjects/s/templates", json=body)
    assert (status, answer["error"]["code"]) == (400, "bad_request")


# -- encrypted search: what is refused before any matcher is asked ----------------------------


def test_a_search_body_that_is_not_fresh_probe_ciphertexts_is_refused(api: Api, client: KeySet, gallery: str):
    dim = dim_of(api)
    (position,) = reserve(api, gallery, 1)
    assert upload(api, gallery, "erin", [template_item(client.context, position, dim, 5)])[0] == 201
    probe = b64(encrypt_probe(client.context, np.ones(dim)))
    template = template_item(client.context, position, dim, 6)["ciphertext"]
    limit = api.gateway.settings.max_faces_per_request or 64
    path = f"/v1/galleries/{gallery}/search"
    sent = len(api.transport.sent)
    for body, expected in [
        (None, (400, "bad_request")),
        ({}, (400, "bad_request")),
        ({"probes": []}, (400, "bad_request")),
        ({"probes": probe}, (400, "bad_request")),
        ({"probes": [1]}, (400, "bad_request")),
        ({"probes": [probe] * (limit + 1)}, (400, "bad_request")),
        ({"probes": [probe], "subject": 5}, (400, "bad_request")),
        ({"probes": [probe], "subject": "\x01"}, (400, "bad_request")),
        ({"probes": ["not base64!"]}, (400, "invalid_ciphertext")),
        ({"probes": [template]}, (400, "invalid_ciphertext")),
        ({"probes": [probe], "subject": "nobody"}, (404, "unknown_subject")),
    ]:
        assert code(api("POST", path, json=body)) == expected, body
    assert code(api("POST", path, data="probes", content_type="text/plain")) == (400, "bad_request")
    assert len(api.transport.sent) == sent  # no matcher was asked


def test_an_encrypted_search_is_for_client_key_galleries_only(api: Api, client: KeySet):
    deployment = new_name("deployment")
    assert api("PUT", f"/v1/galleries/{deployment}", json={})[0] == 200
    probe = b64(encrypt_probe(client.context, np.ones(dim_of(api))))
    assert code(api("POST", f"/v1/galleries/{deployment}/search", json={"probes": [probe]})) == (
        409,
        "conflict",
    )


# -- keys and deletion --------------------------------------------------------------------------


def test_a_read_key_creates_reserves_and_uploads_nothing(api: Api, client: KeySet, gallery: str):
    read = api.key("read")
    name = new_name("read")
    assert code(put_keys(api, name, client.blob, key=read)) == (403, "forbidden")
    assert counts(api, name)[0] is False
    assert code(api("POST", f"/v1/galleries/{gallery}/slots", key=read, json={"count": 1})) == (
        403,
        "forbidden",
    )
    (position,) = reserve(api, gallery, 1)
    item = template_item(client.context, position, dim_of(api), 7)
    assert code(upload(api, gallery, "frank", [item], key=read)) == (403, "forbidden")
    assert counts(api, gallery)[1:3] == (0, 0)


def test_deleting_a_gallery_keeps_a_key_set_another_gallery_still_uses(api: Api, stranger: KeySet):
    fingerprint = stranger.context.fingerprint
    first, second = new_name("shared"), new_name("shared")
    assert put_keys(api, first, stranger.blob)[0] == 201
    assert put_keys(api, second, stranger.blob)[0] == 201
    stored = parts_of(api, fingerprint)
    assert stored == -(-len(stranger.blob) // PART_BYTES)  # stored once for both
    status, body, _ = api("DELETE", f"/v1/galleries/{first}")
    assert (status, body["keys_destroyed"]) == (200, False)  # the server never held the secret key
    assert parts_of(api, fingerprint) == stored
    assert api("GET", f"/v1/galleries/{second}")[0] == 200
    assert api("DELETE", f"/v1/galleries/{second}")[0] == 200
    assert parts_of(api, fingerprint) == 0


# -- the server-side front ends on a client-key gallery -----------------------------------------


def _why(result: tuple) -> None:
    status, body, _ = result
    assert (status, body["error"]["code"]) == (409, "client_key_gallery")
    assert WHY in body["error"]["message"]


def test_photo_enroll_identify_and_verify_of_api_v1_say_why_they_cannot(
    api: Api, client: KeySet, gallery: str
):
    """The console's enroll, identify and verify pages make these very calls (``console.js``
    ``paths``) and show the error's message with its code."""
    (position,) = reserve(api, gallery, 1)
    assert upload(api, gallery, "grace", [template_item(client.context, position, dim_of(api), 8)])[0] == 201
    sent = len(api.transport.sent)
    image = {"image": PHOTO}
    _why(api("POST", f"/v1/galleries/{gallery}/subjects/grace/faces", files=image))
    _why(api("POST", f"/v1/galleries/{gallery}/subjects/new/faces?face=main", files=image))
    _why(api("POST", f"/v1/galleries/{gallery}/identify", files=image))
    _why(api("POST", f"/v1/galleries/{gallery}/subjects/grace/verify", files=image))
    assert len(api.transport.sent) == sent  # refused before any photo went to an embedder
    assert counts(api, gallery)[1:3] == (1, 1)
    script = api.client.get("/console/static/console.js").get_data(as_text=True)
    assert "client_key_gallery:" in script  # the console says it in plain words too


def test_a_client_key_gallery_takes_no_projection(api: Api, gallery: str):
    """Its client encrypts the templates: the embedder, which projects, never sees them."""
    with pytest.raises(errors.ClientKeyGallery), api.gateway.session() as session:
        store.configure_gallery(session, gallery, "pca128")
    assert api("GET", f"/v1/galleries/{gallery}")[1]["projection"] is None


def test_the_compreface_api_says_why_it_cannot(api: Api, client: KeySet, gallery: str):
    (position,) = reserve(api, gallery, 1)
    status, body, _ = upload(api, gallery, "heidi", [template_item(client.context, position, dim_of(api), 9)])
    image_id = image_id_for(body["templates"][0]["id"])
    bound = api.key("admin", gallery=gallery)
    image = {"file": PHOTO}
    for path in (
        "/api/v1/recognition/recognize",
        "/api/v1/recognition/faces?subject=heidi",
        f"/api/v1/recognition/faces/{image_id}/verify",
    ):
        status, body, _ = api("POST", path, key=bound, files=image)
        assert (status, body["code"]) == (400, 36), (path, body)  # CompreFace's IncorrectArgument
        assert WHY in body["message"], path
    status, body, _ = api("GET", "/api/v1/recognition/subjects", key=bound)
    assert (status, body) == (200, {"subjects": ["heidi"]})  # names are the server's to list


@pytest.mark.parametrize("path", ["slots", "subjects/s/templates", "search"])
def test_a_gallery_name_no_gallery_can_have_is_400_before_the_database(api: Api, path: str):
    """MariaDB refuses to compare a name longer than its column (it was a 503 ``unavailable``)."""
    status, body, _ = api("POST", f"/v1/galleries/{'g' * 129}/{path}", json={})
    assert (status, body["error"]["code"]) == (400, "bad_request") and "gallery" in body["error"]["message"]
