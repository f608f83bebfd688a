"""The OpenAPI 3.1 document of API v1, served at ``/openapi.json``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from veilface import __version__, errors
from veilface.models.projection import NAME_PATTERN

blueprint = Blueprint("openapi", __name__)

#: Every code an error body may carry, as veilface/errors.py declares them.
ERROR_CODES = errors.codes()

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string", "enum": ERROR_CODES}, "message": {"type": "string"}},
        }
    },
}
_VERDICT = {
    "type": "object",
    "required": ["match", "similarity", "threshold"],
    "properties": {
        "match": {"type": "boolean"},
        "similarity": {"type": ["number", "null"]},
        "threshold": {"type": "number"},
    },
}
#: A gallery's keys: ``keys`` is "deployment", "own" (a key set of its own) or "client"; the
#: fingerprint is that of its own key set, null for the deployment's.
_GALLERY = {
    "type": "object",
    "required": ["keys", "key_fingerprint"],
    "properties": {
        "keys": {"type": "string", "enum": ["deployment", "own", "client"]},
        "key_fingerprint": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "projection": {"type": ["string", "null"]},
    },
}
_BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}


def _ok(schema: dict, status: str = "200") -> dict:
    return {status: {"description": "OK", "content": {"application/json": {"schema": schema}}}}


def _errors(*statuses: int) -> dict:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(s): {"description": "error", **ref} for s in statuses}


def _multipart(*fields: str, array: bool = False) -> dict:
    binary = {"type": "string", "format": "binary"}
    props = {f: ({"type": "array", "items": binary} if array else binary) for f in fields}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": list(fields), "properties": props}
            }
        },
    }


def _param(name: str, where: str = "path", schema: dict | None = None, required: bool | None = None) -> dict:
    return {
        "name": name,
        "in": where,
        "required": where == "path" if required is None else required,
        "schema": schema
        or {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^/\\x00-\\x1f]+$"},
    }


GALLERY = _param("gallery")
SUBJECT = _param(
    "subject", schema={"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f]+$"}
)
IMAGE_ERRORS = (400, 401, 403, 413, 415, 422, 429, 503)


def document() -> dict:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Veilface API", "version": __version__},
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": {
            "/v1/galleries/{gallery}/subjects/{subject}/faces": {
                "post": {
                    "summary": "Enroll one or more photos of a subject (gallery created on first use)",
                    "parameters": [
                        GALLERY,
                        SUBJECT,
                        _param("face", "query", {"type": "string", "enum": ["main"]}),
                    ],
                    "requestBody": _multipart("image", array=True),
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "required": ["subject", "enrolled", "template_ids", "model_version"],
                            },
                            "201",
                        ),
                        # 404: a subject name with a control character matches no route
                        **_errors(*IMAGE_ERRORS, 404, 409),
                    },
                }
            },
            "/v1/galleries/{gallery}/identify": {
                "post": {
                    "summary": "Identify every face of a photo against a gallery",
                    "parameters": [
                        GALLERY,
                        _param("top_k", "query", {"type": "integer", "minimum": 1, "maximum": 100}),
                        _param("threshold", "query", {"type": "number", "minimum": -1, "maximum": 1}),
                    ],
                    "requestBody": _multipart("image"),
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "required": ["faces"],
                                "properties": {
                                    "faces": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "box": _BOX,
                                                "score": {"type": "number"},
                                                "match": {"type": ["string", "null"]},
                                                "candidates": {"type": "array"},
                                            },
                                        },
                                    }
                                },
                            }
                        ),
                        **_errors(*IMAGE_ERRORS, 404, 409),
                    },
                }
            },
            "/v1/galleries/{gallery}/subjects/{subject}/verify": {
                "post": {
                    "summary": "Verify a photo against an enrolled subject",
                    "parameters": [GALLERY, SUBJECT],
                    "requestBody": _multipart("image"),
                    "responses": {**_ok(_VERDICT), **_errors(*IMAGE_ERRORS, 404, 409)},
                }
            },
            "/v1/verify": {
                "post": {
                    "summary": "Compare two photos (1:1, no gallery)",
                    "requestBody": _multipart("image1", "image2"),
                    "responses": {**_ok(_VERDICT), **_errors(*IMAGE_ERRORS)},
                }
            },
            "/v1/galleries": {
                "get": {
                    "summary": "List galleries",
                    "responses": {**_ok({"type": "object"}), **_errors(401, 429, 503)},
                }
            },
            "/v1/galleries/{gallery}": {
                "put": {
                    "summary": "Create a gallery with options (compact templates, a key set of its own)",
                    "parameters": [GALLERY],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "projection": {"type": ["string", "null"], "pattern": NAME_PATTERN},
                                        "keys": {"type": "string", "enum": ["deployment", "own"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {**_ok(_GALLERY), **_errors(400, 401, 403, 404, 409, 429, 503)},
                },
                "get": {
                    "summary": "One gallery: options, keys, the active model's version and threshold",
                    "parameters": [GALLERY],
                    "responses": {**_ok(_GALLERY), **_errors(401, 403, 404, 429, 503)},
                },
                "delete": {
                    "summary": "Delete a gallery and every ciphertext in it (and its own secret key)",
                    "parameters": [GALLERY],
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "required": ["gallery", "deleted", "keys_destroyed"],
                                "properties": {
                                    "gallery": {"type": "string"},
                                    "deleted": {"type": "boolean"},
                                    "keys_destroyed": {"type": "boolean"},
                                },
                            }
                        ),
                        **_errors(401, 403, 404, 429, 503),
                    },
                },
            },
            "/v1/galleries/{gallery}/subjects": {
                "get": {
                    "summary": "List subjects (with re-enrollment needs)",
                    "parameters": [GALLERY],
                    "responses": {**_ok({"type": "object"}), **_errors(401, 404, 429, 503)},
                }
            },
            "/v1/galleries/{gallery}/subjects/{subject}": {
                "get": {
                    "summary": "One subject and its templates",
                    "parameters": [GALLERY, SUBJECT],
                    "responses": {**_ok({"type": "object"}), **_errors(401, 404, 429, 503)},
                },
                "delete": {
                    "summary": "Delete a subject and every ciphertext of it",
                    "parameters": [GALLERY, SUBJECT],
                    "responses": {**_ok({"type": "object"}), **_errors(401, 403, 404, 429, 503)},
                },
            },
            "/": {
                "get": {
                    "summary": "Front door: a browser is sent to /console/, a JSON client gets links",
                    "security": [],
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "required": ["name", "version", "links"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "links": {"type": "object"},
                                },
                            }
                        ),
                        "302": {"description": "redirect to the console (/console/)"},
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "security": [], "responses": _ok({"type": "object"})}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: {ready} for anyone; with an admin key, every check "
                    "(database, broker, workers, keys, model)",
                    "security": [{}, {"apiKey": []}, {"bearer": []}],
                    "responses": {
                        **_ok({"type": "object"}),
                        "503": {"description": "not ready"},
                        **_errors(401, 403),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, for an admin key or VEILFACE_METRICS_TOKEN",
                    "responses": {"200": {"description": "text"}, **_errors(401, 403)},
                }
            },
            **client_key_paths(),
        },
    }


_BASE64_LIST = {"type": "array", "minItems": 1, "items": {"type": "string", "contentEncoding": "base64"}}


def _json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def client_key_paths() -> dict:
    """The routes of client-key galleries (``veilface/api/client_keys.py``): ciphertexts only."""
    return {
        "/v1/galleries/{gallery}/client-keys": {
            "put": {
                "summary": "Create a client-key gallery from the client's public key set (no secret key)",
                "parameters": [GALLERY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "responses": {
                    **_ok(
                        {
                            "type": "object",
                            "required": [
                                "name",
                                "keys",
                                "key_fingerprint",
                                "model_version",
                                "dim",
                                "threshold",
                            ],
                        },
                        "201",
                    ),
                    **_errors(400, 401, 403, 409, 413, 429, 503),
                },
            }
        },
        "/v1/galleries/{gallery}/slots": {
            "post": {
                "summary": "Reserve template positions of a client-key gallery",
                "parameters": [GALLERY],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["count"],
                        "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 64}},
                    }
                ),
                "responses": {
                    **_ok({"type": "object", "required": ["model_version", "dim", "slots"]}, "201"),
                    **_errors(400, 401, 403, 404, 409, 429, 503),
                },
            }
        },
        "/v1/galleries/{gallery}/subjects/{subject}/templates": {
            "post": {
                "summary": "Store template ciphertexts a client encrypted for its reserved positions",
                "parameters": [GALLERY, SUBJECT],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["templates"],
                        "properties": {
                            "templates": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 64,
                                "items": {
                                    "type": "object",
                                    "required": ["block", "slot", "ciphertext"],
                                    "properties": {
                                        "block": {"type": "integer", "minimum": 0},
                                        "slot": {"type": "integer", "minimum": 0},
                                        "ciphertext": {"type": "string", "contentEncoding": "base64"},
                                    },
                                },
                            }
                        },
                    }
                ),
                "responses": {
                    **_ok({"type": "object", "required": ["subject", "templates"]}, "201"),
                    **_errors(400, 401, 403, 404, 409, 413, 429, 503),
                },
            }
        },
        "/v1/galleries/{gallery}/search": {
            "post": {
                "summary": "Score probe ciphertexts on a client-key gallery; the answer is score ciphertexts",
                "parameters": [GALLERY],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["probes"],
                        "properties": {"probes": _BASE64_LIST, "subject": {"type": "string", "minLength": 1}},
                    }
                ),
                "responses": {
                    **_ok({"type": "object", "required": ["model_version", "threshold", "probes"]}),
                    **_errors(400, 401, 403, 404, 409, 413, 429, 503),
                },
            }
        },
    }


@blueprint.get("/openapi.json")
def openapi_json():
    return jsonify(document())
