"""The inference seam: what the engine and the batcher need from a model, and nothing more.

A backend takes an already tokenized, padded batch and returns one `Prediction` per row.
It knows no requests, no queue and no config categories. `onnx_backend.OnnxBackend` is
the implementation; tests may supply their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from services.classifier.tokens import Encoded

__all__ = ["Backend", "Prediction"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's answer for one text.

    `probabilities` is the softmax over the model's labels (float32, sums to 1, in
    label-index order); `label` is the most probable one and `confidence` its probability.
    """

    label: str
    index: int
    confidence: float
    probabilities: npt.NDArray[np.float32]


@runtime_checkable
class Backend(Protocol):
    """A loaded classification model.

    `predict` is synchronous and may take tens of milliseconds: call it from one
    dedicated thread per backend, never from an event loop.
    """

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels in logit order."""
        ...

    @property
    def max_batch_size(self) -> int:
        """The most rows `predict` accepts in one call."""
        ...

    def health(self) -> bool:
        """Run a minimal forward pass; True when it produced finite output."""
        ...

    def predict(self, batch: Encoded) -> list[Prediction]:
        """Classify every row of `batch` (at most `max_batch_size` rows), in order.

        Raises `BackendError` when inference fails or yields non-finite or misshaped
        logits, and `ValueError` when the batch has too many rows.
        """
        ...
