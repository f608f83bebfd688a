"""Bad input and attackers against the shared session stack (MariaDB + Redis), leaving nothing
behind for the other tests: requests generated from ``/openapi.json`` by schemathesis (valid
and invalid), hostile image files through the real embedder with its memory watched, the
decoder under mutation fuzzing, API key storage, scopes, gallery-bound keys, the audit log,
and per-key rate limits on a second gateway process. ``docs/reliability.md`` has the results.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select, text

from tests.support import cli_api_key, encoded, gateway_process, needs_markers, png_chunk, png_claiming
from veilface.api import openapi
from veilface.config import load_settings
from veilface.errors import ImageTooLarge, InvalidImage
from veilface.face.image import decode_image
from veilface.store import galleries as store
from veilface.store.apikeys import create_api_key, hash_key
from veilface.store.db import make_engine, session_factory, session_scope
from veilface.store.models import ApiKey, AuditEntry, Gallery

GALLERY = "attacks"
BOUND_GALLERY = "attacks-bound"
#: Galleries the fuzzer may create or delete: generated names get this prefix.
SANDBOX = "fuzz-"
MAX_PIXELS = load_settings().max_image_pixels


@dataclass
class Attack:
    url: str
    sessions: object
    admin: str
    read: str
    bound: str
    #: The enrolled person: (subject, enrolled photo, another photo).
    person: tuple[str, Path, Path]
    embedder_pid: int

    def headers(self, key: str) -> dict[str, str]:
        return {"X-API-Key": key}


@pytest.fixture(scope="module")
def attack(stack, mysql_redis_env, admin_headers, lfw_people) -> Iterator[Attack]:
    """Keys of every kind and one enrolled person; removes every gallery the module made."""
    sessions = session_factory(make_engine(load_settings(mysql_redis_env)))
    with session_scope(sessions) as session:
        before = set(session.scalars(select(Gallery.name)))
        read = create_api_key(session, "attacks-read", "read")
        bound = create_api_key(session, "attacks-bound", "admin", gallery=BOUND_GALLERY)
    photos = lfw_people[-1]
    person = (photos[0].parent.name, photos[0], photos[1])
    r = requests.post(
        f"{stack.url}/v1/galleries/{GALLERY}/subjects/{person[0]}/faces",
        headers=admin_headers,
        files=[("image", photos[0].read_bytes())],
        params={"face": "main"},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    yield Attack(
        stack.url, sessions, admin_headers["X-API-Key"], read, bound, person, stack.processes["embedder1"].pid
    )
    with session_scope(sessions) as session:
        for gallery in session.scalars(select(Gallery).where(Gallery.name.not_in(before))):
            store.delete_gallery(session, gallery)
        for row in session.scalars(select(ApiKey).where(ApiKey.name.like("attacks-%"))):
            session.delete(row)


# -- requests generated from the OpenAPI document ------------------------------------------

schema = schemathesis.openapi.from_dict(openapi.document())
#: Names are fuzzed on every other operation; these get the real gallery and subject.
SEARCH_OPERATIONS = {
    "POST /v1/galleries/{gallery}/identify",
    "POST /v1/galleries/{gallery}/subjects/{subject}/verify",
}
ADMIN_OPERATIONS = {
    "POST /v1/galleries/{gallery}/subjects/{subject}/faces",
    "PUT /v1/galleries/{gallery}",
    "DELETE /v1/galleries/{gallery}",
    "DELETE /v1/galleries/{gallery}/subjects/{subject}",
    "PUT /v1/galleries/{gallery}/client-keys",
    "POST /v1/galleries/{gallery}/slots",
    "POST /v1/galleries/{gallery}/subjects/{subject}/templates",
}


@pytest.mark.stack
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_documented_answers(case, attack: Attack):
    """Valid and invalid parameters, names and bodies: never a 5xx, never an undocumented status,
    content type or body shape, never slow. Changes go to sandbox galleries only."""
    label = f"{case.method} {case.path}"
    key = attack.admin if label in ADMIN_OPERATIONS else attack.read
    if label in ADMIN_OPERATIONS and isinstance(case.path_parameters.get("gallery"), str):
        case.path_parameters["gallery"] = SANDBOX + case.path_parameters["gallery"]
    elif label in SEARCH_OPERATIONS:  # an existing gallery, so that the upload reaches the embedder
        case.path_parameters.update(gallery=GALLERY, subject=attack.person[0])
    started = time.monotonic()
    response = case.call(base_url=attack.url, headers=attack.headers(key), timeout=60)
    assert time.monotonic() - started < 30, f"{label} took too long"
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


# -- hostile images, through the real embedder --------------------------------------------


def _jpeg_claiming(face: Image.Image, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    data = bytearray(encoded(face, "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    """A VP8X WebP header whose canvas is ``width`` x ``height`` (24-bit fields, minus one)."""
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + canvas
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _gif_claiming(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00"
        + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )


def _tiff_claiming(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, min(width * height, 2**32 - 1)),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8 + 0) + ifd


def _exif_rotated(face: Image.Image) -> bytes:
    """The photo stored lying on its side, with the EXIF orientation (6) that stands it up."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(face.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif.tobytes())


