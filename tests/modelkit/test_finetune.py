"""Parts of LoRA training on the real packaged encoder: label masks, heads started from a
linear probe, and the consistency loss."""

from __future__ import annotations

import random

import pytest
import torch

from modelkit.data import Example
from modelkit.encoder import Encoder
from modelkit.finetune import (
    _epoch_rows,
    consistency_loss,
    label_masks,
    masked_logits,
    probe_heads,
)
from modelkit.plan import FileSplit, HeadPlan


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


def test_masked_consistency_compares_only_the_labels_the_file_uses(enc: Encoder) -> None:
    head = _head(enc)
    batch = [("waht is teh dose of ibuprfen", [], "what is the dose of ibuprofen")]
    emb = enc([batch[0][0]]).detach().requires_grad_(True)
    masks = [[], [True, False, False, True]]
    loss = consistency_loss(enc, [head], 20.0, batch, emb, *_targets(1), [1], masks)
    # The same as a head that has only the file's two labels.
    kept = torch.nn.Linear(enc.hidden_size, 2)
    with torch.no_grad():
        kept.weight.copy_(head.weight[[0, 3]])
        kept.bias.copy_(head.bias[[0, 3]])
    alone = consistency_loss(enc, [kept], 20.0, batch, emb.detach(), *_targets(1))
    assert loss.item() == pytest.approx(alone.item(), rel=1e-4) and loss.item() > 0
    loss.backward()  # type: ignore[no-untyped-call]
    assert emb.grad is not None and bool(torch.isfinite(emb.grad).all())
    assert head.weight.grad is not None
    assert float(head.weight.grad[[1, 2]].abs().sum()) == 0.0  # masked labels learn nothing
    assert float(head.weight.grad[[0, 3]].abs().sum()) > 0


def test_label_masks_mark_the_labels_a_files_own_rows_use() -> None:
    labels = ["technical", "medical", "legal", "general"]
    exam = [Example(f"e{i}", label) for i, label in enumerate(labels)]
    queries = [Example("q1", "technical"), Example("q2", "general")]
    plans = [
        HeadPlan(
            "domain",
            labels,
            [
                FileSplit("exam", exam, [], []),
                FileSplit("queries", queries, [], []),
                FileSplit("borrowed", queries, [], [], borrowed=True),
            ],
        ),
        HeadPlan("other", ["a", "b"], [FileSplit("x", [Example("t", "a")], [], [])]),
    ]
    masks, ids = label_masks(plans)
    # Every label used, or a borrowed part: id 0 (no mask); each partial file gets its own.
    assert ids == [[0, 1, 0], [2]]
    assert masks == [[], [True, False, False, True], [True, False]]


def test_masked_logits_leave_out_the_labels_a_row_may_not_have() -> None:
    masks = [[], [True, False, True]]
    logits = torch.tensor([[1.0, 5.0, 0.0], [1.0, 5.0, 0.0]], requires_grad=True)
    assert masked_logits(logits, [0, 0], masks) is logits  # nothing masked: unchanged
    out = masked_logits(logits, [0, 1], masks)
    probs = torch.softmax(out, dim=-1)
    assert probs[1, 1].item() == 0.0 and probs[1].sum().item() == pytest.approx(1.0)
    assert torch.equal(out[0], logits[0])
    # A row's loss then does not push the masked label down.
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 0])).backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    assert logits.grad[1, 1].item() == 0.0 and logits.grad[0, 1].item() > 0


def test_probe_heads_start_from_a_fit_of_the_frozen_encoder(enc: Encoder) -> None:
    rows = [
        Example("my docker container cannot bind a port", "technical", "docker"),
        Example("python raises an index error on my list", "technical", "python"),
        Example("how much ibuprofen can I take for a fever", "medical", "dosing"),
        Example("a rash appeared after my vaccine", "medical", "skin"),
        Example("what will the weather be tomorrow", "general", "weather"),
        Example("set an alarm for seven in the morning", "general", "alarm"),
    ]
    plan = HeadPlan("h", ["technical", "medical", "general"], [FileSplit("f", rows, [], [])])
    subjects = {f"f:{e.subject}": i for i, e in enumerate(rows)}
    heads = [torch.nn.Linear(enc.hidden_size, 3), torch.nn.Linear(enc.hidden_size, len(rows))]
    for head in heads:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    enc.train()
    probe_heads([plan], enc, heads, 20.0, [subjects], 1e-4)
    assert enc.training  # embedding for the probe leaves the mode as it was
    x = torch.from_numpy(enc.embed([e.text for e in rows]))
    with torch.no_grad():
        labels = (20.0 * heads[0](x)).argmax(dim=1).tolist()
        subject = (20.0 * heads[1](x)).argmax(dim=1).tolist()
    assert labels == [plan.index(e.label) for e in rows]  # the main head separates the labels
    assert subject == list(range(len(rows)))  # and the auxiliary head the subjects


def test_epoch_rows_share_a_labels_draw_among_its_sources() -> None:
    # 300 rows of one source and 20 of another, one label, cap 100: the small source gives
    # all 20 and the large one the other 80, not 94 of the large and 6 of the small.
    rows = [Example(f"big {i}", "general", id=f"big/{i}") for i in range(300)]
    rows += [Example(f"small {i}", "general", id=f"small/{i}") for i in range(20)]
    rows += [Example(f"tech {i}", "technical", id=f"big/t{i}") for i in range(10)]
    plan = HeadPlan("h", ["technical", "general"], [FileSplit("f", rows, [], [])])
    drawn = [text for text, _ in _epoch_rows([plan], 100, random.Random(0))]
    assert sum(t.startswith("small") for t in drawn) == 20
    assert sum(t.startswith("big") for t in drawn) == 80
    assert sum(t.startswith("tech") for t in drawn) == 10
