"""Encoder + pooling + head as one torch module, exported to ONNX.

The graph takes int64 `input_ids` and `attention_mask` `[batch, sequence]` (both axes
dynamic; no `token_type_ids`, which are all zeros for one segment) and returns `logits`
`[batch, num_labels]`; a head with a memory returns the logarithms of its mixed
probabilities, divided by the memory's temperature (see `memory.MemoryVote`). It uses the
TorchScript ("legacy") exporter at opset 17: the newer exporter cannot emit opset 17 and its
graph ran 15-20% slower on CPU here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from modelkit.encoder import mean_pool
from modelkit.heads import Head
from modelkit.memory import MemoryVote
from services.classifier.tokens import Encoded

__all__ = [
    "HEAD_NODE_PREFIXES",
    "OPSET",
    "HeadModel",
    "export_onnx",
    "torch_logits",
]

OPSET = 17

#: Name prefixes of the head's and the memory's nodes in the exported graph (kept fp32 by
#: quantization).
HEAD_NODE_PREFIXES = ("/classifier/", "/memory/")


class HeadModel(torch.nn.Module):
    """BERT encoder -> masked mean pooling (optionally L2-normalised) -> linear head, mixed
    with the head's nearest-neighbour memory when it has one."""

    def __init__(self, encoder: Any, head: Head) -> None:
        super().__init__()
        self.encoder = encoder
        num_labels, hidden = head.weight.shape
        if hidden != int(encoder.config.hidden_size):
            raise ValueError(
                f"{head.path}: head expects {hidden}-dim embeddings, "
                f"the encoder produces {encoder.config.hidden_size}"
            )
        # Named `classifier` so its graph nodes carry one of HEAD_NODE_PREFIXES.
        self.classifier = torch.nn.Linear(hidden, num_labels)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.from_numpy(head.weight))
            self.classifier.bias.copy_(torch.from_numpy(head.bias))
        self.normalize = head.normalize
        # Named `memory` so its graph nodes carry one of HEAD_NODE_PREFIXES.
        self.memory = MemoryVote(head.memory, num_labels) if head.memory is not None else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask, self.normalize)
        logits: torch.Tensor = self.classifier(pooled)
        if self.memory is not None:
            logits = self.memory(pooled, logits)
        return logits


@torch.inference_mode()
def torch_logits(model: HeadModel, batch: Encoded) -> npt.NDArray[np.float32]:
    """The torch model's logits for `batch`, as float32 `[n, num_labels]`."""
    out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    return np.asarray(out.float().numpy(), dtype=np.float32)


def export_onnx(model: HeadModel, sample: Encoded, path: Path) -> None:
    """Trace `model` on `sample` (pick rows of unequal length) and write the graph to `path`."""
    model.eval()
    args = (torch.from_numpy(sample.input_ids), torch.from_numpy(sample.attention_mask))
    dynamic = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.inference_mode():
        # The legacy exporter announces its deprecation; tracing warns that transformers'
        # mask helper branches on a Python bool, and that its advanced indexing (over
        # arange indices, never negative) becomes Gather. The build's padded-batch check
        # against torch is what proves the trace general.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
