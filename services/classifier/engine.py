"""The classification engine: tokenizer + backend + label mapping, synchronous and transport-free.

`Engine.classify(texts)` is the whole job for tools and tests. A batcher that tokenizes
on arrival and forms its own batches calls `Engine.tokenizer.encode` per request,
`Encoded.collate` per batch, then `Engine.classify_encoded` on its inference thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.classifier.backend import Backend
from services.classifier.errors import LabelMappingError
from services.classifier.labels import LabelMap
from services.classifier.model_dir import load_model_dir
from services.classifier.onnx_backend import OnnxBackend
from services.classifier.tokens import Encoded, Tokenizer

__all__ = ["NEUTRAL_TEXTS", "Classification", "Counters", "Engine"]

#: Turns of a conversation that carry no topic: what the model reads in them is the baseline
#: against which the turns of a conversation are weighed (`neutral_probabilities`).
NEUTRAL_TEXTS = (
    "ok",
    "yes",
    "and?",
    "tell me more",
    "go on",
    "hmm",
    "what do you mean?",
    "please continue",
    "thanks",
    "sure, and?",
)


@dataclass(frozen=True, slots=True)
class Classification:
    """The result for one text.

    `category` is the config category with the highest probability, or None when the
    labels no category claims together outweigh every category; `confidence` is the
    probability of that outcome. No threshold is applied here: below-threshold handling
    belongs to routing. `probabilities` holds every category's probability (config order;
    the remainder up to 1 is "no category"). `label`, `label_confidence` and
    `label_probabilities` (float32, in `Engine.labels` order) are the model's own view.
    `tokens` is what the text cost the model and `truncated` says it lost tokens.
    """

    category: str | None
    confidence: float
    label: str
    label_confidence: float
    probabilities: dict[str, float]
    label_probabilities: npt.NDArray[np.float32]
    truncated: bool
    tokens: int
    label_map: LabelMap | None = None
    """The label map that folded `probabilities` (a config revision's; see `LabelMap.best`)."""


@dataclass(slots=True)
class Counters:
    """Running totals since the engine was built (read them for metrics)."""

    texts: int = 0
    truncations: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0


class Engine:
    """Classifies texts into config categories with one tokenizer and one backend.

    Not thread-safe: call `classify` / `classify_encoded` from one thread (the backend
    wants that anyway). `tokenizer.encode` may run on other threads.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        backend: Backend,
        label_map: LabelMap | None = None,
        *,
        sort_by_length: bool = True,
    ) -> None:
        """Combine the parts; without `label_map` each model label is its own category.

        `sort_by_length` makes `classify` batch texts of similar length together (less
        padding); results come back in input order either way. Raises
        `LabelMappingError` when `label_map` was built for other labels than the backend's.
        """
        self.tokenizer = tokenizer
        self.backend = backend
        self.label_map = label_map if label_map is not None else LabelMap.identity(backend.labels)
        if self.label_map.labels != tuple(backend.labels):
            raise LabelMappingError(
                f"label map is for labels {list(self.label_map.labels)}, "
                f"the model has {list(backend.labels)}"
            )
        self.sort_by_length = sort_by_length
        self.counters = Counters()

    @classmethod
    def from_model_dir(
        cls,
        path: str | Path,
        *,
        category_labels: Mapping[str, Sequence[str] | None] | None = None,
        onnx_file: str | Path | None = None,
        category_mapping_path: str | Path | None = None,
        use_cpu: bool = True,
        require_gpu: bool = False,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        max_batch_size: int = 64,
        sort_by_length: bool = True,
        spin_wait: bool = False,
        correct_spelling: bool = True,
    ) -> Engine:
        """Load the model directory at `path` (see `model_dir.load_model_dir`).

        `category_labels` maps each config category to the model labels it covers (None:
        the label of its own name); omitted, every label is a category. `correct_spelling`
        mends misspelt words before tokenizing (`spelling.SpellingCorrector`), as the config's
        `inference.correct_spelling` does by default. The other options go to
        `load_model_dir` and `OnnxBackend`. Raises `ModelDirError`,
        `LabelMappingError` or `ProviderError`.
        """
        model = load_model_dir(
            path, onnx_file=onnx_file, category_mapping_path=category_mapping_path
        )
        label_map = (
            LabelMap.build(model.labels, category_labels) if category_labels is not None else None
        )
        backend = OnnxBackend.from_model_dir(
            model,
            use_cpu=use_cpu,
            require_gpu=require_gpu,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            max_batch_size=max_batch_size,
            spin_wait=spin_wait,
        )
        tokenizer = Tokenizer.from_file(
            model.tokenizer_path, model.max_length, correct_spelling=correct_spelling
        )
        return cls(tokenizer, backend, label_map, sort_by_length=sort_by_length)

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels in logit order."""
        return self.label_map.labels

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories results are reported in."""
        return self.label_map.categories

    def neutral_probabilities(self) -> npt.NDArray[np.float32]:
        """The mean label distribution of `NEUTRAL_TEXTS`: the model's reading of a text with
        no topic. Runs the model: call it before a batcher's inference thread starts."""
        results = self.classify(NEUTRAL_TEXTS)
        mean = np.mean([r.label_probabilities for r in results], axis=0)
        return np.asarray(mean / mean.sum(), dtype=np.float32)

    def classify(self, texts: Sequence[str]) -> list[Classification]:
        """Classify `texts` (any number; batched by the backend's `max_batch_size`), in order.

        Raises `TypeError` for a non-`str` item and `BackendError` when inference fails.
        """
        if isinstance(texts, str):
            raise TypeError("classify takes a sequence of texts, not one str")
        encoded = self.tokenizer.encode(texts)
        n = len(encoded)
        order = np.argsort(encoded.lengths, kind="stable") if self.sort_by_length else np.arange(n)
        results: list[Classification | None] = [None] * n
        step = self.backend.max_batch_size
        for start in range(0, n, step):
            rows = order[start : start + step]
            for row, result in zip(rows, self.classify_encoded(encoded.take(rows)), strict=True):
                results[int(row)] = result
        return [r for r in results if r is not None]

    def classify_encoded(self, batch: Encoded) -> list[Classification]:
        """Classify one prepared batch (at most `backend.max_batch_size` rows), in row order."""
        predictions = self.backend.predict(batch)
        if not predictions:
            return []
        self.counters.texts += len(batch)
        self.counters.truncations += int(batch.truncated.sum())
        self.counters.batches += 1
        self.counters.real_tokens += batch.real_tokens
        self.counters.padded_tokens += batch.padded_tokens
        # Read once: a config swap may replace the map while this batch runs on its thread.
        label_map = self.label_map
        label_probs = np.stack([p.probabilities for p in predictions])
        folded = label_map.category_probabilities(label_probs)
        best = folded.argmax(axis=1)
        categories = label_map.categories
        none_column = len(categories)
        out: list[Classification] = []
        for i, (prediction, k) in enumerate(zip(predictions, best, strict=True)):
            row = folded[i]
            out.append(
                Classification(
                    category=None if k == none_column else categories[k],
                    confidence=float(row[k]),
                    label=prediction.label,
                    label_confidence=prediction.confidence,
                    # `row` ends with the "no category" column, which zip leaves out.
                    probabilities={c: float(p) for c, p in zip(categories, row, strict=False)},
                    label_probabilities=prediction.probabilities,
                    truncated=bool(batch.truncated[i]),
                    tokens=int(batch.lengths[i]),
                    label_map=label_map,
                )
            )
        return out
