"""Static check: only the key holders touch the secret key.

The key holders are the gateway side (it decrypts scores of server-key galleries) and the client
of client-key galleries (``veilface/client/``: it decrypts the scores of its own galleries with its
own key set). Workers never import the secret-key module: an embedder or a he-matcher holds public
keys only, whatever the gallery's key mode.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = (
    "veilface/crypto/secret.py",
    "veilface/api/",
    "veilface/cli.py",
    "veilface/client/",
    "veilface/eval/",
    "veilface/bench/",
    "services/gateway/",
)
#: Never allowed, whatever ALLOWED says: the workers and the code they run.
WORKER_SIDE = ("veilface/workers/", "veilface/search/", "services/embedder/", "services/he-matcher/")
PATTERN = re.compile(
    r"\bsecret_key\(|[Dd]ecryptor|import\s+veilface\.crypto\.secret|from\s+veilface\.crypto\s+import\s+[^\n]*\bsecret\b"
    r"|from\s+veilface\.crypto\.secret\s+import|import\s+veilface\.client|from\s+veilface\.client\b"
)


def _offenders(allowed: tuple[str, ...]) -> list[str]:
    offenders = []
    for folder in ("veilface", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(allowed):
                continue
            if PATTERN.search(path.read_text(encoding="utf-8", errors="replace")):
                offenders.append(relative)
    return offenders


def test_secret_key_api_only_on_the_key_holders_side():
    assert _offenders(ALLOWED) == []


def test_workers_never_import_the_secret_key_module():
    """Even if ALLOWED grew too wide, no worker-side file may touch the secret key or the client."""
    worker_files = [path for folder in WORKER_SIDE for path in (ROOT / folder).rglob("*.py")]
    assert worker_files, "the worker folders moved: update WORKER_SIDE"
    assert [path for path in _offenders(()) if path.startswith(WORKER_SIDE)] == []
