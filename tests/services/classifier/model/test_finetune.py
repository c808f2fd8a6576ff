"""The consistency term of LoRA training, on the real packaged encoder."""

from __future__ import annotations

import pytest
import torch

from services.classifier.model.encoder import Encoder
from services.classifier.model.finetune import consistency_loss


@pytest.fixture(scope="module")
def enc() -> Encoder:
    torch.manual_seed(0)
    return Encoder()


def _targets(n_rows: int, head: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = torch.arange(n_rows)
    return rows, torch.full((n_rows,), head), torch.ones(n_rows)


def _head(enc: Encoder) -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(enc.hidden_size, 4)


def test_a_text_like_its_original_costs_nothing(enc: Encoder) -> None:
    texts = ["what is the dose of ibuprofen", "my docker container cannot bind a port"]
    batch = [(t, [], t) for t in texts]
    enc.eval()  # no dropout on either side
    loss = consistency_loss(enc, [_head(enc)], 20.0, batch, enc(texts), *_targets(2))
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    enc.train()
    consistency_loss(enc, [_head(enc)], 20.0, batch, enc(texts), *_targets(2))
    assert enc.training  # the clean pass runs in eval mode and leaves the mode as it was


def test_only_the_typod_side_learns(enc: Encoder) -> None:
    head = _head(enc)
    batch = [("waht is teh dose of ibuprfen", [], "what is the dose of ibuprofen")]
    emb = enc([batch[0][0]]).detach().requires_grad_(True)
    loss = consistency_loss(enc, [head], 20.0, batch, emb, *_targets(1))
    assert loss.item() > 0
    loss.backward()  # type: ignore[no-untyped-call]
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0


def test_clean_rows_and_other_heads_take_no_part(enc: Encoder) -> None:
    batch = [("waht is teh dose", [], None), ("set an alrm", [], "set an alarm")]
    emb = enc([b[0] for b in batch])
    # Row 1 carries a target of head 1 only, which is not among the heads passed.
    rows, heads, weights = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(2)
    loss = consistency_loss(enc, [_head(enc)], 20.0, batch, emb, rows, heads, weights)
    assert loss.item() == 0.0
    none = [("a", [], None)]
    assert consistency_loss(enc, [_head(enc)], 20.0, none, emb[:1], *_targets(1)).item() == 0.0
