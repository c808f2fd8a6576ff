"""The mock's scheduler: how many requests run, which wait, and how long tokens take.

Like vLLM's scheduler it admits waiting requests first-come first-served up to ``max_num_seqs``
running; a request for an adapter that is not running waits while ``max_loras`` distinct adapters
are already running, and later requests that fit are scheduled past it (vLLM skips such requests
rather than blocking the queue). Base-model requests need no adapter slot. Without
``max_num_queued_reqs`` the queue is unbounded (vLLM never answers 429); with it, a request that
would wait beyond the limit is refused (the caller answers 503).

Adapters live in two LRU caches, as in vLLM's ``LRUCacheWorkerLoRAManager``: ``max_loras`` GPU
slots and a CPU cache of ``max_cpu_loras`` (at least ``max_loras``). An adapter stays in its GPU
slot after its requests finish; a request for an adapter that is not in a slot takes a free one
or evicts the least recently used adapter that is not running (a *swap*, costing
``lora_swap_s``), and an adapter not in the CPU cache is read from disk first (a *load*, costing
``lora_load_s``). Registering an adapter (static or a runtime load) reads it into the CPU cache,
as vLLM preloads it. Requests for an adapter whose swap is under way wait for it to finish.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Engine", "LatencyModel", "Ticket"]


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Time to first token, time per further token, and what an adapter costs to bring in: read
    from disk into the CPU cache (``lora_load_s``), copied into a GPU slot (``lora_swap_s``)."""

    ttft_s: float = 0.0
    itl_s: float = 0.0
    lora_load_s: float = 0.0
    lora_swap_s: float = 0.0


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's place in the engine. ``scheduled`` resolves to the wait for its adapter's
    swap (s): the whole swap for the request that started it, the rest of it for others."""

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
        max_cpu_loras: int | None = None,
        max_num_queued_reqs: int | None = None,
        latency: LatencyModel = LatencyModel(),
        on_change: Callable[[Engine], None] | None = None,
    ) -> None:
        if max_cpu_loras is not None and max_cpu_loras < max_loras:
            # vLLM's LoRAConfig refuses this at start-up with the same words.
            raise ValueError(f"max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({max_loras})")
        self.max_num_seqs = max_num_seqs
        self.max_loras = max_loras
        self.max_cpu_loras = max_loras if max_cpu_loras is None else max_cpu_loras
        self.max_num_queued_reqs = max_num_queued_reqs
        self.latency = latency
        self._on_change = on_change
        self._waiting: deque[Ticket] = deque()
        self._running = 0
        self._lora_running: Counter[str] = Counter()
        self._gpu: OrderedDict[str, float] = OrderedDict()  # adapter -> when its swap ends
        self._cpu: OrderedDict[str, None] = OrderedDict()
        #: Adapters brought into a GPU slot, and adapters read from disk, since start.
        self.swaps = 0
        self.loads = 0

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

    @property
    def gpu_adapters(self) -> list[str]:
        """Adapters in a GPU slot, least recently used first."""
        return list(self._gpu)

    @property
    def cpu_adapters(self) -> list[str]:
        """Adapters in the CPU cache, least recently used first."""
        return list(self._cpu)

    # ---- adapters registered and removed
    def preload(self, adapter: str) -> float:
        """Read ``adapter`` into the CPU cache (a registration); returns the load time it costs,
        0 when it is cached already."""
        if adapter in self._cpu:
            self._cpu.move_to_end(adapter)
            return 0.0
        self._cache_on_cpu(adapter)
        self.loads += 1
        return self.latency.lora_load_s

    def forget(self, adapter: str) -> None:
        """Drop ``adapter`` from both caches (unloaded, or replaced by new weights); a slot held
        by running requests is kept until they finish."""
        self._cpu.pop(adapter, None)
        if not self._lora_running.get(adapter):
            self._gpu.pop(adapter, None)

    def _cache_on_cpu(self, adapter: str) -> None:
        self._cpu[adapter] = None
        self._cpu.move_to_end(adapter)
        while len(self._cpu) > self.max_cpu_loras:
            victim = next((a for a in self._cpu if a not in self._gpu), next(iter(self._cpu)))
            del self._cpu[victim]

    def _activate(self, adapter: str, now: float) -> float:
        """Make ``adapter`` resident in a GPU slot; returns how long its requests wait for it."""
        ready = self._gpu.get(adapter)
        if ready is not None:
            self._gpu.move_to_end(adapter)
            if adapter in self._cpu:
                self._cpu.move_to_end(adapter)
            return max(0.0, ready - now)
        cost = self.latency.lora_swap_s
        if adapter not in self._cpu:
            cost += self.latency.lora_load_s
            self.loads += 1
        self._cache_on_cpu(adapter)
        if len(self._gpu) >= self.max_loras:  # evict the least recently used idle adapter
            victim = next(a for a in self._gpu if not self._lora_running.get(a))
            del self._gpu[victim]
        self._gpu[adapter] = now + cost
        self.swaps += 1
        return cost

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
        """Wait until ``ticket`` runs (plus its adapter's swap); returns the time spent queued."""
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
        now = time.monotonic()
        for ticket in self._waiting:
            if not self._fits(ticket, active):
                still_waiting.append(ticket)
                continue
            load_s = 0.0
            if ticket.adapter:
                load_s = self._activate(ticket.adapter, now)
                active.add(ticket.adapter)
                self._lora_running[ticket.adapter] += 1
            self._running += 1
            ticket.running = True
            ticket.scheduled.set_result(load_s)
        self._waiting = still_waiting
        if self._on_change is not None:
            self._on_change(self)