def _animated(face: Image.Image, fmt: str) -> bytes:
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (*face.size[::-1], 3), dtype=np.uint8))
    out = io.BytesIO()
    face.save(out, fmt, save_all=True, append_images=[noise, noise], duration=100, loop=0)
    return out.getvalue()


def _grey16(face: Image.Image) -> bytes:
    grey = np.asarray(face.convert("L"), dtype=np.uint16) * 257
    return encoded(Image.fromarray(grey), "PNG")


def _big_canvas(face: Image.Image) -> bytes:
    """A 6000 x 6000 photo (36 MP, under the 40 MP limit) with the face in a corner."""
    canvas = Image.new("RGB", (6000, 6000), (120, 130, 140))
    canvas.paste(face.resize((1000, 1000)), (200, 200))
    return encoded(canvas, "JPEG", quality=70)


def _ztxt_bomb(face: Image.Image) -> bytes:
    """A valid PNG carrying a text chunk that inflates to 64 MB."""
    png = encoded(face, "PNG")
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    return png[:33] + bomb + png[33:]


#: (what, make(face), expected statuses of /v1/verify with a real face as the second photo).
HOSTILE = [
    ("random bytes", lambda face: os.urandom(65536), {415}),
    ("truncated JPEG", lambda face: encoded(face, "JPEG")[:3000], {415}),
    ("truncated PNG", lambda face: encoded(face, "PNG")[:5000], {415}),
    ("truncated WebP", lambda face: encoded(face, "WEBP")[:2000], {415}),
    ("JPEG claiming 65500x65500", lambda face: _jpeg_claiming(face, 65500, 65500), {413}),
    ("PNG claiming 100000x100000", lambda face: png_claiming(100_000, 100_000), {413}),
    ("WebP claiming 16383x16383", lambda face: _webp_claiming(16383, 16383), {413}),
    ("GIF claiming 65535x65535", lambda face: _gif_claiming(65535, 65535), {413}),
    ("TIFF claiming 100000x100000", lambda face: _tiff_claiming(100_000, 100_000), {413}),
    (
        "EPS (Ghostscript format, refused)",
        lambda face: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        {415},
    ),
    ("SVG", lambda face: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', {415}),
    ("PNG with a 64 MB zTXt bomb", _ztxt_bomb, {415}),
    (
        "JPEG with a 60 KB comment and 4 MB of trailing bytes",
        lambda face: encoded(face, "JPEG", comment=b"x" * 60000) + b"\x00" * (4 << 20),
        {200},
    ),
    ("36 MP photo", _big_canvas, {200, 422}),
    ("EXIF-rotated photo", _exif_rotated, {200}),
    ("CMYK JPEG", lambda face: encoded(face.convert("CMYK"), "JPEG", quality=92), {200}),
    ("16-bit grey PNG", _grey16, {200, 422}),
    ("animated GIF", lambda face: _animated(face, "GIF"), {200}),
    ("animated WebP", lambda face: _animated(face, "WEBP"), {200}),
    ("palette PNG with transparency", lambda face: encoded(face.convert("P"), "PNG", transparency=0), {200}),
]
#: Variants of the same face: 1:1 against the original must still be a match.
SAME_FACE = {
    "EXIF-rotated photo",
    "CMYK JPEG",
    "animated GIF",
    "animated WebP",
    "JPEG with a 60 KB comment and 4 MB of trailing bytes",
}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.stack
def test_hostile_images_through_the_embedder(attack: Attack):
    """Each file as the first photo of /v1/verify: its documented status, quickly, and the
    embedder's memory stays bounded (a 36 MP photo is the largest thing it decodes)."""
    with Image.open(attack.person[1]) as im:
        face = im.convert("RGB")
    reference = attack.person[1].read_bytes()
    rss_before = _rss_mb(attack.embedder_pid)
    report = []
    for what, make, statuses in HOSTILE:
        started = time.monotonic()
        r = requests.post(
            f"{attack.url}/v1/verify",
            headers=attack.headers(attack.read),
            files=[("image1", ("x", make(face))), ("image2", ("y", reference))],
            timeout=120,
        )
        seconds = time.monotonic() - started
        report.append(f"{what}: {r.status_code} {r.json().get('error', {}).get('code', '')} {seconds:.2f} s")
        assert r.status_code in statuses, f"{what}: {r.status_code} {r.text[:200]}"
        assert "Traceback" not in r.text and seconds < 20, what
        if what in SAME_FACE:
            assert r.json()["match"] is True, f"{what}: {r.json()}"
    peak, rss_after = _peak_rss_mb(attack.embedder_pid), _rss_mb(attack.embedder_pid)
    print("\n".join([*report, f"embedder RSS {rss_before:.0f} -> {rss_after:.0f} MB, peak {peak:.0f} MB"]))
    assert peak < 2048, f"embedder peaked at {peak:.0f} MB"
    assert rss_after < rss_before + 512, "embedder memory grew and stayed"
    assert requests.get(f"{attack.url}/readyz", timeout=10).status_code == 200


# -- the decoder alone, under mutation fuzzing ---------------------------------------------


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    return [
        encoded(small, "JPEG", quality=85),
        encoded(small, "JPEG", quality=85, progressive=True),
        encoded(small, "PNG"),
        encoded(small.convert("P"), "PNG", transparency=3),
        encoded(Image.fromarray(np.asarray(small.convert("L"), dtype=np.uint16) * 257), "PNG"),
        encoded(small, "WEBP"),
        encoded(small, "GIF", save_all=True, append_images=[small.rotate(90)]),
        encoded(small, "TIFF", compression="tiff_deflate"),
        encoded(small, "BMP"),
        encoded(small.convert("CMYK"), "JPEG"),
    ]


SEEDS = _seeds()
_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("max"), st.floats(0, 1), st.integers(1, 4)),
)


