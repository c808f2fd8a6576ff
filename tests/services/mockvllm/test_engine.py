"""The scheduler: capacity, FIFO order, LoRA slots, admission, release."""

from __future__ import annotations

import asyncio

import pytest

from services.mockvllm.engine import Engine, LatencyModel


def _engine(**kw: int | None) -> Engine:
    args: dict[str, int | None] = {"max_num_seqs": 2, "max_loras": 1, **kw}
    return Engine(**args)  # type: ignore[arg-type]


async def test_runs_up_to_capacity_and_queues_the_rest_in_order() -> None:
    engine = _engine()
    tickets = [engine.submit(None) for _ in range(4)]
    assert all(t is not None for t in tickets)
    assert (engine.num_running, engine.num_waiting) == (2, 2)
    assert [t.running for t in tickets if t] == [True, True, False, False]
    engine.release(tickets[0])  # type: ignore[arg-type]
    assert [t.running for t in tickets if t] == [True, True, True, False]


async def test_an_adapter_waits_for_a_slot_and_later_requests_pass_it() -> None:
    engine = _engine(max_num_seqs=8)
    a = engine.submit("a")
    b = engine.submit("b")
    a2 = engine.submit("a")
    base = engine.submit(None)
    assert a and b and a2 and base
    assert (a.running, b.running, a2.running, base.running) == (True, False, True, True)
    assert engine.running_adapters == ["a"] and engine.waiting_adapters == ["b"]
    engine.release(a)
    assert not b.running  # a2 still holds the slot
    engine.release(a2)
    assert b.running and engine.running_adapters == ["b"]


async def test_admission_limit_refuses_only_requests_that_would_wait() -> None:
    engine = _engine(max_num_seqs=1, max_num_queued_reqs=1)
    first, second = engine.submit(None), engine.submit(None)
    assert first and second and engine.submit(None) is None
    engine.release(first)
    assert second.running and engine.submit(None) is not None


async def test_releasing_a_waiting_ticket_removes_it() -> None:
    engine = _engine(max_num_seqs=1)
    running, waiting = engine.submit(None), engine.submit(None)
    assert running and waiting
    engine.release(waiting)
    engine.release(waiting)  # idempotent
    assert engine.num_waiting == 0 and waiting.scheduled.cancelled()
    engine.release(running)
    assert engine.num_running == 0


async def test_wait_reports_queue_time_and_pays_the_adapter_load() -> None:
    engine = Engine(max_num_seqs=1, max_loras=1, latency=LatencyModel(lora_load_s=0.05))
    first, second = engine.submit("a"), engine.submit("a")
    assert first and second
    loop = asyncio.get_running_loop()
    started = loop.time()
    await engine.wait(first)
    assert loop.time() - started >= 0.05  # "a" took the free slot
    loop.call_later(0.05, engine.release, first)
    queued = await engine.wait(second)
    assert queued >= 0.05


async def test_every_change_is_reported() -> None:
    seen: list[tuple[int, int]] = []
    engine = Engine(
        max_num_seqs=1, max_loras=1, on_change=lambda e: seen.append((e.num_running, e.num_waiting))
    )
    t1, t2 = engine.submit(None), engine.submit(None)
    assert t1 and t2
    engine.release(t1)
    assert seen == [(1, 0), (1, 1), (1, 0)]


async def _run(engine: Engine, adapter: str) -> bool:
    """One request for `adapter`, start to finish; True when it swapped its adapter in."""
    swaps = engine.swaps
    ticket = engine.submit(adapter)
    assert ticket is not None and ticket.running
    engine.release(ticket)
    return engine.swaps > swaps


async def test_an_idle_adapter_keeps_its_slot_until_the_least_recently_used_is_evicted() -> None:
    engine = Engine(max_num_seqs=4, max_loras=2)
    assert [await _run(engine, a) for a in "aab"] == [True, False, True]
    assert engine.gpu_adapters == ["a", "b"]
    assert not await _run(engine, "a")  # resident; now b is the least recently used
    assert await _run(engine, "c")
    assert engine.gpu_adapters == ["a", "c"] and engine.swaps == 3


async def test_a_running_adapter_is_never_evicted() -> None:
    engine = Engine(max_num_seqs=4, max_loras=2)
    await _run(engine, "a")
    busy = engine.submit("b")
    assert busy and busy.running
    assert await _run(engine, "c")
    assert engine.gpu_adapters == ["b", "c"]  # a, idle and older, went; b runs on


async def test_the_cpu_cache_spares_the_disk_read_of_a_swap() -> None:
    latency = LatencyModel(lora_load_s=0.5, lora_swap_s=0.1)
    engine = Engine(max_num_seqs=4, max_loras=1, max_cpu_loras=2, latency=latency)
    assert engine.preload("a") == 0.5 and engine.preload("a") == 0.0

    def swap_cost(adapter: str) -> float:
        ticket = engine.submit(adapter)
        assert ticket is not None
        engine.release(ticket)
        return ticket.scheduled.result()

    assert swap_cost("a") == 0.1  # in the CPU cache: the copy into the slot only
    assert swap_cost("b") == 0.6  # read from disk, then copied
    assert swap_cost("a") == 0.1
    assert (engine.swaps, engine.loads, engine.cpu_adapters) == (3, 2, ["b", "a"])
    engine.forget("a")
    assert engine.cpu_adapters == ["b"] and engine.gpu_adapters == []


async def test_requests_joining_a_swap_wait_for_the_rest_of_it() -> None:
    engine = Engine(max_num_seqs=4, max_loras=1, latency=LatencyModel(lora_swap_s=60.0))
    first, second = engine.submit("a"), engine.submit("a")
    assert first and second
    assert first.scheduled.result() == 60.0
    assert 0.0 < second.scheduled.result() <= 60.0
    assert engine.swaps == 1


def test_the_cpu_cache_holds_at_least_the_gpu_slots() -> None:
    with pytest.raises(ValueError, match=r"max_cpu_loras \(1\) must be >= max_loras \(2\)"):
        Engine(max_num_seqs=1, max_loras=2, max_cpu_loras=1)
