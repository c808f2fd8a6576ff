"""Activation ranges for the static int8 graph, measured once on training texts.

Dynamic int8 quantization picks each activation's scale from the batch it is running, so a
text's result moved with its batch mates (docs/benchmarks.md). Static quantization fixes the
scales at build time instead: every matrix product of the encoder reads its input through one
scale chosen from that input's range on training texts, so a text's result no longer depends
on what shares its batch.

The ranges are the smallest and largest value each `torch.nn.Linear` of the encoder receives
over the real (unpadded) tokens of up to `CALIBRATION_TEXTS` training rows of the head's
split, with the adapter merged. Clipping to a percentile instead lost accuracy (a few
outlying features of this encoder carry much of the signal). They are committed beside the
head as `int8_ranges.json` (a few kB of numbers, keyed by module name, such as
`encoder.layer.0.attention.self.query`), so a build needs no data; `loraroute model train`
and `average` write them last, and `loraroute model ranges` measures them for heads that
have none (or again).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CALIBRATION_TEXTS",
    "RANGES_FILE",
    "add_ranges",
    "attach_ranges",
    "load_ranges",
    "measure_ranges",
    "write_ranges",
]

RANGES_FILE = "int8_ranges.json"
#: Training rows the ranges are measured on (all of them when the head has fewer).
CALIBRATION_TEXTS = 512
_FORMAT = 1
_BATCH = 32


def load_ranges(head_dir: Path) -> dict[str, tuple[float, float]] | None:
    """The committed ranges of the head in `head_dir` (module name -> (low, high)), or None
    when it has none. Raises `ValueError` naming the file when it is malformed."""
    path = head_dir / RANGES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["inputs"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: not a ranges file ({exc}); measure it again") from exc
    bad = [k for k, (lo, hi) in ranges.items() if not lo <= 0.0 <= hi]
    if not ranges or bad:
        raise ValueError(f"{path}: empty, or a range that does not hold 0: {bad[:3]}")
    return ranges


def write_ranges(
    head_dir: Path, ranges: dict[str, tuple[float, float]], about: dict[str, Any]
) -> Path:
    """Write `ranges` (with `about`: where they were measured) to the head's ranges file."""
    path = head_dir / RANGES_FILE
    data = {
        "format": _FORMAT,
        "method": "min and max over the real tokens of each Linear input of the encoder",
        **about,
        "inputs": {k: [round(lo, 6), round(hi, 6)] for k, (lo, hi) in sorted(ranges.items())},
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def measure_ranges(
    encoder: Any, tokenize: Any, texts: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Min and max of every `Linear` input of `encoder` over the real tokens of `texts`.

    `encoder` is a transformers encoder (adapter merged); `tokenize(texts)` returns its
    `(input_ids, attention_mask)` tensors. Each range is widened to hold 0, as the
    quantizer requires. Inputs that are not `[batch, sequence, hidden]` (a pooler's) are
    skipped: the exported graph does not contain them.
    """
    import torch

    seen: dict[str, list[float]] = {}
    mask_now: list[torch.Tensor] = []

    def hook(name: str) -> Any:
        def record(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            if x.dim() != 3:
                return
            real = x[mask_now[0]]
            lo, hi = float(real.min()), float(real.max())
            old = seen.setdefault(name, [0.0, 0.0])
            old[0], old[1] = min(old[0], lo), max(old[1], hi)

        return record

    handles = [
        module.register_forward_pre_hook(hook(name))
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                ids, mask = tokenize(list(texts[start : start + _BATCH]))
                mask_now[:] = [mask.bool()]
                encoder(input_ids=ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return {k: (v[0], v[1]) for k, v in seen.items()}


def attach_ranges(plan: Any, head_dir: Path, seed: int, tokenize: Any, texts: int) -> Path:
    """Measure the ranges of the head saved in `head_dir` on up to `texts` training rows of
    `plan` (a `modelkit.plan.HeadPlan`), sampled with `seed`, and write them beside it.

    The encoder is loaded again from the saved adapter, merged as the build merges it.
    """
    from modelkit.encoder import load_encoder
    from modelkit.heads import load_head

    rows = sorted({e.text for f in plan.files for e in f.train})
    chosen = random.Random(seed).sample(rows, min(texts, len(rows)))
    ranges = measure_ranges(load_encoder(load_head(head_dir).lora_dir), tokenize, chosen)
    about = {
        "texts": len(chosen),
        "of_training_rows": len(rows),
        "files": [f.name for f in plan.files],
        "seed": seed,
    }
    return write_ranges(head_dir, ranges, about)


def add_ranges(
    weights: Path, data: Sequence[Path] = (), threads: int = 0, texts: int = CALIBRATION_TEXTS
) -> list[Path]:
    """Measure and write the ranges of every head under `weights` on its training rows.

    The rows are those of the split the heads were trained on (carved again from their
    meta.json, as `loraroute model memory` does; `data` names user-supplied files), sampled
    with the split's seed, so the file is reproducible and no held-out row is read. Raises
    what `modelkit.runs.plan_again` raises when the data does not give that split.
    """
    import torch

    from modelkit.encoder import Encoder
    from modelkit.heads import head_names, load_head
    from modelkit.runs import RunError, plan_again, trained_together

    if threads:
        torch.set_num_threads(threads)
    names = head_names(weights)
    if not names:
        raise RunError(f"no heads under {weights}")
    heads = {n: [load_head(weights / n)] for n in names}
    written = []
    for group in trained_together(heads):
        options, plans = plan_again(group, data, [weights])
        enc = Encoder(max_length=options.max_length, normalize=options.normalize)
        written += [
            attach_ranges(plan, weights / plan.name, options.seed, enc.tokenize, texts)
            for plan in plans
        ]
    return written