def _mutate(data: bytes, mutations: list[tuple]) -> bytes:
    out = bytearray(data)
    for kind, where, *args in mutations:
        at = int(where * max(len(out) - 1, 0))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            if out:
                out[at] ^= args[0]
        elif kind == "splice":
            out[at:at] = args[0]
        else:  # a run of 0xFF: a huge width, height, length or count in any header field
            out[at : at + args[0]] = b"\xff" * args[0]
    return bytes(out)


@settings(max_examples=400, deadline=2000, database=None, suppress_health_check=list(HealthCheck))
@given(seed=st.sampled_from(range(len(SEEDS))), mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_decoder_survives_mutated_files(seed: int, mutations: list[tuple]):
    """Mutated JPEG, PNG, WebP, GIF, TIFF and BMP files: a BGR image or one of our two errors,
    each within the hypothesis deadline (2 s)."""
    data = _mutate(SEEDS[seed], mutations)
    try:
        img = decode_image(data, max_pixels=MAX_PIXELS)
    except (InvalidImage, ImageTooLarge):
        return
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert img.shape[0] * img.shape[1] <= MAX_PIXELS


# -- keys, scopes, audit --------------------------------------------------------------------


def _post(attack: Attack, path: str, key: str, image: bytes, **params) -> requests.Response:
    return requests.post(
        f"{attack.url}{path}",
        headers=attack.headers(key),
        files=[("image", ("x.jpg", image))],
        params=params,
        timeout=120,
    )


@pytest.mark.stack
def test_api_keys_are_stored_as_hashes_only(attack: Attack, mysql_redis_env):
    key = cli_api_key(mysql_redis_env, "--name", "attacks-cli", "--scope", "read")
    assert (
        requests.get(f"{attack.url}/v1/galleries", headers=attack.headers(key), timeout=30).status_code == 200
    )
    with session_scope(attack.sessions) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == "attacks-cli"))
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)
        for table in ("api_keys", "audit_log", "workers", "galleries", "subjects"):
            for values in session.execute(text(f"SELECT * FROM {table}")):
                for value in values:
                    for secret in (key, attack.read, attack.admin, attack.bound):
                        assert secret not in str(value), f"an API key in clear in {table}"


@pytest.mark.stack
def test_read_only_key_cannot_change_anything(attack: Attack):
    subject, photo, _ = attack.person
    sandbox = f"{SANDBOX}read-only"
    attempts = [
        _post(attack, f"/v1/galleries/{sandbox}/subjects/x/faces", attack.read, photo.read_bytes()),
        _post(attack, f"/v1/galleries/{GALLERY}/subjects/{subject}/faces", attack.read, photo.read_bytes()),
        requests.delete(
            f"{attack.url}/v1/galleries/{GALLERY}/subjects/{subject}",
            headers=attack.headers(attack.read),
            timeout=30,
        ),
        requests.delete(
            f"{attack.url}/v1/galleries/{GALLERY}", headers=attack.headers(attack.read), timeout=30
        ),
        requests.put(
            f"{attack.url}/v1/galleries/{GALLERY}", headers=attack.headers(attack.read), json={}, timeout=30
        ),
    ]
    for r in attempts:
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    with session_scope(attack.sessions) as session:
        assert session.scalar(select(Gallery).where(Gallery.name == sandbox)) is None
    r = _post(attack, f"/v1/galleries/{GALLERY}/identify", attack.read, attack.person[2].read_bytes())
    assert r.status_code == 200 and r.json()["faces"][0]["match"] == subject


