"""Cancel bookkeeping without a broker: running requests stop, early cancels are remembered."""

from __future__ import annotations

import asyncio

from services.dispatcher.cancels import Cancels


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def test_a_cancel_stops_the_running_request() -> None:
    cancels = Cancels()
    task = asyncio.create_task(asyncio.sleep(30))
    cancels.running("a", task)
    assert cancels.cancel("a", None) is True
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert not cancels.overtaken("a")  # stopped, not remembered


async def test_a_finished_request_is_forgotten() -> None:
    cancels = Cancels()
    task = asyncio.create_task(asyncio.sleep(0))
    cancels.running("a", task)
    await task
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert cancels.cancel("a", None) is False  # nothing runs: remembered instead
    assert cancels.overtaken("a")


async def test_a_later_task_with_the_same_token_is_kept_when_the_first_ends() -> None:
    cancels = Cancels()
    first = asyncio.create_task(asyncio.sleep(0))
    cancels.running("a", first)
    second = asyncio.create_task(asyncio.sleep(30))
    cancels.running("a", second)
    await first
    await asyncio.sleep(0)
    assert cancels.cancel("a", None) is True
    await asyncio.gather(second, return_exceptions=True)
    assert second.cancelled()


def test_an_overtaking_cancel_counts_once_until_the_deadline() -> None:
    clock = Clock(1_000_000)
    cancels = Cancels(clock=clock)
    assert cancels.cancel("a", 1_005_000) is False  # deadline 1005 s
    assert cancels.overtaken("a")
    assert not cancels.overtaken("a")  # used up
    cancels.cancel("b", 1_005_000)
    clock.now = 1_005_000
    assert not cancels.overtaken("b")  # the deadline has passed
    assert not cancels.overtaken("never cancelled")


def test_a_cancel_without_deadline_is_remembered_for_a_while() -> None:
    clock = Clock(1_000_000)
    cancels = Cancels(clock=clock)
    cancels.cancel("a", None)
    cancels.cancel("b", 0)
    clock.now = 1_299_000
    assert cancels.overtaken("a")
    clock.now = 1_301_000
    assert not cancels.overtaken("b")


def test_remembered_cancels_are_bounded_expired_first_then_oldest() -> None:
    clock = Clock(1_000_000)
    cancels = Cancels(limit=3, clock=clock)
    cancels.cancel("late", 999_000)  # already past
    for name in ("c0", "c1", "c2"):
        cancels.cancel(name, 1_030_000)
    # Four entries: the expired one goes, the three live ones stay.
    assert [cancels.overtaken(n) for n in ("c0", "c1", "c2")] == [True, True, True]
    for name in ("c0", "c1", "c2", "c3"):
        cancels.cancel(name, 1_030_000)
    # Nothing expired: the oldest ("c0") is forgotten.
    assert [cancels.overtaken(n) for n in ("c0", "c1", "c2", "c3")] == [False, True, True, True]
