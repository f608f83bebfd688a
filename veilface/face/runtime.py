"""ONNX Runtime sessions configured the same way for every model of the face pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort


def default_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build offers it, then the CPU."""
    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available]


def create_session(
    model_path: str | Path, *, threads: int = 1, providers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """Open ``model_path`` with ``threads`` intra-op threads on ``providers`` (default: see above)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=list(providers or default_providers())
    )
