"""`services.classifier.admission`: what gets in, without a broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from schemas.errors import ErrorKind
from schemas.wire import ClassifyTexts, RouteChat, encoder
from services.classifier.admission import Refusal, admit, read
from services.classifier.batcher import Batcher
from services.classifier.work import Item
from tests.services.classifier.plain import body, chat_item, meta, unstarted_batcher


@pytest.fixture
async def batcher() -> AsyncIterator[Batcher[Item, Any, Any]]:
    b = unstarted_batcher(max_queue=4)
    yield b
    await b.close()


def test_read_decodes_both_kinds() -> None:
    chat = read(encoder.encode(RouteChat(body=body("hello"))), meta())
    assert isinstance(chat, RouteChat) and msgspec.json.decode(chat.body)["model"] == "MoM"
    texts = read(encoder.encode(ClassifyTexts(texts=["a", "b"])), meta())
    assert texts == ClassifyTexts(texts=["a", "b"])


@pytest.mark.parametrize(
    ("data", "start"),
    [
        (b"{not json", "invalid JSON: "),
        (b'{"type": "nope"}', "invalid message: Invalid value 'nope'"),
        (b'{"type": "texts", "texts": "one"}', "invalid message: Expected `array`"),
    ],
)
def test_read_refuses_what_does_not_decode(data: bytes, start: str) -> None:
    refusal = read(data, meta())
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason, refusal.param) == (ErrorKind.VALIDATION, "invalid", None)
    assert refusal.message.startswith(start)


def test_read_refuses_a_request_past_its_deadline() -> None:
    data = encoder.encode(ClassifyTexts(texts=["a"]))
    assert read(data, meta(deadline_s=-1.0)) == Refusal(
        ErrorKind.TIMEOUT, "deadline passed before classification", "expired"
    )
    assert isinstance(read(data, meta(deadline_s=None)), ClassifyTexts)  # no deadline: in time


async def test_admit_queues_a_request_whole_or_not_at_all(
    batcher: Batcher[Item, Any, Any],
) -> None:
    three = [chat_item("code", f"a{i}") for i in range(3)]
    assert admit(batcher, three, meta(deadline_s=10.0))
    assert len(batcher.queue) == 3
    assert not admit(batcher, [chat_item("law", "b0"), chat_item("law", "b1")], meta())
    assert len(batcher.queue) == 3  # neither of the two got in
    assert admit(batcher, [chat_item("law", "c0")], meta())
    assert len(batcher.queue) == 4


async def test_admitted_entries_carry_tokens_and_the_deadline(
    batcher: Batcher[Item, Any, Any],
) -> None:
    item = chat_item("code blood law")
    assert admit(batcher, [item], meta(deadline_s=10.0))
    assert admit(batcher, [chat_item("code", "r2")], meta(deadline_s=None))
    first, second = batcher.queue.withdraw(lambda _item: True)
    assert first.payload is item and first.tokens == int(item.encoded.lengths[0]) == 3
    assert first.deadline is not None and 0.0 < first.deadline - first.arrival <= 10.0
    assert second.deadline is None


async def test_a_draining_batcher_admits_nothing(batcher: Batcher[Item, Any, Any]) -> None:
    await batcher.close()
    assert not admit(batcher, [chat_item()], meta())


async def test_job_lines_are_admitted_to_their_own_lane(batcher: Batcher[Item, Any, Any]) -> None:
    # The fixture's job lane holds two entries: a full job lane refuses, interactive still admits.
    assert admit(batcher, [chat_item("code", "j0")], meta(), "job")
    assert not admit(batcher, [chat_item("code", "j1"), chat_item("code", "j2")], meta(), "job")
    assert admit(batcher, [chat_item("code", "j1")], meta(), "job")
    assert not admit(batcher, [chat_item("code", "j2")], meta(), "job")
    assert admit(batcher, [chat_item("law", "a0")], meta())
    assert (batcher.queue.depth("job"), batcher.queue.depth("interactive")) == (2, 1)
    assert [e.lane for e in batcher.queue.withdraw(lambda _item: True)] == [
        "interactive",
        "job",
        "job",
    ]
