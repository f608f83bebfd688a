"""What a client key holder uploads, checked before the server uses any of it.

A client-key gallery (``docs/privacy.md``) is created with the client's public key set and
filled with template ciphertexts the client encrypted itself (:mod:`veilface.client`); its
searches bring probe ciphertexts. The server cannot decrypt any of them, so it checks what
it can: a key set is readable, holds no secret key, has this deployment's CKKS parameters
(which are within the 128-bit security bound) and every Galois key the engine rotates by; a
ciphertext has the Veilface header of that key set, its kind, the level and exact scale of a
fresh encryption, the gallery's template dimension and a bounded size.
"""

from __future__ import annotations

from veilface.crypto.codec import Kind, peek_dim
from veilface.crypto.params import CkksParams
from veilface.crypto.public import PublicContext
from veilface.errors import InvalidCiphertext, InvalidKeySet, SecretKeyInPublicContext

#: Largest public key set accepted (the deployment's own is about 15.8 MB).
MAX_KEY_SET_BYTES = 32 * 1024 * 1024
#: Largest template or probe ciphertext accepted (a fresh one is about 400 KB).
MAX_CIPHERTEXT_BYTES = 1024 * 1024


def check_public_key_set(blob: bytes, expected: CkksParams) -> PublicContext:
    """The public context of an uploaded key set; :class:`InvalidKeySet` saying why otherwise."""
    if len(blob) > MAX_KEY_SET_BYTES:
        raise InvalidKeySet(f"a public key set of {len(blob)} bytes exceeds {MAX_KEY_SET_BYTES}")
    try:
        context = PublicContext.from_bytes(blob)
    except SecretKeyInPublicContext:
        raise InvalidKeySet("the key set holds a secret key: upload its public part only") from None
    except InvalidCiphertext:
        raise InvalidKeySet("not a serialized TenSEAL public context") from None
    except (ValueError, RuntimeError) as exc:  # parameters beyond the security bound, keys missing
        raise InvalidKeySet(f"unusable public context: {exc}") from None
    if context.params != expected:
        raise InvalidKeySet(f"CKKS parameters {context.params} are not this deployment's {expected}")
    element = context.seal.key_context_data().galois_tool().get_elt_from_step
    missing = [s for s in expected.galois_steps if not context.galois_keys.has_key(element(s))]
    if missing:
        raise InvalidKeySet(f"the key set lacks the Galois keys of rotation steps {missing}")
    return context


def check_uploaded_ciphertext(context: PublicContext, blob: bytes, kind: Kind, dim: int) -> bytes:
    """``blob`` if it is a fresh ``kind`` ciphertext of ``context``'s key set for templates of
    ``dim`` values; :class:`InvalidCiphertext` saying why otherwise."""
    if len(blob) > MAX_CIPHERTEXT_BYTES:
        raise InvalidCiphertext(f"a ciphertext of {len(blob)} bytes exceeds {MAX_CIPHERTEXT_BYTES}")
    ciphertext = context.loads(blob, kind, level=context.top_level)
    if ciphertext.scale != context.params.scale:
        raise InvalidCiphertext("ciphertext with a scale no fresh encryption has")
    if peek_dim(blob) != dim:
        raise InvalidCiphertext(f"ciphertext for {peek_dim(blob)}-D templates; this gallery's are {dim}-D")
    return blob
