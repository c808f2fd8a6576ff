"""Fitting linear heads and calibrating them, on fixed embeddings.

Both steps are small convex problems solved full-batch with L-BFGS: a class-weighted
multinomial logistic regression for the head, then one temperature on held-out logits. The
temperature is folded into the head (`weight / T`, `bias / T`), so the committed head's
softmax is already calibrated and the runtime needs no extra parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["fit_linear_head", "fit_temperature", "softmax"]

FloatArray = npt.NDArray[np.float32]


def softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """Row-wise softmax, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def fit_linear_head(
    x: FloatArray,
    y: npt.NDArray[np.int64],
    sample_weight: npt.NDArray[np.float32],
    num_classes: int,
    l2: float = 1e-4,
    max_iter: int = 500,
) -> tuple[FloatArray, FloatArray]:
    """Weighted multinomial logistic regression; returns `(weight [C, D], bias [C])`.

    `sample_weight` carries the class balancing (the caller decides it); the loss is the
    weighted mean cross-entropy plus `l2 * ||weight||^2`. Deterministic for fixed inputs.
    """
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    wt = torch.from_numpy(np.asarray(sample_weight, dtype=np.float32))
    wt = wt / wt.sum()
    weight = torch.zeros(num_classes, xt.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ weight.T + bias
        ce = torch.nn.functional.cross_entropy(logits, yt, reduction="none")
        loss = (ce * wt).sum() + l2 * (weight**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def fit_temperature(logits: npt.NDArray[np.floating[Any]], y: npt.NDArray[np.int64]) -> float:
    """The temperature T > 0 minimising the cross-entropy of `softmax(logits / T)` on `y`.

    Fit it on held-out logits (a validation split), never on the training data, where the
    head is over-confident by construction.
    """
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), yt)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.exp().item())
