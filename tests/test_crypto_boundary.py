"""Static check: only gateway-side code touches the secret key."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = (
    "veilface/crypto/secret.py",
    "veilface/api/",
    "veilface/cli.py",
    "veilface/eval/",
    "veilface/bench/",
    "services/gateway/",
)
PATTERN = re.compile(
    r"\bsecret_key\(|[Dd]ecryptor|import\s+veilface\.crypto\.secret|from\s+veilface\.crypto\s+import\s+[^\n]*\bsecret\b"
    r"|from\s+veilface\.crypto\.secret\s+import"
)


def test_secret_key_api_only_on_the_gateway_side():
    offenders = []
    for folder in ("veilface", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(ALLOWED):
                continue
            if PATTERN.search(path.read_text(encoding="utf-8", errors="replace")):
                offenders.append(relative)
    assert offenders == []
