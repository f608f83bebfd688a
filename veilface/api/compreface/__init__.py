"""CompreFace-compatible REST API under ``/api/v1``: existing clients, encrypted templates.

A Veilface API key bound to a gallery (``veilface keys create-api-key --gallery NAME
--compreface``) plays the part of a CompreFace face service: every call made with it acts
on that gallery. Enrollment, identification and verification go through
:class:`~veilface.api.gateway.Gateway`, so templates are made, stored and matched exactly
as through ``/v1``: only as CKKS ciphertexts. Answers and errors keep CompreFace's field
names, status codes and ``{"message", "code"}`` error bodies; docs/compreface.md lists
what is supported and what differs.

The modules: :mod:`.errors` (CompreFace's error bodies and codes), :mod:`.auth` (a key as a
face service), :mod:`.ids` (image ids), :mod:`.params` (request options),
:mod:`.replies` (answer shapes) and :mod:`.views` (the routes).
"""

from veilface.api.compreface.views import blueprint

__all__ = ["blueprint"]