@pytest.mark.stack
def test_gallery_bound_key_stays_in_its_gallery(attack: Attack):
    subject, photo, query = attack.person
    for r in (
        _post(attack, f"/v1/galleries/{GALLERY}/identify", attack.bound, query.read_bytes()),
        _post(attack, f"/v1/galleries/{GALLERY}/subjects/intruder/faces", attack.bound, photo.read_bytes()),
        requests.get(
            f"{attack.url}/v1/galleries/{GALLERY}/subjects", headers=attack.headers(attack.bound), timeout=30
        ),
        requests.delete(
            f"{attack.url}/v1/galleries/{GALLERY}", headers=attack.headers(attack.bound), timeout=30
        ),
    ):
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    r = _post(
        attack,
        f"/v1/galleries/{BOUND_GALLERY}/subjects/{subject}/faces",
        attack.bound,
        photo.read_bytes(),
        face="main",
    )
    assert r.status_code == 201, r.text
    listing = requests.get(
        f"{attack.url}/v1/galleries", headers=attack.headers(attack.bound), timeout=30
    ).json()
    assert [g["name"] for g in listing["galleries"]] == [BOUND_GALLERY]


@pytest.mark.stack
def test_audit_log_records_enrollment_search_and_deletion_without_content(attack: Attack, lfw_people):
    photos = lfw_people[-2]
    subject = photos[0].parent.name
    with session_scope(attack.sessions) as session:
        start = session.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc()).limit(1)) or 0
        admin_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(attack.admin)))
        read_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(attack.read)))
    assert (
        _post(
            attack,
            f"/v1/galleries/{GALLERY}/subjects/{subject}/faces",
            attack.admin,
            photos[0].read_bytes(),
            face="main",
        ).status_code
        == 201
    )
    assert (
        _post(
            attack, f"/v1/galleries/{GALLERY}/subjects/{subject}/faces", attack.admin, b"not an image"
        ).status_code
        == 415
    )
    assert (
        _post(attack, f"/v1/galleries/{GALLERY}/identify", attack.read, photos[1].read_bytes()).status_code
        == 200
    )
    assert (
        requests.delete(
            f"{attack.url}/v1/galleries/{GALLERY}/subjects/{subject}",
            headers=attack.headers(attack.admin),
            timeout=30,
        ).status_code
        == 200
    )
    with session_scope(attack.sessions) as session:
        entries = [
            (e.api_key_id, e.action, e.gallery, e.subject, e.outcome)
            for e in session.scalars(select(AuditEntry).where(AuditEntry.id > start).order_by(AuditEntry.id))
        ]
    assert entries == [
        (admin_id, "enroll", GALLERY, subject, "ok"),
        (admin_id, "enroll", GALLERY, subject, "invalid_image"),
        (read_id, "identify", GALLERY, None, "ok"),
        (admin_id, "delete_subject", GALLERY, subject, "ok"),
    ]
    # The table has no place for an image or a template: short names and codes only.
    assert {c.name for c in AuditEntry.__table__.columns} == {
        "id",
        "at",
        "api_key_id",
        "action",
        "gallery",
        "subject",
        "outcome",
    }


# -- per-key rate limits, across the processes of a second gateway --------------------------


@pytest.fixture
@needs_markers("stack")
def limited_gateway(mysql_redis_env, tmp_path) -> Iterator[str]:
    """A second gunicorn gateway (2 processes) on the shared database and Redis, 20 requests/min."""
    env = {**mysql_redis_env, "VEILFACE_RATE_LIMIT_PER_MINUTE": "20"}
    with gateway_process(env, tmp_path / "gateway.log") as url:
        yield url


@pytest.mark.stack
def test_rate_limit_per_key_holds_across_gateway_processes(attack: Attack, limited_gateway: str):
    with session_scope(attack.sessions) as session:
        first = create_api_key(session, "attacks-limited-1", "read")
        second = create_api_key(session, "attacks-limited-2", "read")
    if time.time() % 60 > 50:  # keep the burst inside one one-minute window
        time.sleep(61 - time.time() % 60)
    statuses, retry_after = [], None
    for _ in range(26):  # a new connection each time: both gunicorn processes answer
        r = requests.get(f"{limited_gateway}/v1/galleries", headers=attack.headers(first), timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited"
            retry_after = int(r.headers["Retry-After"])
    assert statuses == [200] * 20 + [429] * 6, statuses
    assert retry_after is not None and 1 <= retry_after <= 60
    other = requests.get(f"{limited_gateway}/v1/galleries", headers=attack.headers(second), timeout=30)
    assert other.status_code == 200
    assert requests.get(f"{limited_gateway}/healthz", timeout=10).status_code == 200
