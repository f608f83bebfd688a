"""End to end through ``veilface client`` on the stack (MariaDB + Redis): a client-key gallery.

What it shows (issue 19, "Must show"): the client enrolls LFW identities and identifies another
photo of each with the right top-1, through the command line alone; then every MariaDB row, Redis
value, file the stack wrote (logs, temporary files) and file in the gateway's key folder is free
of the client's templates, photos, score ciphertexts, score values and secret key.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import leaks
from tests.support import ADMIN_KEY, REDIS_URL
from veilface.client.api import GalleryApi
from veilface.client.ciphertexts import encrypted_probes
from veilface.client.keys import ClientKeys
from veilface.config import load_settings
from veilface.face.pipeline import FacePipeline
from veilface.models.registry import ModelRegistry

CLIENT_GALLERY = "client-e2e"
CLIENT_IDENTITIES = 10
ROOT = Path(__file__).resolve().parent.parent


def _client_cli(shared_dir: Path, *args: str) -> dict:
    """``python -m veilface client ARGS`` with none of the server's settings; its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEILFACE_")}
    env.update(VEILFACE_SHARED_DIR=str(shared_dir), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "veilface", "client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


@pytest.fixture(scope="module")
def client_run(stack, mysql_redis_env, lfw_people, tmp_path_factory) -> dict:
    """Keys made by the client, a client-key gallery, ``CLIENT_IDENTITIES`` identities enrolled and
    identified through the command line; what the scan must not find anywhere on the server."""
    shared_dir = load_settings(mysql_redis_env).shared_dir
    keys_dir = tmp_path_factory.mktemp("client") / "keys"
    _client_cli(shared_dir, "keys", "init", "--dir", str(keys_dir))
    common = [
        "--url",
        stack.url,
        "--api-key",
        ADMIN_KEY,
        "--keys",
        str(keys_dir),
        "--gallery",
        CLIENT_GALLERY,
    ]
    created = _client_cli(shared_dir, "create-gallery", *common)
    keys = ClientKeys.load(keys_dir)
    assert created["keys"] == "client" and created["key_fingerprint"] == keys.fingerprint

    people = lfw_people[-CLIENT_IDENTITIES:]  # not the identities tests/test_e2e.py enrolls
    for photos in people:
        enrolled = _client_cli(
            shared_dir, "enroll", *common, "--subject", photos[0].parent.name, "--main-face", str(photos[0])
        )
        assert enrolled["subject"] == photos[0].parent.name and len(enrolled["templates"]) == 1

    similarities, correct = [], 0
    for photos in people:
        faces = _client_cli(shared_dir, "identify", *common, str(photos[1]))["faces"]
        assert faces, f"no face in {photos[1]}"
        best = faces[0]
        correct += bool(best["candidates"]) and best["candidates"][0]["subject"] == photos[0].parent.name
        similarities.extend(c["similarity"] for face in faces for c in face["candidates"])

    # The score ciphertexts the server hands out: one search by the library, to know their bytes.
    settings = load_settings(mysql_redis_env)
    pipeline = FacePipeline.from_model(settings, ModelRegistry(settings).active())
    probe = pipeline.analyze(people[0][1].read_bytes())[0].embedding
    answer = GalleryApi(stack.url, ADMIN_KEY).search(CLIENT_GALLERY, encrypted_probes(keys.public, [probe]))
    score_blobs = [base64.b64decode(s["ciphertext"]) for s in answer["probes"][0]["scores"]]

    photos = [photo for person in people for photo in person[:2]]
    vectors = np.array([face.embedding for photo in photos for face in pipeline.analyze(photo.read_bytes())])
    return {
        "people": people,
        "correct": correct,
        "keys_dir": keys_dir,
        "fingerprint": keys.fingerprint,
        "photos": photos,
        "vectors": vectors,
        "similarities": similarities,
        "score_blobs": score_blobs,
    }


@pytest.mark.stack
def test_client_enrolls_and_identifies_lfw_through_the_command_line(client_run):
    assert client_run["correct"] == CLIENT_IDENTITIES, f"top-1 right on {client_run['correct']}"


def _score_needles(similarities: list[float], score_blobs: list[bytes]) -> list[bytes]:
    """The decrypted scores as the client printed them (their shortest text, as JSON writes them, if
    at least 7 characters long; and float64: not float32, whose 4 bytes would match by chance in
    megabytes of ciphertexts) and three 64-byte windows of each score ciphertext: none may be kept
    by the server once answered."""
    needles = [np.float64(value).tobytes() for value in similarities]
    needles += [text.encode() for value in similarities if len(text := repr(value)) >= 7]
    for blob in score_blobs:
        needles += [blob[k : k + 64] for k in (len(blob) // 4, len(blob) // 2, 3 * len(blob) // 4)]
    return needles


def _secret_only(keys_dir: Path, windows: int = 32, width: int = 64) -> list[bytes]:
    """``width``-byte windows of the client's ``secret.ctx`` that its public key set lacks: the
    file also holds the public key, which the server stores by design."""
    secret, public = (keys_dir / "secret.ctx").read_bytes(), (keys_dir / "public.ctx").read_bytes()
    spread = (secret[k : k + width] for k in range(0, len(secret) - width, len(secret) // windows))
    own = [window for window in spread if window not in public]
    assert len(own) >= windows // 4, "the secret key file is mostly its public key?"
    return own


@pytest.mark.stack
def test_client_key_gallery_leaves_no_template_photo_score_or_secret_key_on_the_server(
    stack, mysql_redis_env, client_run
):
    """Every MariaDB row, Redis value, file the stack wrote (its logs and temporary files: the
    stack's TMPDIR is inside its var folder) and the gateway's key folder are free of the client's
    templates (plaintext embeddings), photo bytes, score ciphertexts, score values and secret key."""
    settings = load_settings(mysql_redis_env)
    vectors, keys_dir = client_run["vectors"], client_run["keys_dir"]
    secret = _secret_only(keys_dir)
    needles = [
        *leaks.needles(client_run["photos"]),
        *secret,
        *_score_needles(client_run["similarities"], client_run["score_blobs"]),
    ]
    # The scanner finds what it looks for, raw or wrapped.
    assert leaks.leak(vectors[3].astype(np.float32).tobytes(), vectors, needles)
    assert leaks.leak(json.dumps(vectors[4].tolist()).encode(), vectors, needles)
    assert leaks.leak(base64.b64encode(client_run["photos"][5].read_bytes()), vectors, needles)
    assert leaks.leak(b"log line " + secret[0], vectors, needles)
    assert leaks.leak(base64.b64encode(client_run["score_blobs"][0]), vectors, needles)
    assert leaks.leak(json.dumps({"similarity": client_run["similarities"][0]}).encode(), vectors, needles)

    written = [path for path in settings.var_dir.rglob("*") if path.is_file()]
    assert any(path.suffix == ".log" for path in written)
    # The gateway's key folder: deployment keys and per-gallery secret keys (under galleries/).
    gateway_keys = [path for path in settings.keys_path.rglob("*") if path.is_file()]
    assert gateway_keys
    _, found = leaks.scan_dump(
        vectors,
        needles,
        database_url=mysql_redis_env["VEILFACE_DATABASE_URL"],
        redis_url=REDIS_URL,
        files=written + gateway_keys,
    )
    assert found == []
    for path in gateway_keys:
        assert client_run["fingerprint"].encode() not in path.read_bytes(), (
            f"{path} names the client's key set"
        )
    assert not keys_dir.is_relative_to(settings.keys_path) and not keys_dir.is_relative_to(settings.var_dir)
