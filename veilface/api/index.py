"""The front door (``GET /``): a browser goes to the console, a JSON client gets an index."""

from __future__ import annotations

from flask import Blueprint, jsonify, redirect, request, url_for

from veilface import __version__

blueprint = Blueprint("index", __name__)


@blueprint.get("/")
def index():
    """Redirect to ``/console/`` unless the client prefers JSON, which gets the service's links."""
    if request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json":
        return jsonify(
            {
                "name": "veilface",
                "version": __version__,
                "links": {
                    "openapi": url_for("openapi.openapi_json"),
                    "console": url_for("console.home"),
                    "healthz": url_for("healthz"),
                },
            }
        )
    return redirect(url_for("console.home"))
