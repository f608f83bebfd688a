"""Ciphertext bytes: SEAL's own compressed (zstd) serialization behind a small header.

The header names the kind of ciphertext, the template dimension and the first eight bytes
of the key-set fingerprint, so that bytes of another deployment or another purpose are
refused before SEAL parses them. SEAL's ``save``/``load`` only speak file paths in
TenSEAL's bindings; an in-memory file (``memfd``) carries the bytes, nothing touches disk.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from enum import IntEnum

import tenseal.sealapi as sealapi

from veilface.errors import InvalidCiphertext

MAGIC = b"VFC1"
_HEADER = struct.Struct(">4sBB8s")
_local = threading.local()


class Kind(IntEnum):
    """What a ciphertext is for."""

    TEMPLATE = 1
    PROBE = 2
    DIAGONAL = 3
    SCORE = 4


def _memfd() -> tuple[int, str]:
    fd = getattr(_local, "fd", None)
    if fd is None:
        fd = os.memfd_create("veilface-ct", os.MFD_CLOEXEC)
        _local.fd = fd
    return fd, f"/proc/self/fd/{fd}"


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def dumps(ciphertext: sealapi.Ciphertext, kind: Kind, fingerprint: str, dim: int = 0) -> bytes:
    """Serialize ``ciphertext`` (SEAL format, zstd) with the Veilface header."""
    fd, path = _memfd()
    ciphertext.save(path)
    return _HEADER.pack(MAGIC, kind, dim.bit_length(), bytes.fromhex(fingerprint[:16])) + _read_all(fd)


def peek_dim(blob: bytes) -> int:
    """The template dimension recorded in the header (0 for blocks and scores)."""
    if len(blob) < _HEADER.size or blob[:4] != MAGIC:
        raise InvalidCiphertext("not a Veilface ciphertext")
    log_dim = blob[5]
    return 1 << (log_dim - 1) if log_dim else 0


def loads(
    blob: bytes,
    *,
    seal_context,
    fingerprint: str,
    kind: Kind,
    parms_ids: list[list[int]],
    sizes: tuple[int, ...] = (2,),
) -> sealapi.Ciphertext:
    """Parse ``blob``; raise :class:`InvalidCiphertext` unless it is a well-formed ``kind``
    ciphertext of this key set at one of ``parms_ids`` with a size in ``sizes``."""
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) <= _HEADER.size:
        raise InvalidCiphertext("ciphertext too short")
    magic, blob_kind, _log_dim, key_prefix = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise InvalidCiphertext("not a Veilface ciphertext")
    if key_prefix != bytes.fromhex(fingerprint[:16]):
        raise InvalidCiphertext("ciphertext of another key set")
    if blob_kind != kind:
        raise InvalidCiphertext(f"expected a {kind.name.lower()} ciphertext")
    fd, path = _memfd()
    os.ftruncate(fd, 0)
    os.pwrite(fd, bytes(blob[_HEADER.size :]), 0)
    ciphertext = sealapi.Ciphertext()
    try:
        ciphertext.load(seal_context, path)
    except Exception as exc:  # SEAL raises several C++ exception types through pybind
        raise InvalidCiphertext(f"malformed ciphertext: {exc}") from None
    if list(ciphertext.parms_id()) not in parms_ids:
        raise InvalidCiphertext("ciphertext at an unexpected level")
    if ciphertext.size() not in sizes or not ciphertext.is_ntt_form():
        raise InvalidCiphertext("ciphertext of an unexpected size or form")
    if not (math.isfinite(ciphertext.scale) and ciphertext.scale > 1.0):
        raise InvalidCiphertext("ciphertext with an invalid scale")
    return ciphertext
