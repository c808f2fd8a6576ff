"""The mock's scheduler: how many requests run, which wait, and how long tokens take.

Like vLLM's scheduler it admits waiting requests first-come first-served up to ``max_num_seqs``
running; a request for an adapter that is not running waits while ``max_loras`` distinct adapters
are already running, and later requests that fit are scheduled past it (vLLM skips such requests
rather than blocking the queue). Base-model requests need no adapter slot. Without
``max_num_queued_reqs`` the queue is unbounded (vLLM never answers 429); with it, a request that
would wait beyond the limit is refused (the caller answers 503).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Engine", "LatencyModel", "Ticket"]


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Time to first token, time per further token, and the cost of bringing an adapter into a slot."""

    ttft_s: float = 0.0
    itl_s: float = 0.0
    lora_load_s: float = 0.0


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's place in the engine. ``scheduled`` resolves to the adapter-load delay (s)."""

    adapter: str | None
    scheduled: asyncio.Future[float]
    enqueued: float = field(default_factory=time.monotonic)
    running: bool = False
    done: bool = False


class Engine:
    """Capacity, queue and LoRA slots. One event loop; every method is synchronous except ``wait``."""

    def __init__(
        self,
        *,
        max_num_seqs: int,
        max_loras: int,
        max_num_queued_reqs: int | None = None,
        latency: LatencyModel = LatencyModel(),
        on_change: Callable[[Engine], None] | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_loras = max_loras
        self.max_num_queued_reqs = max_num_queued_reqs
        self.latency = latency
        self._on_change = on_change
        self._waiting: deque[Ticket] = deque()
        self._running = 0
        self._lora_running: Counter[str] = Counter()

    # ---- state, for metrics and tests
    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def running_adapters(self) -> list[str]:
        return [name for name, n in self._lora_running.items() if n > 0]

    @property
    def waiting_adapters(self) -> list[str]:
        return list(dict.fromkeys(t.adapter for t in self._waiting if t.adapter))

    # ---- the request life cycle: submit -> wait -> release
    def submit(self, adapter: str | None) -> Ticket | None:
        """Queue a request; ``None`` if admission control refuses it (the queue is full)."""
        ticket = Ticket(adapter, asyncio.get_running_loop().create_future())
        if not self._fits(ticket, set(self.running_adapters)) and (
            self.max_num_queued_reqs is not None and len(self._waiting) >= self.max_num_queued_reqs
        ):
            return None
        self._waiting.append(ticket)
        self._schedule()
        return ticket

    async def wait(self, ticket: Ticket) -> float:
        """Wait until ``ticket`` runs (plus the adapter load time); returns the time spent queued."""
        load_s = await asyncio.shield(ticket.scheduled)
        queued = time.monotonic() - ticket.enqueued
        if load_s:
            await asyncio.sleep(load_s)
        return queued

    def release(self, ticket: Ticket) -> None:
        """Finish or abandon ``ticket``; safe to call more than once and before it ran."""
        if ticket.done:
            return
        ticket.done = True
        if ticket.running:
            self._running -= 1
            if ticket.adapter:
                self._lora_running[ticket.adapter] -= 1
                if self._lora_running[ticket.adapter] <= 0:
                    del self._lora_running[ticket.adapter]
        else:
            self._waiting.remove(ticket)
            ticket.scheduled.cancel()
        self._schedule()

    def _fits(self, ticket: Ticket, active: set[str]) -> bool:
        if self._running >= self.max_num_seqs:
            return False
        return not ticket.adapter or ticket.adapter in active or len(active) < self.max_loras

    def _schedule(self) -> None:
        active = set(self.running_adapters)
        still_waiting: deque[Ticket] = deque()
        for ticket in self._waiting:
            if not self._fits(ticket, active):
                still_waiting.append(ticket)
                continue
            load_s = 0.0
            if ticket.adapter:
                if ticket.adapter not in active:
                    load_s = self.latency.lora_load_s
                    active.add(ticket.adapter)
                self._lora_running[ticket.adapter] += 1
            self._running += 1
            ticket.running = True
            ticket.scheduled.set_result(load_s)
        self._waiting = still_waiting
        if self._on_change is not None:
            self._on_change(self)
