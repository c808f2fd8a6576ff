"""The scheduler: capacity, FIFO order, LoRA slots, admission, release."""

from __future__ import annotations

import asyncio

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
