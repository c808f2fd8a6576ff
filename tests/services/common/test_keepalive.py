"""`Keepalives`: a keepalive only for a request silent for a whole period, none otherwise."""

from __future__ import annotations

import asyncio

from schemas.wire import ReplyAlive, decode_reply, is_keepalive
from services.common.keepalive import Keepalives


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def __call__(self, subject: str, payload: bytes) -> None:
        self.messages.append((subject, payload))


async def test_a_keepalive_goes_only_to_requests_silent_for_a_whole_period() -> None:
    sent = Sent()
    keepalives = Keepalives(sent, heartbeat_s=1.0, held_by="classifier")
    quiet = keepalives.hold("_INBOX.a.1")
    busy = keepalives.hold("_INBOX.a.2")
    # The first sweep after a request arrived sends nothing: it may be only a moment old.
    assert await keepalives.sweep() == 0
    busy.sent()
    assert await keepalives.sweep() == 1
    assert [subject for subject, _ in sent.messages] == ["_INBOX.a.1"]
    assert quiet.alerted and not busy.alerted
    payload = sent.messages[0][1]
    assert is_keepalive(payload) and decode_reply(payload) == ReplyAlive(held_by="classifier")
    assert keepalives.release("_INBOX.a.1") is quiet and keepalives.release("_INBOX.a.1") is None
    assert await keepalives.sweep() == 1  # the busy one has been silent since
    assert len(keepalives) == 1 and keepalives.sent_total == 2


async def test_the_sweep_runs_every_heartbeat_until_stopped() -> None:
    sent = Sent()
    keepalives = Keepalives(sent, heartbeat_s=0.02, held_by="dispatcher")
    keepalives.hold("_INBOX.b.1")
    keepalives.start()
    try:
        while len(sent.messages) < 2:
            await asyncio.sleep(0.01)
    finally:
        await keepalives.stop()
    assert all(decode_reply(p) == ReplyAlive(held_by="dispatcher") for _, p in sent.messages)


async def test_a_failed_send_is_not_raised() -> None:
    async def closed(subject: str, payload: bytes) -> None:
        raise ConnectionError("closed")

    keepalives = Keepalives(closed, heartbeat_s=1.0, held_by="dispatcher")
    keepalives.hold("_INBOX.c.1")
    await keepalives.sweep()
    assert await keepalives.sweep() == 1
