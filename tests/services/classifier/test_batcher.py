"""`services.classifier.batcher`: batches form while one runs, on one thread, and all are answered."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.classifier.batch_queue import Batch, BatchQueue, Entry
from services.classifier.batcher import Batcher


class Recorder:
    """Fake `prepare`/`run`/`complete`/`expire` that record what the batcher did."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.prepared: list[list[str]] = []
        self.ran: list[list[str]] = []
        self.threads: set[int] = set()
        self.completed: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.expired: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def prepare(self, batch: Batch[str]) -> list[str]:
        names = [e.payload for e in batch.entries]
        self.prepared.append(names)
        return names

    def run(self, names: list[str]) -> list[str]:
        self.threads.add(threading.get_ident())
        self.gate.wait(5)
        self.ran.append(names)
        if self.fail_on in names:
            raise RuntimeError("backend failed")
        return [n.upper() for n in names]

    async def complete(
        self, batch: Batch[str], results: list[str] | None, error: BaseException | None
    ) -> None:
        for i, entry in enumerate(batch.entries):
            if error is not None:
                self.errors[entry.payload] = str(error)
            else:
                assert results is not None
                self.completed[entry.payload] = results[i]

    async def expire(self, entries: list[Entry[str]]) -> None:
        self.expired += [e.payload for e in entries]


def _batcher(rec: Recorder, **kw: float) -> Batcher[str, list[str], list[str]]:
    args: dict[str, float | bool] = {
        "max_batch_size": 4,
        "max_batch_tokens": 10_000,
        "max_wait_s": 0.005,
        "max_queue": 64,
    }
    args.update(kw)
    queue: BatchQueue[str] = BatchQueue(**args)  # type: ignore[arg-type]
    return Batcher(
        queue, prepare=rec.prepare, run=rec.run, complete=rec.complete, expire=rec.expire
    )


def _entry(name: str, deadline: float | None = None) -> Entry[str]:
    return Entry(tokens=10, arrival=time.monotonic(), payload=name, deadline=deadline)


