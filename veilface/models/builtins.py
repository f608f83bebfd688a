"""The built-in model versions: the pretrained recognisers under ``{shared_dir}/models``.

Each is declared once, here, with everything needed to run it and decide with it. Their files
are relative: the registry places them in the shared models folder.
"""

from __future__ import annotations

from veilface.models.version import Ensemble, EnsembleMember, ModelVersion, OnnxNetwork, Preprocessing

EDGEFACE_XS = OnnxNetwork("edgeface_xs.onnx", dim=512, preprocessing=Preprocessing(mean=127.5, std=127.5))
EDGEFACE_XXS = OnnxNetwork("edgeface_xxs.onnx", dim=512, preprocessing=Preprocessing(mean=127.5, std=127.5))
MOBILEFACENET = OnnxNetwork(
    "mobilefacenet.onnx",
    dim=128,
    preprocessing=Preprocessing(mean=127.5, std=128.0),
    output_name="output",
    batch_fixed=True,
)

#: Thresholds are cosine similarities at FMR 1e-4 with flip fusion (the default), calibrated by
#: ``make eval`` on development impostor pairs (CFP identities 001-250, never the evaluation pairs)
#: and rounded up: see docs/accuracy.md.
BUILTINS: dict[str, ModelVersion] = {
    model.version: model
    for model in (
        ModelVersion("edgeface_xs", threshold=0.3356, network=EDGEFACE_XS),
        ModelVersion("edgeface_xxs", threshold=0.3590, network=EDGEFACE_XXS),
        ModelVersion("mobilefacenet", threshold=0.6663, network=MOBILEFACENET),
        ModelVersion(
            "edgeface_xs_xxs",
            threshold=0.3316,
            network=Ensemble(
                (EnsembleMember("edgeface_xs", EDGEFACE_XS), EnsembleMember("edgeface_xxs", EDGEFACE_XXS))
            ),
        ),
    )
}


def builtin(name: str) -> ModelVersion:
    """The built-in version ``name`` (its files relative); ``KeyError`` naming the known ones."""
    try:
        return BUILTINS[name]
    except KeyError:
        raise KeyError(f"unknown built-in model {name!r}; known: {', '.join(sorted(BUILTINS))}") from None
