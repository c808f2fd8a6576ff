"""Model labels to config categories.

A config category covers one or more model labels, listed under the category's
`mmlu_categories` key (the name the upstream v0.3 schema uses); without that key a
category covers the label of its own name. So a 14-label MMLU-Pro model can drive four
categories: `technical: [computer science, engineering]`, `medical: [health]`, and so on.
A category's probability is the sum of its labels' probabilities; labels no category
claims add up to "no category".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.classifier.errors import LabelMappingError

__all__ = ["LabelMap"]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class LabelMap:
    """How the model's labels fold into categories.

    `labels[i]` is the label of logit `i`; `categories` are the config's categories in
    config order; `category_of[i]` is the index into `categories` of label `i`'s
    category, or -1 when no category claims it.
    """

    labels: tuple[str, ...]
    categories: tuple[str, ...]
    category_of: tuple[int, ...]

    @classmethod
    def build(
        cls, labels: Sequence[str], category_labels: Mapping[str, Sequence[str] | None]
    ) -> LabelMap:
        """Map `labels` onto the categories of `category_labels` (category -> its labels).

        A value of None means "the label named like the category" (config without
        `mmlu_categories`). Raises `LabelMappingError`, spelling the config path, when a
        category lists no labels, a label the model does not have, or a label another
        category already claims.
        """
        index = {label: i for i, label in enumerate(labels)}
        category_of = [-1] * len(labels)
        known = ", ".join(repr(label) for label in labels)
        for ci, (category, listed) in enumerate(category_labels.items()):
            where = f"categories[{ci}]"
            if listed is None:
                if category not in index:
                    raise LabelMappingError(
                        f"{where}.name: {category!r} is not a label of the model; list the "
                        f"model labels it covers under mmlu_categories (model labels: {known})"
                    )
                pairs = [(f"{where}.name", category)]
            else:
                if not listed:
                    raise LabelMappingError(
                        f"{where}.mmlu_categories: must list at least one label"
                    )
                pairs = [(f"{where}.mmlu_categories[{li}]", lab) for li, lab in enumerate(listed)]
            for path, label in pairs:
                li = index.get(label)
                if li is None:
                    raise LabelMappingError(
                        f"{path}: {label!r} is not a label of the model (model labels: {known})"
                    )
                if category_of[li] != -1:
                    other = list(category_labels)[category_of[li]]
                    raise LabelMappingError(
                        f"{path}: label {label!r} already belongs to category {other!r}"
                    )
                category_of[li] = ci
        return cls(tuple(labels), tuple(category_labels), tuple(category_of))

    @classmethod
    def identity(cls, labels: Sequence[str]) -> LabelMap:
        """One category per label, named like it (used when no config is given)."""
        return cls(tuple(labels), tuple(labels), tuple(range(len(labels))))

    @property
    def unmapped_labels(self) -> tuple[str, ...]:
        """Labels no category claims; their probability counts as "no category"."""
        return tuple(lab for lab, c in zip(self.labels, self.category_of, strict=True) if c < 0)

    def best(self, label_probabilities: FloatArray) -> tuple[str | None, float]:
        """The most probable category (None: "no category") of one text's label
        probabilities, and its probability."""
        row = self.category_probabilities(label_probabilities[np.newaxis, :])[0]
        k = int(row.argmax())
        return (None if k == len(self.categories) else self.categories[k]), float(row[k])

    def category_probabilities(self, probabilities: FloatArray) -> FloatArray:
        """Fold label probabilities `[n, len(labels)]` into `[n, len(categories) + 1]`.

        Column `len(categories)` holds the "no category" mass; each row still sums to
        the row's input sum. Raises `ValueError` on a width other than `len(labels)`.
        """
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.labels):
            raise ValueError(
                f"expected probabilities of shape [n, {len(self.labels)}], "
                f"got {list(probabilities.shape)}"
            )
        out = np.zeros((probabilities.shape[0], len(self.categories) + 1), dtype=np.float32)
        columns = np.array([c if c >= 0 else len(self.categories) for c in self.category_of])
        # np.add.at sums duplicate columns, which is exactly the many-to-one fold.
        np.add.at(out.T, columns, probabilities.T.astype(np.float32, copy=False))
        return out
