"""Fixtures shared by the service tests: a NATS client on the session's nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from services.common import bus


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    """A connection to the session's nats-server, playing the ingress; closed after the test."""
    nc = await bus.connect(nats_url, name="test-client")
    try:
        yield nc
    finally:
        await bus.close(nc)
