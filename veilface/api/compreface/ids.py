"""CompreFace ``image_id`` values: UUIDs that carry a Veilface template id (reversible, not secret)."""

from __future__ import annotations

import uuid

#: High 64 bits of every image id: "veil" "fa", then UUID version 8 (custom layout, RFC 9562).
_IMAGE_ID_PREFIX = 0x7665696C_6661_8000
_IMAGE_ID_VARIANT = 0b10 << 62
_TEMPLATE_ID_MASK = (1 << 62) - 1


def image_id_for(template_id: int) -> str:
    """The CompreFace ``image_id`` (a UUID) of a Veilface template id."""
    return str(uuid.UUID(int=(_IMAGE_ID_PREFIX << 64) | _IMAGE_ID_VARIANT | template_id))


def template_id_of(image_id: str) -> int | None:
    """The template id carried by ``image_id``; ``None`` if it is no Veilface image id."""
    try:
        value = uuid.UUID(image_id).int
    except ValueError:
        return None
    if value >> 64 != _IMAGE_ID_PREFIX or (value >> 62) & 0b11 != _IMAGE_ID_VARIANT >> 62:
        return None
    return value & _TEMPLATE_ID_MASK
