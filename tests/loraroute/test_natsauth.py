"""The NATS users `loraroute up` makes: the permission table, the credentials file, and a real
nats-server enforcing both (response permissions included)."""

from __future__ import annotations

import asyncio
import shlex
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from loraroute import natsauth
from loraroute.natsauth import KINDS, SERVICE_KINDS, Credentials
from loraroute.natsserver import NatsServer
from services.common import bus
from services.common.subjects import Subjects
from tests.nats_users import Connection, refused_connections, synced

pytestmark = pytest.mark.integration

SUBJECTS = Subjects("lr.test")


def _allowed(kind: str, action: str) -> list[str]:
    allow: list[str] = natsauth.permissions(kind, SUBJECTS, 60.0)[action]["allow"]
    return allow


def test_only_admin_may_read_or_write_everything() -> None:
    assert _allowed("admin", "subscribe") == [">"] and _allowed("admin", "publish") == [">"]
    for kind in SERVICE_KINDS:
        assert ">" not in _allowed(kind, "subscribe") + _allowed(kind, "publish"), kind


def test_each_sensitive_subject_has_one_kind_of_writer() -> None:
    def writers(subject: str) -> set[str]:
        return {kind for kind in SERVICE_KINDS if subject in _allowed(kind, "publish")}

    assert writers(SUBJECTS.dispatch_all) == {"classifier"}
    assert writers("lr.test.cancel.*") == {"ingress"}
    assert writers(SUBJECTS.classify) == {"ingress"}
    assert writers(SUBJECTS.classify_jobs) == {"jobs"}
    # Into the requesters' inboxes: the dispatcher only (the classifier answers through
    # response permissions, see below).
    assert writers(f"{SUBJECTS.inbox('ingress')}.>") == {"dispatcher"}
    assert writers(f"{SUBJECTS.inbox('jobs')}.>") == {"dispatcher"}
    classifier = natsauth.permissions("classifier", SUBJECTS, 310.0)
    assert classifier["allow_responses"] == {
        "max": natsauth.RESPONSE_MAX_MSGS,
        "expires": "310000ms",
    }


def test_each_inbox_is_read_by_its_own_kind_only() -> None:
    for owner in ("ingress", "jobs"):
        inbox = f"{SUBJECTS.inbox(owner)}.>"
        assert {k for k in SERVICE_KINDS if inbox in _allowed(k, "subscribe")} == {owner}


def test_credentials_are_fresh_and_never_shown() -> None:
    first, second = Credentials.generate(), Credentials.generate()
    assert set(first) == set(KINDS)
    passwords = [c.password for c in [*first.values(), *second.values()]]
    assert len(set(passwords)) == len(passwords) and min(map(len, passwords)) >= 32
    assert first["ingress"].password not in repr(first)
    assert natsauth.env(first["jobs"]) == {
        "LORAROUTE_NATS_USER": "jobs",
        "LORAROUTE_NATS_PASSWORD": first["jobs"].password,
    }
    assert natsauth.env(None) == {}


def test_the_credentials_file_is_for_its_owner_only(tmp_path: Path) -> None:
    users = Credentials.generate()
    path = tmp_path / "var" / "nats-credentials.json"
    path.parent.mkdir()
    path.write_text("stale")
    path.chmod(0o644)
    natsauth.write_credentials(path, "nats://127.0.0.1:4222", users)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert natsauth.read_credentials(path) == ("nats://127.0.0.1:4222", users)


@pytest.fixture(scope="module")
def users() -> dict[str, Credentials]:
    return Credentials.generate()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, users: dict[str, Credentials]
) -> Iterator[NatsServer]:
    config = natsauth.server_config(users, SUBJECTS, responses_expire_s=60.0)
    with NatsServer(store_dir=tmp_path_factory.mktemp("nats"), extra_config=config) as server:
        yield server


@pytest.fixture
async def connect(
    server: NatsServer, users: dict[str, Credentials]
) -> AsyncIterator[dict[str, Connection]]:
    opened: dict[str, Connection] = {}
    for kind in KINDS:
        connection = Connection()
        connection.nc = await nats.connect(
            server.url,
            user=users[kind].user,
            password=users[kind].password,
            inbox_prefix=SUBJECTS.inbox(kind),
            error_cb=connection.on_error,
            allow_reconnect=False,
        )
        opened[kind] = connection
    yield opened
    for connection in opened.values():
        await connection.client.close()


