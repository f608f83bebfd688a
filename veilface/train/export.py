"""Export to ONNX, check it against PyTorch, embed with it as production does, and register it.

The exported graph takes ``input`` ``[b, 3, 112, 112]`` (RGB, ``(x - 127.5) / 127.5``) and returns
``embedding`` ``[b, d]`` (unit vectors); any pose mapping is inside the graph. It runs in production
through :class:`~veilface.face.embed.Recognizer` with the built-in recogniser spec of the same
preprocessing, input/output names and dimension.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from veilface.config import Settings
from veilface.face import Recognizer, RecognizerSpec, get_spec, list_specs
from veilface.models.registry import ModelRegistry, ModelVersion
from veilface.train.backbones import MEAN, STD
from veilface.train.dataset import to_tensor

INPUT_NAME, OUTPUT_NAME = "input", "embedding"
_OPSET = 17


def export_onnx(model: nn.Module, path: Path) -> None:
    """Write ``model`` (in eval mode, on the CPU) as an ONNX graph with a dynamic batch axis."""
    model = model.cpu().eval()
    example = torch.zeros(2, 3, 112, 112)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=_OPSET,
            dynamo=False,
        )


def parity(model: nn.Module, path: Path, crops: np.ndarray) -> float:
    """Largest absolute difference between the PyTorch and ONNX Runtime embeddings of BGR ``crops``."""
    batch = to_tensor(crops)
    with torch.no_grad():
        expected = model.cpu().eval()(batch).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    return float(np.abs(actual - expected).max())


def matching_spec(dim: int) -> RecognizerSpec:
    """The built-in recogniser spec that runs the exported graph: same names, preprocessing and size."""
    for name in list_specs():
        spec = get_spec(name)
        if (spec.input_name, spec.output_name, spec.mean, spec.std, spec.rgb, spec.dim, spec.batch_fixed) == (
            INPUT_NAME,
            OUTPUT_NAME,
            MEAN,
            STD,
            True,
            dim,
            False,
        ):
            return spec
    raise ValueError(f"no built-in recogniser spec takes RGB (x-127.5)/127.5 crops to {dim}-d embeddings")


def production_embeddings(
    settings: Settings, spec: RecognizerSpec, path: Path, crops: np.ndarray
) -> np.ndarray:
    """Embeddings of BGR ``crops`` exactly as the embedder computes them (spec, flip fusion, threads)."""
    recognizer = Recognizer(spec, path, threads=settings.onnx_threads, flip_fusion=settings.flip_fusion)
    return recognizer.embed(list(crops))


def register(
    settings: Settings,
    onnx_path: Path,
    spec: RecognizerSpec,
    *,
    version: str,
    threshold: float,
    metrics: dict,
    data_digest: str,
    activate: bool,
) -> ModelVersion:
    """Copy the ONNX file into the registry folder as ``{version}.onnx`` and register it under ``spec``."""
    target = settings.models_path / f"{version}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, target)
    model = ModelVersion(
        version=version,
        spec=spec.name,
        file=str(target),
        dim=spec.dim,
        threshold=round(threshold, 6),
        metrics=metrics,
        data_digest=data_digest,
    )
    ModelRegistry(settings).register(model, activate=activate)
    return model
