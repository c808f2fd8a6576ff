from __future__ import annotations

import asyncio

import pytest

from schemas.errors import ErrorKind, error_response
from schemas.wire import ReplyAlive, ReplyError, StreamChunk, encode_reply, encoder
from services.ingress.inbox import NO_RESPONDERS, Inbox, Lost


async def test_messages_reach_their_mailbox_in_order() -> None:
    inbox = Inbox("_INBOX.test")
    assert inbox.subscription == "_INBOX.test.*"
    a, b = inbox.open(), inbox.open()
    assert a.reply.startswith("_INBOX.test.") and a.reply != b.reply
    for seq in range(3):
        assert inbox.deliver(a.reply, None, encoder.encode(StreamChunk(seq=seq, data=b"x")))
    got = [await a.receive(1.0) for _ in range(3)]
    assert [m.seq for m in got if isinstance(m, StreamChunk)] == [0, 1, 2]
    with pytest.raises(TimeoutError):
        await b.receive(0.01)


async def test_raw_chunks_and_json_chunks_are_both_read() -> None:
    inbox = Inbox("_INBOX.test")
    with inbox.open() as box:
        payload = encode_reply(StreamChunk(seq=0, data=b"data: {}\n\n"))
        assert payload.endswith(b"\ndata: {}\n\n")
        inbox.deliver(box.reply, None, payload)
        # The previous version's form: the whole chunk as JSON, its bytes in base64.
        inbox.deliver(box.reply, None, encoder.encode(StreamChunk(seq=1, data=b"data: x\n\n")))
        assert await box.receive(1.0) == StreamChunk(seq=0, data=b"data: {}\n\n")
        assert await box.receive(1.0) == StreamChunk(seq=1, data=b"data: x\n\n")
        inbox.deliver(box.reply, None, b'{"type":"chunk","seq":"seven"}\ndata: {}\n\n')
        broken = await box.receive(1.0)
        assert isinstance(broken, ReplyError) and broken.status == 502


async def test_no_responders_status_is_recognised() -> None:
    inbox = Inbox("_INBOX.t")
    with inbox.open() as box:
        inbox.deliver(box.reply, {"Status": "503"}, b"")
        assert await box.receive(1.0) is NO_RESPONDERS


async def test_late_messages_are_dropped_and_counted() -> None:
    inbox = Inbox("_INBOX.t")
    with inbox.open() as box:
        reply = box.reply
        assert len(inbox) == 1
    assert len(inbox) == 0
    assert not inbox.deliver(reply, None, b"{}")
    assert inbox.dropped == 1


async def test_unreadable_reply_becomes_a_502() -> None:
    inbox = Inbox("_INBOX.t")
    with inbox.open() as box:
        inbox.deliver(box.reply, None, b'{"kind":"nonsense"}')
        message = await box.receive(1.0)
        assert isinstance(message, ReplyError) and message.status == 502


async def test_error_reply_decodes() -> None:
    inbox = Inbox("_INBOX.t")
    with inbox.open() as box:
        error = error_response(ErrorKind.UNAVAILABLE, "no dispatcher")
        inbox.deliver(box.reply, None, encoder.encode(ReplyError(status=503, error=error)))
        message = await box.receive(1.0)
        assert isinstance(message, ReplyError) and message.error == error


async def test_zero_timeout_on_empty_mailbox_times_out() -> None:
    inbox = Inbox("_INBOX.t")
    with inbox.open() as box, pytest.raises(TimeoutError):
        await box.receive(0.0)


async def test_keepalives_are_consumed_and_remembered() -> None:
    inbox = Inbox("_INBOX.t", stall_s=5.0)
    with inbox.open() as box:
        inbox.deliver(box.reply, None, encoder.encode(ReplyAlive(held_by="classifier")))
        inbox.deliver(box.reply, None, encoder.encode(StreamChunk(seq=0, data=b"x")))
        assert await box.receive(1.0) == StreamChunk(seq=0, data=b"x")
        assert box.held_by == "classifier"
        inbox.deliver(box.reply, None, encoder.encode(ReplyAlive(held_by="dispatcher")))
        inbox.deliver(box.reply, None, encoder.encode(ReplyAlive(held_by="classifier")))
        with pytest.raises(TimeoutError):
            await box.receive(0.05)
        assert box.held_by == "dispatcher"  # once vLLM may have been called, it stays so


async def test_silence_past_the_stall_bound_is_lost_work() -> None:
    inbox = Inbox("_INBOX.t", stall_s=0.05)
    with inbox.open() as box:
        inbox.deliver(box.reply, None, encoder.encode(ReplyAlive(held_by="classifier")))
        lost = await box.receive(30.0)
        assert isinstance(lost, Lost)
        assert (lost.bus, lost.held_by, lost.retryable) == (False, "classifier", True)
    with inbox.open() as box:
        lost = await box.receive(30.0)
        # Nothing heard: vLLM may have been called by now, so it is not sent again.
        assert isinstance(lost, Lost) and lost.held_by is None and not lost.retryable
    # A deadline shorter than the stall bound stays a deadline.
    with inbox.open() as box, pytest.raises(TimeoutError):
        await box.receive(0.01)


async def test_a_lost_bus_connection_ends_every_open_request_at_once() -> None:
    inbox = Inbox("_INBOX.t", stall_s=60.0)
    a, b = inbox.open(), inbox.open()
    waiting = asyncio.ensure_future(a.receive(30.0))
    await asyncio.sleep(0)
    assert inbox.lose_all() == 2
    for lost in (await waiting, await b.receive(30.0)):
        assert isinstance(lost, Lost) and lost.bus and not lost.retryable
    assert inbox.bus_unsettled(10.0)
    inbox.restored()
    assert inbox.bus_unsettled(10.0) and not inbox.bus_unsettled(0.0)
    # A request opened before the loss and silent since then is lost with the bus, too.
    inbox2 = Inbox("_INBOX.u", stall_s=0.05)
    with inbox2.open() as box:
        inbox2.epoch += 1
        lost = await box.receive(30.0)
        assert isinstance(lost, Lost) and lost.bus
