"""Export to ONNX, check it against PyTorch, embed with it as production does, and register it.

The exported graph takes ``input`` ``[b, 3, 112, 112]`` (RGB, ``(x - 127.5) / 127.5``) and returns
``embedding`` ``[b, d]`` (unit vectors); any pose mapping is inside the graph. :func:`exported_network`
describes it (file, preprocessing, names, dimension); the registry stores that description, and
production runs it through :class:`~veilface.face.embed.Recognizer`.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from veilface.config import Settings
from veilface.face import Recognizer
from veilface.models.registry import ModelRegistry
from veilface.models.version import ModelVersion, OnnxNetwork, Preprocessing
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


def exported_network(path: Path, dim: int) -> OnnxNetwork:
    """The description of the graph :func:`export_onnx` wrote to ``path``, with ``dim``-d embeddings."""
    return OnnxNetwork(
        file=str(path),
        dim=dim,
        preprocessing=Preprocessing(mean=MEAN, std=STD, colour_order="RGB"),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )


def production_embeddings(settings: Settings, network: OnnxNetwork, crops: np.ndarray) -> np.ndarray:
    """Embeddings of BGR ``crops`` exactly as the embedder computes them (preprocessing, flip fusion,
    threads)."""
    recognizer = Recognizer(
        network.path.stem, network, threads=settings.onnx_threads, flip_fusion=settings.flip_fusion
    )
    return recognizer.embed(list(crops))


def register(
    settings: Settings,
    network: OnnxNetwork,
    *,
    version: str,
    threshold: float,
    metrics: dict,
    data_digest: str,
    activate: bool,
) -> ModelVersion:
    """Copy the network's ONNX file into the registry folder as ``{version}.onnx`` and register it with
    its description."""
    target = settings.models_path / f"{version}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(network.path, target)
    model = ModelVersion(
        version=version,
        threshold=round(threshold, 6),
        network=replace(network, file=str(target)),
        metrics=metrics,
        data_digest=data_digest,
    )
    ModelRegistry(settings).register(model, activate=activate)
    return model