async def test_anonymous_and_wrong_passwords_are_refused(
    server: NatsServer, users: dict[str, Credentials]
) -> None:
    async def ignore(error: Exception) -> None:
        pass

    with refused_connections():
        for options in ({}, {"user": "ingress", "password": users["admin"].password}):
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(server.url, allow_reconnect=False, error_cb=ignore, **options)


async def test_a_classifier_answers_only_what_it_received(
    connect: dict[str, Connection],
) -> None:
    ingress, classifier = connect["ingress"], connect["classifier"]
    received: asyncio.Queue[Msg] = asyncio.Queue()
    await classifier.client.subscribe(SUBJECTS.classify, cb=received.put)
    await synced(classifier.client)
    inbox = ingress.client.new_inbox()
    answers: asyncio.Queue[Msg] = asyncio.Queue()
    await ingress.client.subscribe(f"{inbox}.*", cb=answers.put)
    await synced(ingress.client)
    await ingress.client.publish(SUBJECTS.classify, b"request", reply=f"{inbox}.1")
    request = await asyncio.wait_for(received.get(), 5)
    assert request.reply == f"{inbox}.1"
    # Several messages to the reply subject of a received request: allowed.
    for part in (b"one", b"two"):
        await classifier.client.publish(request.reply, part)
    assert [(await asyncio.wait_for(answers.get(), 5)).data for _ in range(2)] == [b"one", b"two"]
    # Another request's inbox (a guessed token): refused, and nothing arrives.
    await classifier.client.publish(f"{inbox}.2", b"spoofed")
    assert await classifier.refused(f"{inbox}.2"), classifier.errors
    await synced(ingress.client)
    assert answers.empty()


async def test_a_dispatcher_reaches_the_inboxes_and_nothing_else(
    connect: dict[str, Connection],
) -> None:
    dispatcher = connect["dispatcher"]
    for subject in (SUBJECTS.classify, SUBJECTS.cancel("r1"), SUBJECTS.dispatch("m")):
        await dispatcher.client.publish(subject, b"x")
        assert await dispatcher.refused(subject), subject
    await dispatcher.client.subscribe(f"{SUBJECTS.inbox('ingress')}.>")
    assert await dispatcher.refused(f"{SUBJECTS.inbox('ingress')}.>")
    # Its probe subject and its answers work: a ping from the ingress is answered.

    async def pong(msg: Msg) -> None:
        await bus.answer_ping(dispatcher.client, msg)

    await dispatcher.client.subscribe(SUBJECTS.ping_dispatch("m"), cb=pong)
    await synced(dispatcher.client)
    assert await bus.ping(connect["ingress"].client, SUBJECTS.ping_dispatch("m"))


def test_the_nsc_example_gives_each_kind_the_table(repo_root: Path) -> None:
    """docs/examples/nats-users.sh (an external NATS with JWT accounts) grants what `up` does."""
    text = (repo_root / "docs" / "examples" / "nats-users.sh").read_text(encoding="utf-8")
    commands = text.replace("\\\n", " ").splitlines()
    users = {}
    for command in commands:
        if command.startswith("nsc add user"):
            words = shlex.split(command)
            options = dict(zip(words[3::2], words[4::2], strict=True))
            users[options["--name"]] = options
    assert set(users) == set(SERVICE_KINDS)
    subjects = Subjects("loraroute")
    for kind, options in users.items():
        wanted = natsauth.permissions(kind, subjects, 610.0)
        assert options["--allow-pub"].split(",") == wanted["publish"]["allow"], kind
        assert options["--allow-sub"].split(",") == wanted["subscribe"]["allow"], kind
        responses = wanted.get("allow_responses")
        if responses is None:
            assert "--allow-pub-response" not in options, kind
        else:
            assert int(options["--allow-pub-response"]) == responses["max"]
            assert f"{options['--response-ttl'].removesuffix('s')}000ms" == responses["expires"]


async def test_a_service_with_wrong_credentials_is_told_so(server: NatsServer) -> None:
    with refused_connections(), pytest.raises(ConnectionRefusedError, match="of 'jobs-1'"):
        await bus.connect(
            server.url, name="jobs-1", startup_attempts=2, user="jobs", password="wrong"
        )
