from __future__ import annotations

import pytest

from schemas.errors import ErrorKind, error_response
from schemas.wire import ReplyError, StreamChunk, encode_reply, encoder
from services.ingress.inbox import NO_RESPONDERS, Inbox


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
