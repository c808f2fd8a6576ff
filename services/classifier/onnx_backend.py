"""The `Backend` on one onnxruntime session (CUDA when asked for and obtained, else CPU).

onnxruntime does not raise when the CUDA provider fails to load (missing CUDA or cuDNN
libraries, no GPU): it logs to stderr and quietly runs on the CPU, and a GPU build lists
CUDA as "available" either way. So the providers the session really got are read back
after creation; `require_gpu` turns a fallback into a `ProviderError`, otherwise it is
logged and visible as `gpu_fallback`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from services.classifier.backend import Prediction
from services.classifier.errors import BackendError, ModelDirError, ProviderError
from services.classifier.model_dir import ModelDir
from services.classifier.tokens import Encoded
from services.common.log import get_logger

__all__ = ["CPU", "CUDA", "OnnxBackend", "softmax"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

#: Output names tried in order, as upstream does; a graph with one output uses that one.
_OUTPUT_NAMES = ("logits", "output", "predictions")
_INT_TYPES: dict[str, type[np.signedinteger[Any]]] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Row-wise softmax of `[n, k]` logits, computed stably, as float32."""
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


class OnnxBackend:
    """One onnxruntime inference session over a classification graph.

    Not thread-safe by contract: one thread calls `predict` (onnxruntime would serialise
    concurrent runs anyway). `provider` is the provider the session actually runs on.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        labels: Sequence[str],
        *,
        use_cpu: bool = True,
        require_gpu: bool = False,
        device_id: int = 0,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        max_batch_size: int = 64,
        spin_wait: bool = False,
    ) -> None:
        """Open a session on `onnx_path`, whose logits are ordered like `labels`.

        `use_cpu=False` asks for CUDA (device `device_id`) when this onnxruntime build has
        it; `require_gpu=True` raises `ProviderError` unless CUDA was obtained.
        `intra_op_threads=0` lets onnxruntime use one thread per physical core, the extra
        ones pinned to their cores (a pinned thread waits while its core runs other work): set
        it to the cores this process may use, or it competes with its neighbours.
        `spin_wait=False` lets idle intra-op threads sleep instead of busy-waiting for the
        next batch (onnxruntime's default spins, which burns CPU between requests).
        Raises `ModelDirError` when the graph cannot be loaded or does not fit the contract.
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._labels = tuple(labels)
        self._max_batch_size = max_batch_size
        self.onnx_path = Path(onnx_path)
        wanted_gpu = not use_cpu
        providers: list[str | tuple[str, dict[str, Any]]] = [CPU]
        if wanted_gpu and CUDA in ort.get_available_providers():
            providers = [(CUDA, {"device_id": device_id}), CPU]
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(self.onnx_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises pybind exception types
            raise ModelDirError(f"{self.onnx_path}: onnxruntime cannot load it: {exc}") from exc
        self.provider: str = self._session.get_providers()[0]
        self.gpu_fallback = wanted_gpu and self.provider != CUDA
        if self.gpu_fallback:
            reason = (
                "this onnxruntime build has no CUDA provider (install the `gpu` extra)"
                if len(providers) == 1
                else "the CUDA provider failed to load (see onnxruntime's log above)"
            )
            if require_gpu:
                raise ProviderError(
                    f"GPU required but the session runs on {self.provider}: {reason}"
                )
            get_logger().warning(
                "classifier_gpu_unavailable", provider=self.provider, reason=reason
            )
        self._inputs = self._input_types()
        self._output = self._output_name()

    @classmethod
    def from_model_dir(cls, model: ModelDir, **options: Any) -> OnnxBackend:
        """Open `model`'s ONNX file with its labels; `options` as for the constructor."""
        return cls(model.onnx_path, model.labels, **options)

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    def health(self) -> bool:
        """Run a two-token forward pass; True when it returns finite probabilities."""
        ids = np.zeros((1, 2), dtype=np.int64)
        probe = Encoded(ids, np.ones_like(ids), np.array([2]), np.array([False]))
        try:
            self.predict(probe)
        except BackendError:
            return False
        return True

    def predict(self, batch: Encoded) -> list[Prediction]:
        """See `Backend.predict`."""
        n = len(batch)
        if n > self._max_batch_size:
            raise ValueError(f"batch of {n} rows exceeds max_batch_size {self._max_batch_size}")
        if n == 0:
            return []
        probabilities = softmax(self.logits(batch))
        best = probabilities.argmax(axis=1)
        return [
            Prediction(self._labels[k], int(k), float(probabilities[i, k]), probabilities[i])
            for i, k in enumerate(best)
        ]

    def logits(self, batch: Encoded) -> npt.NDArray[np.float32]:
        """The raw `[n, len(labels)]` logits for `batch` (checked for shape and finiteness)."""
        feeds: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in self._inputs.items():
            if name == "input_ids":
                feeds[name] = batch.input_ids.astype(dtype, copy=False)
            elif name == "attention_mask":
                feeds[name] = batch.attention_mask.astype(dtype, copy=False)
            else:  # token_type_ids: single-segment input is all zeros
                feeds[name] = np.zeros_like(batch.input_ids, dtype=dtype)
        try:
            (out,) = self._session.run([self._output], feeds)
        except Exception as exc:  # onnxruntime raises pybind exception types
            raise BackendError(f"inference failed: {exc}") from exc
        logits = np.asarray(out)
        if logits.shape != (len(batch), len(self._labels)):
            raise BackendError(
                f"model returned logits of shape {list(logits.shape)}, "
                f"expected [{len(batch)}, {len(self._labels)}]"
            )
        if not np.isfinite(logits).all():
            raise BackendError("model returned non-finite logits")
        return logits.astype(np.float32, copy=False)

    def _input_types(self) -> dict[str, type[np.signedinteger[Any]]]:
        inputs: dict[str, type[np.signedinteger[Any]]] = {}
        for node in self._session.get_inputs():
            if node.name not in {"input_ids", "attention_mask", "token_type_ids"}:
                raise ModelDirError(f"{self.onnx_path}: unexpected graph input {node.name!r}")
            if node.type not in _INT_TYPES:
                raise ModelDirError(f"{self.onnx_path}: input {node.name!r} is {node.type}")
            inputs[node.name] = _INT_TYPES[node.type]
        for required in ("input_ids", "attention_mask"):
            if required not in inputs:
                raise ModelDirError(f"{self.onnx_path}: graph has no {required!r} input")
        return inputs

    def _output_name(self) -> str:
        outputs = {node.name: node for node in self._session.get_outputs()}
        name = next((n for n in _OUTPUT_NAMES if n in outputs), None)
        if name is None:
            if len(outputs) != 1:
                raise ModelDirError(
                    f"{self.onnx_path}: no output named {' / '.join(_OUTPUT_NAMES)} "
                    f"among {sorted(outputs)}"
                )
            name = next(iter(outputs))
        width = outputs[name].shape[-1] if outputs[name].shape else None
        if isinstance(width, int) and width != len(self._labels):
            raise ModelDirError(
                f"{self.onnx_path}: output {name!r} has {width} columns "
                f"but the model directory names {len(self._labels)} labels"
            )
        return name
