"""The shapes of CompreFace's answers: boxes, similarities in [0, 1], status fields, plugin notes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flask import Response, jsonify

from veilface.api.compreface.params import FaceOptions
from veilface.api.params import current_gateway

#: What an answer says when its request asked for face plugins (Veilface computes none).
PLUGINS_NOTE = (
    "Veilface offers no face plugins: the requested ones are ignored. Templates exist only "
    "encrypted, so 'calculator' (the embedding) is never returned."
)


def compreface_similarity(cosine: float) -> float:
    """CompreFace's similarity in [0, 1] from Veilface's cosine c in [-1, 1]: (1 + c) / 2."""
    return round(min(1.0, max(0.0, (1.0 + cosine) / 2.0)), 5)


def box_json(box: Sequence[float], score: float) -> dict[str, Any]:
    """CompreFace's box from Veilface's (x, y, width, height) in pixels and detector score."""
    x, y, width, height = box
    return {
        "probability": round(score, 5),
        "x_max": round(x + width),
        "y_max": round(y + height),
        "x_min": max(0, round(x)),
        "y_min": max(0, round(y)),
    }


def plugins_versions() -> dict[str, str]:
    """The ``plugins_versions`` of a status answer: the detector and the active model."""
    gw = current_gateway()
    return {
        "detector": f"veilface.{gw.settings.detector}",
        "calculator": f"veilface.{gw.registry.active().version}",
    }


def execution_time(started: float) -> dict[str, float]:
    """Veilface times the whole request (detection, encryption and encrypted matching)."""
    return {"total": round((time.perf_counter() - started) * 1000.0, 1)}


def face_reply(faces: list[dict], options: FaceOptions, started: float) -> Response:
    """``{"result": faces}`` plus the status fields and the plugin note when asked for."""
    body: dict[str, Any] = {"result": faces}
    if options.status:
        for face in faces:
            face["execution_time"] = execution_time(started)
        body["plugins_versions"] = plugins_versions()
    return jsonify(with_plugin_note(body, options))


def with_plugin_note(body: dict[str, Any], options: FaceOptions) -> dict[str, Any]:
    """``body`` with the ignored plugins and :data:`PLUGINS_NOTE` when the request asked for any."""
    if options.plugins:
        body["ignored_face_plugins"] = list(options.plugins)
        body["note"] = PLUGINS_NOTE
    return body
