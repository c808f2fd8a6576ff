"""Static int8 quantization of an exported classifier graph, from committed activation ranges.

Every matrix product of the encoder with a weight operand becomes an int8 product (QDQ
format: signed int8 weights with one scale per output channel, unsigned int8 activations
with one fixed scale and zero point per input tensor, from `modelkit.ranges`); its output
stays float. Because no scale is computed at run time, a text's result does not depend on the
other texts in its batch, unlike dynamic quantization, whose per-batch activation scales moved
0.4-3 % of decisions between a text alone and in a batch of 32. It ran as fast as dynamic
int8 on two CPU cores (docs/benchmarks.md). Per-tensor weights lost accuracy on this encoder
(embedding cosine 0.966 against 0.993 per channel), unsigned weights ran 2.3x slower, and
clipping activations to a percentile lost accuracy; the attention's two activation-by-
activation products, the head's and the memory's nodes stay fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
from onnxruntime.quantization.shape_inference import quant_pre_process

__all__ = ["ENCODER_PREFIX", "quantize_int8"]

#: Name prefix of the encoder's nodes in the exported graph (`HeadModel.encoder`).
ENCODER_PREFIX = "/encoder/"
_MATMUL = "/MatMul"


def _module_of(node_name: str) -> str:
    """`/encoder/encoder/layer.0/attention/self/query/MatMul` -> `encoder.layer.0.attention.self.query`."""
    return node_name[len(ENCODER_PREFIX) : -len(_MATMUL)].replace("/", ".")


def quantize_int8(src: Path, dst: Path, ranges: Mapping[str, tuple[float, float]]) -> int:
    """Write a static int8 copy of `src` to `dst`; return how many products were quantized.

    `ranges` maps each encoder `Linear` (module name) to the range of its input. Raises
    `ValueError` when the graph has a weight product the ranges do not cover (ranges measured
    for another encoder, or the graph's names changed with the exporter).
    """
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    # Symbolic shape inference fails on these graphs ("unsupported broadcast between
    # Min(512, seq) seq"); ONNX's own shape inference is enough here.
    quant_logger = logging.getLogger("onnxruntime.quantization")
    previous = quant_logger.level
    quant_logger.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = load_model_with_shape_infer(prepared)
        weights = {i.name for i in model.graph.initializer}
        nodes = [
            n
            for n in model.graph.node
            if n.op_type == "MatMul"
            and n.name.startswith(ENCODER_PREFIX)
            and n.name.endswith(_MATMUL)
            and n.input[1] in weights
        ]
        missing = sorted({_module_of(n.name) for n in nodes} - set(ranges))
        if not nodes or missing:
            raise ValueError(
                f"the activation ranges do not cover the graph's products (missing: "
                f"{missing[:3] or 'all'}); measure them again with `loraroute model ranges`"
            )
        tensors: dict[str, tuple[float, float]] = {}
        for n in nodes:
            lo, hi = ranges[_module_of(n.name)]
            old = tensors.get(n.input[0], (lo, hi))
            tensors[n.input[0]] = (min(old[0], lo), max(old[1], hi))
        data = TensorsData(
            CalibrationMethod.MinMax,
            {
                name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                for name, (lo, hi) in tensors.items()
            },
        )
        quantizer = QDQQuantizer(
            model,
            True,  # per channel
            False,  # reduce_range: only for CPUs without VNNI, and less accurate
            QuantType.QInt8,
            QuantType.QUInt8,
            data,
            [n.name for n in nodes],
            [],
            ["MatMul"],
            {"OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )
        quantizer.quantize_model()
        quantizer.model.save_model_to_file(str(dst))
    finally:
        quant_logger.setLevel(previous)
        prepared.unlink(missing_ok=True)
    onnx.checker.check_model(str(dst))
    return len(nodes)
