"""The default domain classifier: training, evaluation, committed weights and the ONNX build.

Modules: `data` (JSONL loading, held-out splits), `augment` (typos), `encoder` (the packaged
sentence encoder in torch), `calibration` (linear heads, temperature), `finetune` (LoRA),
`train`, `average`, `memory` and `evaluate` (`loraroute model train|average|memory|eval`;
`memory` is also the nearest-neighbour vote exported with a head), `metrics`,
`weights` (the committed head format), `sources` (data attribution), `export`, `quantize` and
`build` (`loraroute model build`), and `cli` (the `loraroute model` verbs). Import the
submodule you need; this package imports nothing heavy itself.
"""

__all__ = [
    "augment",
    "average",
    "build",
    "calibration",
    "cli",
    "data",
    "encoder",
    "evaluate",
    "export",
    "finetune",
    "memory",
    "metrics",
    "quantize",
    "sources",
    "train",
    "weights",
]
