"""The offline model toolkit: training, evaluation, committed weights and the ONNX build of the
default domain classifier. Serving never imports it; it reads the classifier's tokenizer,
backend, engine and model directory to check what it builds.

Modules: `data` (JSONL loading, held-out splits), `augment` (typos), `options` (typed options
of a training run), `plan` (which rows train, calibrate and test each head; held-out figures),
`runs` (a saved run's options and split read back), `encoder` (the packaged sentence encoder
in torch), `calibration` (linear heads, temperature), `finetune` (LoRA), `train`, `average`,
`memory` (the nearest-neighbour vote exported with a head) and `evaluate`, `scores` (accuracy
figures), `heads` (the committed head format; the heads themselves are under `weights/`),
`sources` (data attribution), `export`, `quantize` and `build`. `cli` holds the command line
of each `loraroute model` verb. Import the submodule you need; this package imports nothing
heavy itself.
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
    "heads",
    "memory",
    "options",
    "plan",
    "quantize",
    "runs",
    "scores",
    "sources",
    "train",
]
