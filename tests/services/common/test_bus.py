"""`services.common.bus`: headers, no-responders detection, explicit error replies, probes."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.aio.client import Client

from loraroute.natsserver import NatsCluster
from schemas.errors import ErrorKind
from schemas.wire import ReplyError, reply_decoder
from services.common import bus
from services.common.subjects import HEADER_DEADLINE, HEADER_REQUEST_ID, HEADER_TRACEPARENT
from tests.processes import free_port


def _subject() -> str:
    return f"test.{uuid.uuid4().hex}"


class TestRequestMeta:
    def test_round_trip(self) -> None:
        meta = bus.RequestMeta(
            request_id="r1", deadline_ms=123, traceparent="00-ab-cd-01", reply_to="_INBOX.x.1"
        )
        assert bus.RequestMeta.from_headers(meta.to_headers()) == meta

    def test_absent_fields_are_left_out(self) -> None:
        assert bus.RequestMeta(request_id="r1").to_headers() == {HEADER_REQUEST_ID: "r1"}

    def test_missing_headers_get_a_fresh_id(self) -> None:
        meta = bus.RequestMeta.from_headers(None)
        assert len(meta.request_id) == 32 and meta.deadline_ms is None

    def test_malformed_deadline_is_ignored(self) -> None:
        meta = bus.RequestMeta.from_headers({HEADER_DEADLINE: "soon", HEADER_TRACEPARENT: ""})
        assert meta.deadline_ms is None and meta.traceparent is None

    def test_deadline(self) -> None:
        meta = bus.RequestMeta(request_id="r", deadline_ms=10_000)
        assert meta.remaining_s(now=9_000) == 1.0
        assert not meta.expired(now=9_999)
        assert meta.expired(now=10_000)
        assert not bus.RequestMeta(request_id="r").expired()
        assert bus.RequestMeta(request_id="r", deadline_ms=bus.deadline_after(5)).remaining_s()


def test_server_list_splits_a_comma_separated_url() -> None:
    assert bus.server_list("nats://a:4222") == ["nats://a:4222"]
    assert bus.server_list(" nats://a:1, nats://b:2 ,") == ["nats://a:1", "nats://b:2"]
    with pytest.raises(ValueError, match="no NATS server"):
        bus.server_list(" , ")


@pytest.mark.integration
async def test_a_server_list_connects_past_a_node_that_is_down(nats_cluster: NatsCluster) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    for _ in range(3):  # the list is tried in random order: the dead node first, some time
        nc = await bus.connect(f"{dead},{nats_cluster.urls[1]}", name="test", reconnect_wait_s=0.05)
        try:
            assert nc.connected_url is not None
            assert nc.connected_url.geturl() == nats_cluster.urls[1]
        finally:
            await nc.close()


@pytest.mark.integration
@pytest.mark.slow
async def test_a_client_of_the_cluster_moves_to_another_node(nats_cluster: NatsCluster) -> None:
    """Connected through the list, a client survives its node's stop: it reconnects to another
    node at once and a request through the cluster works again."""
    subject = _subject()
    server = await bus.connect(nats_cluster.url, name="responder")
    client = await bus.connect(nats_cluster.url, name="requester")
    try:

        async def echo(msg: bus.Msg) -> None:
            await server.publish(msg.reply, msg.data)

        await server.subscribe(subject, cb=echo)
        await server.flush()
        assert client.connected_url is not None
        node = nats_cluster.urls.index(client.connected_url.geturl())
        nats_cluster.stop_node(node)
        try:
            answer = None
            for _ in range(50):
                try:
                    answer = await client.request(subject, b"hi", timeout=0.5)
                    break
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.1)
            assert answer is not None and answer.data == b"hi"
            assert client.connected_url is not None
            assert client.connected_url.geturl() != nats_cluster.urls[node]
        finally:
            nats_cluster.start_node(node)
    finally:
        await client.close()
        await server.close()


@pytest.mark.integration
class TestOverNats:
    async def test_no_responders_arrives_on_a_custom_inbox(self, nats_url: str) -> None:
        nc = await bus.connect(nats_url, name="test")
        try:
            inbox = f"_INBOX.{uuid.uuid4().hex}"
            got: asyncio.Queue[bus.Msg] = asyncio.Queue()
            await nc.subscribe(f"{inbox}.*", cb=got.put)
            await nc.publish(_subject(), b"{}", reply=f"{inbox}.t1", headers={"a": "b"})
            msg = await asyncio.wait_for(got.get(), 2)
            assert msg.subject == f"{inbox}.t1"
            assert bus.is_no_responders(msg)
        finally:
            await bus.close(nc)

    async def test_reply_error_and_ordinary_messages(self, nats_url: str) -> None:
        nc = await bus.connect(nats_url, name="test")
        try:
            subject = _subject()
            sub = await nc.subscribe(subject)
            meta = bus.RequestMeta(request_id="req-7")
            sent = await bus.reply_error(nc, subject, ErrorKind.OVERLOADED, "queue full", meta=meta)
            msg = await sub.next_msg(timeout=2)
            assert not bus.is_no_responders(msg)
            reply = reply_decoder.decode(msg.data)
            assert isinstance(reply, ReplyError)
            assert reply.status == 429 and reply.error == sent
            assert reply.error.error.type == ErrorKind.OVERLOADED.value
            assert msg.headers == {HEADER_REQUEST_ID: "req-7"}
        finally:
            await bus.close(nc)

    async def test_reply_error_without_subject_does_not_publish(self, nats_url: str) -> None:
        nc = await bus.connect(nats_url, name="test")
        try:
            body = await bus.reply_error(nc, None, ErrorKind.TIMEOUT, "late")
            assert body.status == 504
        finally:
            await bus.close(nc)

    async def test_ping(self, nats_url: str) -> None:
        nc = await bus.connect(nats_url, name="test")
        try:
            subject = _subject()
            assert not await bus.ping(nc, subject, timeout_s=1.0)

            async def responder(msg: bus.Msg) -> None:
                assert bus.is_ping(msg)
                await bus.answer_ping(nc, msg)

            await nc.subscribe(subject, cb=responder)
            assert await bus.ping(nc, subject, timeout_s=1.0)
        finally:
            await bus.close(nc)

    async def test_connect_gives_up_after_the_startup_attempts(self) -> None:
        with pytest.raises(nats.errors.NoServersError):
            await bus.connect(
                "nats://127.0.0.1:1",
                name="test",
                connect_timeout_s=0.5,
                reconnect_wait_s=0.05,
                startup_attempts=2,
            )

    async def test_reconnect_limit_applies_after_connecting(self, nats_url: str) -> None:
        nc = await bus.connect(nats_url, name="test", startup_attempts=3)
        try:
            assert nc.options["max_reconnect_attempts"] == -1
        finally:
            await bus.close(nc)


async def test_no_responders_reaches_only_a_publisher_that_subscribes_to_the_reply(
    client: Client, nats_url: str
) -> None:
    """Why the classifier forwards with its own bounce subject as the NATS reply: nats-server
    sends "no responders" only to the publishing connection, and only when that connection
    itself subscribes to the reply subject. With the ingress inbox as the reply, the ingress
    (subscribed) would learn nothing and the classifier (not subscribed) nothing either."""
    publisher = await bus.connect(nats_url, name="publisher")
    try:
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        elsewhere: asyncio.Queue[bus.Msg] = asyncio.Queue()
        await client.subscribe(f"{inbox}.*", cb=elsewhere.put)
        for _ in range(2):  # the first PING may overtake the SUB in nats-py's buffer
            await client.flush()
        headers = {HEADER_REQUEST_ID: "r"}
        await publisher.publish(_subject(), b"x", reply=f"{inbox}.1", headers=headers)
        await publisher.flush()
        own: asyncio.Queue[bus.Msg] = asyncio.Queue()
        bounce = f"_INBOX.{uuid.uuid4().hex}"
        await publisher.subscribe(f"{bounce}.>", cb=own.put)
        await publisher.publish(_subject(), b"x", reply=f"{bounce}.{inbox}.2", headers=headers)
        notice = await asyncio.wait_for(own.get(), 5)
        assert bus.is_no_responders(notice) and notice.subject == f"{bounce}.{inbox}.2"
        await client.flush()
        assert elsewhere.empty(), "the other subscriber of the reply subject got nothing"
    finally:
        await publisher.close()
