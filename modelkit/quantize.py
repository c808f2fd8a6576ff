"""Int8 dynamic quantization of an exported classifier graph.

Weights become signed int8 with one scale per output channel: per-tensor scales lost
accuracy on this encoder (embedding cosine 0.966 against 0.993 per channel) at the same
speed, unsigned weights ran 2.3x slower on this CPU, and `reduce_range` was worse still.
The head's and the memory's nodes stay fp32: they are small and sit right before the decision.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

__all__ = ["quantize_int8"]


def quantize_int8(src: Path, dst: Path, keep_fp32_prefix: str | tuple[str, ...]) -> int:
    """Write an int8 per-channel copy of `src` to `dst`; return how many nodes stayed fp32.

    Nodes whose name starts with `keep_fp32_prefix` (or one of several) are not quantized.
    """
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    # Symbolic shape inference fails on these graphs ("unsupported broadcast between
    # Min(512, seq) seq"); ONNX's own shape inference is enough for dynamic quantization.
    quant_logger = logging.getLogger("onnxruntime.quantization")
    previous = quant_logger.level
    quant_logger.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        keep = [
            n.name
            for n in onnx.load(str(prepared)).graph.node
            if n.name.startswith(keep_fp32_prefix)
        ]
        quantize_dynamic(
            str(prepared),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=keep,
        )
    finally:
        quant_logger.setLevel(previous)
        prepared.unlink(missing_ok=True)
    return len(keep)
