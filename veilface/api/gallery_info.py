"""How one gallery shows in the API: its options, its keys and the model a client embeds with.

``GET /v1/galleries/{g}`` answers with :func:`gallery_info`, and so does the creation of a
client-key gallery: a client reads the model's description there, runs the same networks
locally (:mod:`veilface.client.faces`) and checks the key fingerprint is its own.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from veilface.admin.gallery_keys import SHOWN_KEYS
from veilface.models.version import ModelVersion
from veilface.store.models import Gallery


def keys_json(row: Gallery) -> dict[str, Any]:
    """``keys`` ("deployment", "own" or "client") and the fingerprint of the gallery's own key set
    (``null`` for the deployment's)."""
    return {"keys": SHOWN_KEYS[row.key_mode], "key_fingerprint": row.key_fingerprint}


def model_description(model: ModelVersion) -> dict[str, Any]:
    """``model``'s JSON form with each network file named by its file name only: the client finds
    it in its own models folder, and the server's paths stay on the server."""
    body = model.as_dict()

    def name_files(network: dict[str, Any]) -> None:
        if "file" in network:
            network["file"] = PurePath(network["file"]).name
        for member in network.get("members", ()):
            name_files(member["network"])
        if "base" in network:
            name_files(network["base"])

    name_files(body["network"])
    return body


def gallery_info(row: Gallery, model: ModelVersion) -> dict[str, Any]:
    """The gallery ``row`` with the active ``model``: version, template dimension, threshold and
    the description a client embeds with. ``created_at`` is to the second, as MariaDB stores it:
    the answer to the creation and later reads agree."""
    return {
        "name": row.name,
        "projection": row.projection,
        **keys_json(row),
        "created_at": row.created_at.isoformat(timespec="seconds"),
        "model_version": model.version,
        "dim": model.dim,
        "threshold": model.threshold,
        "model": model_description(model),
    }
