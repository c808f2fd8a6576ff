"""Connecting to a nats-server that enforces `loraroute.natsauth`'s users, and telling whether
the server refused something (it answers a forbidden publish or subscription with a
"permissions violation" error, which nats-py hands to the error callback)."""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator

from nats.aio.client import Client

__all__ = ["Connection", "refused_connections", "synced"]


@contextlib.contextmanager
def refused_connections() -> Iterator[None]:
    """Around connections the server refuses: nats-py drops a refused connection's stream
    without closing it, and the stream warns (`ResourceWarning`) when collected. Collected
    here, quietly, rather than in whichever later test the collector happens to run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


async def synced(nc: Client) -> None:
    """Wait until the server has processed everything `nc` sent before. One `flush()` is not
    enough: nats-py writes its PING at once, possibly ahead of commands still in its buffer,
    which that first flush sends out; the second PING then follows them."""
    await nc.flush()
    await nc.flush()


class Connection:
    """A connection as one kind of user, with the server's errors collected (`on_error` is its
    error callback)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))

    @property
    def client(self) -> Client:
        assert self.nc is not None, "connect first"
        return self.nc

    async def refused(self, subject: str) -> bool:
        """Was a publish or subscription on `subject` refused as a permissions violation? (The
        server writes the subject in lower case in its error.)"""
        await synced(self.client)
        quoted = f'"{subject.lower()}"'
        return any("permissions violation" in e and quoted in e for e in self.errors)
