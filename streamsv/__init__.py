"""streamsv: on-device, real-time speaker verification."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

# One BLAS thread, set before numpy loads OpenBLAS: a streaming step's matrices are small, and
# worker threads spinning against the rest of a busy device cost more than they give.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# No ONNX Runtime telemetry (its Linux wheels have it on since 1.2x): set before onnxruntime loads,
# it creates no uploader and persists no device identifier under $HOME. An offline daemon that
# holds voice profiles sends nothing anywhere, and a HOME it cannot write to then prints no
# warning before the one-line error of bad input.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .errors import StreamsvError  # noqa: E402

if TYPE_CHECKING:
    from .embedder import Embedder

__all__ = ["StreamsvError", "load_embedder"]
__version__ = "0.1.0"


def load_embedder(path: str | None = None, variant: str | None = None, threads: int = 1) -> "Embedder":
    """Load a speaker embedder: ``None`` means the shipped model (``variant`` "fp32" or "int8"),
    run by ONNX Runtime on ``threads`` intra-op threads."""
    from .embedder import load_embedder as _load

    return _load(path, variant, threads)