async def _until(predicate: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


async def test_every_entry_is_completed_on_one_dedicated_thread() -> None:
    rec = Recorder()
    batcher = _batcher(rec)
    batcher.start()
    try:
        names = [f"r{i}" for i in range(23)]
        for name in names:
            assert batcher.submit(_entry(name))
        assert await batcher.drain(5)
        assert rec.completed == {n: n.upper() for n in names}
        assert all(len(b) <= 4 for b in rec.ran)
        assert len(rec.threads) == 1 and threading.get_ident() not in rec.threads
    finally:
        await batcher.close()


async def test_next_batch_forms_while_the_current_one_runs() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the first batch on the thread
    batcher = _batcher(rec, max_batch_size=2)
    batcher.start()
    try:
        for name in ["a", "b"]:
            batcher.submit(_entry(name))
        await _until(lambda: len(rec.prepared) == 1)
        for name in ["c", "d", "e", "f"]:
            batcher.submit(_entry(name))
        # The second batch is prepared while the first still runs; the third waits for the slot.
        await _until(lambda: len(rec.prepared) == 2)
        await asyncio.sleep(0.05)
        assert rec.prepared == [["a", "b"], ["c", "d"]] and rec.ran == []
        assert batcher.in_flight == 6
        rec.gate.set()
        assert await batcher.drain(5)
        assert rec.prepared == [["a", "b"], ["c", "d"], ["e", "f"]]
        assert set(rec.completed) == set("abcdef")
    finally:
        rec.gate.set()
        await batcher.close()


async def test_an_idle_model_runs_at_once_a_busy_one_lets_the_next_batch_wait() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold each batch on the thread until released
    batcher = _batcher(rec, max_wait_s=10.0, run_when_idle=True)
    batcher.start()
    try:
        batcher.submit(_entry("a"))
        # Idle: cut at once, not after the 10 s wait.
        await _until(lambda: rec.prepared == [["a"]], timeout=2.0)
        batcher.submit(_entry("b"))
        await asyncio.sleep(0.05)
        # "a" runs: "b" waits to fill a batch.
        assert rec.prepared == [["a"]]
        batcher.submit(_entry("c"))
        rec.gate.set()
        # The thread is free again: "b" and "c" go at once, together.
        await _until(lambda: len(rec.ran) == 2, timeout=2.0)
        assert rec.ran == [["a"], ["b", "c"]]
        assert await batcher.drain(5)
    finally:
        rec.gate.set()
        await batcher.close()


async def test_a_failing_batch_is_answered_with_the_error_and_others_go_on() -> None:
    rec = Recorder(fail_on="bad")
    batcher = _batcher(rec, max_batch_size=1)
    batcher.start()
    try:
        for name in ["ok1", "bad", "ok2"]:
            batcher.submit(_entry(name))
        assert await batcher.drain(5)
        assert rec.errors == {"bad": "backend failed"}
        assert rec.completed == {"ok1": "OK1", "ok2": "OK2"}
    finally:
        await batcher.close()


async def test_expired_entries_are_handed_to_expire_not_run() -> None:
    rec = Recorder()
    batcher = _batcher(rec, max_wait_s=0.02)
    batcher.start()
    try:
        batcher.submit(_entry("late", deadline=time.monotonic() - 1))
        batcher.submit(_entry("fine", deadline=time.monotonic() + 10))
        assert await batcher.drain(5)
        assert rec.expired == ["late"]
        assert rec.completed == {"fine": "FINE"}
    finally:
        await batcher.close()


async def test_withdrawn_entries_are_never_run_and_drain_ends() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = _batcher(rec, max_batch_size=1)
    batcher.start()
    try:
        for name in ("running", "in-slot", "queued", "withdrawn"):
            batcher.submit(_entry(name))
        await _until(lambda: rec.prepared == [["running"], ["in-slot"]])
        gone = batcher.withdraw(lambda payload: payload in ("withdrawn", "in-slot"))
        assert [e.payload for e in gone] == ["withdrawn"]  # a batch already cut stays
        rec.gate.set()
        assert await batcher.drain(5)
        assert set(rec.completed) == {"running", "in-slot", "queued"}
        assert batcher.in_flight == 0
    finally:
        rec.gate.set()
        await batcher.close()


async def test_full_queue_refuses_and_drain_stops_intake() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = _batcher(rec, max_batch_size=1, max_queue=2)
    batcher.start()
    try:
        accepted = [batcher.submit(_entry(f"r{i}")) for i in range(8)]
        # Some entries left the queue for the slot and the thread; the rest were refused at once.
        assert accepted[:2] == [True, True] and not all(accepted)
        drained = asyncio.create_task(batcher.drain(5))
        await asyncio.sleep(0.01)
        assert not batcher.submit(_entry("after-drain"))
        rec.gate.set()
        assert await drained
        assert len(rec.completed) == accepted.count(True)
    finally:
        rec.gate.set()
        await batcher.close()


async def test_drain_times_out_when_inference_hangs() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = _batcher(rec)
    batcher.start()
    try:
        batcher.submit(_entry("stuck"))
        assert not await batcher.drain(0.05)
    finally:
        rec.gate.set()
        await batcher.close()


@pytest.mark.parametrize("count", [1, 7])
async def test_prepare_failure_is_answered(count: int) -> None:
    rec = Recorder()

    def bad_prepare(batch: Batch[str]) -> list[str]:
        raise ValueError("cannot collate")

    queue: BatchQueue[str] = BatchQueue(
        max_batch_size=4, max_batch_tokens=1000, max_wait_s=0.0, max_queue=10
    )
    batcher = Batcher(
        queue, prepare=bad_prepare, run=rec.run, complete=rec.complete, expire=rec.expire
    )
    batcher.start()
    try:
        for i in range(count):
            batcher.submit(_entry(f"r{i}"))
        assert await batcher.drain(5)
        assert len(rec.errors) == count and rec.ran == []
    finally:
        await batcher.close()


def _job(name: str) -> Entry[str]:
    return Entry(tokens=10, arrival=time.monotonic(), payload=name, lane="job")


async def test_interactive_entries_overtake_a_job_backlog() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the first job batch on the thread
    batcher = _batcher(rec, max_batch_size=2, max_job_queue=64)
    batcher.start()
    try:
        for i in range(8):
            assert batcher.submit(_job(f"j{i}"))
        await _until(lambda: len(rec.prepared) == 1)
        await asyncio.sleep(0.05)
        # While a job batch runs no second job batch waits in the hand-off slot...
        assert rec.prepared == [["j0", "j1"]]
        assert batcher.submit(_entry("a"))
        # ...so the interactive entry is cut at once, and runs right after the job batch.
        await _until(lambda: len(rec.prepared) == 2)
        assert rec.prepared[1] == ["a"]
        rec.gate.set()
        assert await batcher.drain(5)
        assert rec.ran[:2] == [["j0", "j1"], ["a"]]
        assert set(rec.completed) == {"a", *(f"j{i}" for i in range(8))}
    finally:
        rec.gate.set()
        await batcher.close()


async def test_job_entries_fill_idle_capacity_only() -> None:
    rec = Recorder()
    batcher = _batcher(rec, max_batch_size=2, max_job_queue=64, max_wait_s=0.0)
    batcher.start()
    try:
        for i in range(6):
            batcher.submit(_entry(f"a{i}"))
            batcher.submit(_job(f"j{i}"))
        assert await batcher.drain(5)
        # All were queued before the batcher ran: interactive batches first, never mixed.
        interactive = [["a0", "a1"], ["a2", "a3"], ["a4", "a5"]]
        assert rec.ran == [*interactive, ["j0", "j1"], ["j2", "j3"], ["j4", "j5"]]
    finally:
        await batcher.close()
