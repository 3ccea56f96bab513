"""streamsv: on-device, real-time speaker verification."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import StreamsvError

if TYPE_CHECKING:
    from .embedder import Embedder

__all__ = ["StreamsvError", "load_embedder"]
__version__ = "0.1.0"


def load_embedder(path: str | None = None) -> "Embedder":
    """Load a speaker embedder; ``None`` means the shipped default weights."""
    from .embedder import load_embedder as _load

    return _load(path)
