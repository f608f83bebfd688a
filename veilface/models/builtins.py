"""Registry of the built-in face recognisers: how to feed each ONNX file and read its output."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecognizerSpec:
    """Everything needed to run one recogniser ONNX file.

    Pixels are normalised as ``(x - mean) / std`` on an aligned 112x112 crop, in RGB order when
    ``rgb`` is true (BGR otherwise). ``batch_fixed`` means the graph only accepts a batch of one.
    """

    name: str
    file: str
    input_name: str
    output_name: str
    mean: float
    std: float
    rgb: bool
    dim: int
    batch_fixed: bool


_SPECS: dict[str, RecognizerSpec] = {
    spec.name: spec
    for spec in (
        RecognizerSpec(
            name="edgeface_xs",
            file="edgeface_xs.onnx",
            input_name="input",
            output_name="embedding",
            mean=127.5,
            std=127.5,
            rgb=True,
            dim=512,
            batch_fixed=False,
        ),
        RecognizerSpec(
            name="edgeface_xxs",
            file="edgeface_xxs.onnx",
            input_name="input",
            output_name="embedding",
            mean=127.5,
            std=127.5,
            rgb=True,
            dim=512,
            batch_fixed=False,
        ),
        RecognizerSpec(
            name="mobilefacenet",
            file="mobilefacenet.onnx",
            input_name="input",
            output_name="output",
            mean=127.5,
            std=128.0,
            rgb=True,
            dim=128,
            batch_fixed=True,
        ),
    )
}


def list_specs() -> list[str]:
    """Names of the built-in recognisers, sorted."""
    return sorted(_SPECS)


def get_spec(name: str) -> RecognizerSpec:
    """Return the spec of the built-in recogniser ``name``; raise ``KeyError`` naming the known ones."""
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown recognizer {name!r}; known: {', '.join(list_specs())}") from None
