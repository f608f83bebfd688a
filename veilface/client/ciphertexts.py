"""What the client uploads: templates and probes encrypted under its own public key, in base64.

Templates are encrypted in their delta form for the slot the server reserved
(:func:`~veilface.crypto.public.encrypt_template`), probes replicated over every slot
(:func:`~veilface.crypto.public.encrypt_probe`): exactly what the embedder makes with the
deployment's key, so the matcher scores them as it scores any other.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template


def b64(blob: bytes) -> str:
    """``blob`` as ASCII base64, as the JSON bodies carry ciphertexts."""
    return base64.b64encode(blob).decode("ascii")


def encrypted_templates(
    ctx: PublicContext, vectors: Sequence[np.ndarray], positions: Sequence[dict[str, int]]
) -> list[dict[str, Any]]:
    """One upload entry ``{"block", "slot", "ciphertext"}`` per template, each in its reserved position.

    ``positions`` are the server's answer to a slot reservation, one per vector, in order.
    """
    if len(vectors) != len(positions):
        raise ValueError(f"{len(vectors)} templates for {len(positions)} reserved slots")
    return [
        {
            "block": int(at["block"]),
            "slot": int(at["slot"]),
            "ciphertext": b64(encrypt_template(ctx, v, int(at["slot"]))),
        }
        for v, at in zip(vectors, positions, strict=True)
    ]


def encrypted_probes(ctx: PublicContext, vectors: Sequence[np.ndarray]) -> list[str]:
    """One base64 probe ciphertext per vector."""
    return [b64(encrypt_probe(ctx, vector)) for vector in vectors]
