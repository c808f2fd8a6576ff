"""Training, evaluation and committed weights of the default domain classifier.

Modules: `data` (JSONL loading, held-out splits), `augment` (typos), `encoder` (the packaged
sentence encoder in torch), `calibration` (linear heads, temperature), `finetune` (LoRA),
`train` and `evaluate` (the `loraroute model train|eval` commands), `metrics`, `weights`
(the committed head format) and `sources` (data attribution). Import the submodule you need;
this package imports nothing heavy itself.
"""

__all__ = [
    "augment",
    "calibration",
    "data",
    "encoder",
    "evaluate",
    "finetune",
    "metrics",
    "sources",
    "train",
    "weights",
]
