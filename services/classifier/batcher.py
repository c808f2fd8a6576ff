"""The micro-batcher: forms the next batch while the current one runs on the inference thread.

Two asyncio tasks and one thread:

- the *forming* task waits until a batch is due (`BatchQueue.ready_at`; with the queue's
  `run_when_idle`, at once while nothing is handed over or running), cuts it, prepares it
  (`prepare`, e.g. collating token arrays) and hands it over through a slot of size 1; it
  forms the next batch only once the slot is free, so a batch is never cut earlier than it
  must be, yet one is always ready when the thread finishes;
- the *inference* task moves each prepared batch to one dedicated thread (`run`, the model's
  forward pass: never on the event loop), then hands the results to `complete`, in a task of
  its own so that the thread starts on the next batch at once. The thread takes batches from a
  plain queue and answers through `call_soon_threadsafe` into an asyncio future: no executor
  and no `concurrent.futures.Future` chained to the loop's, which cost the event loop more
  (docs/benchmarks.md, "The classifier at one request in flight and at saturation");
- expired entries go to `expire` as soon as the queue drops them.

Job-lane entries are cut only while no batch is handed over or running (the model is idle), so
a job batch never waits in the slot ahead of an interactive request that arrives meanwhile: an
interactive request waits behind at most the one job batch already on the thread.

The batcher knows neither NATS nor the model: payloads, `prepare`, `run` and the callbacks
come from the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

import structlog

from services.classifier.batch_queue import Batch, BatchQueue, Entry

__all__ = ["Batcher"]

_log = structlog.get_logger("loraroute.batcher")

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


class Batcher(Generic[T, P, R]):
    """Runs batches cut from `queue` through `prepare` (event loop) and `run` (one thread).

    `complete(batch, results, error)` is awaited once per batch with either the results of
    `run` or the exception it raised; `expire(entries)` once per group of entries dropped for
    their deadline. Both must answer every entry they receive: the batcher drops nothing else.
    Call `start()` inside a running loop; `submit` only between `start()` and `close()`.
    """

    def __init__(
        self,
        queue: BatchQueue[T],
        *,
        prepare: Callable[[Batch[T]], P],
        run: Callable[[P], R],
        complete: Callable[[Batch[T], R | None, BaseException | None], Awaitable[None]],
        expire: Callable[[list[Entry[T]]], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        thread_name: str = "loraroute-inference",
    ) -> None:
        self.queue = queue
        self._prepare = prepare
        self._run = run
        self._complete = complete
        self._expire = expire
        self._clock = clock
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        # To the inference thread: (prepared batch, the future its result goes to), or None: stop.
        self._to_thread: SimpleQueue[tuple[P, asyncio.Future[R]] | None] = SimpleQueue()
        self._wake = asyncio.Event()
        # The hand-off of size 1: a prepared batch waiting for the thread, and its two signals.
        self._slot: tuple[Batch[T], P] | None = None
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self._slot_filled = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._followups: set[asyncio.Task[None]] = set()
        self._running = 0  # entries cut from the queue and not yet handed to `complete`
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        """Start the forming and inference tasks and the inference thread."""
        if self._tasks:
            return
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(asyncio.get_running_loop(),),
            name=self._thread_name,
            daemon=True,
        )
        self._thread.start()
        self._tasks = [
            asyncio.create_task(self._forming(), name="batcher-forming"),
            asyncio.create_task(self._inference(), name="batcher-inference"),
        ]

    def submit(self, entry: Entry[T]) -> bool:
        """Queue `entry`; False when the queue is full (refuse the request: overloaded)."""
        if self._closing or not self.queue.append(entry):
            return False
        self._idle.clear()
        self._wake.set()
        return True

    def withdraw(self, match: Callable[[T], bool]) -> list[Entry[T]]:
        """Take the queued entries whose payload `match`es out of the queue and return them; the
        caller answers (or knowingly drops) them. Entries already cut into a batch stay."""
        gone = self.queue.withdraw(match)
        if gone:
            self._check_idle()
            self._wake.set()  # the batch that was due may be smaller or gone now
        return gone

    @property
    def in_flight(self) -> int:
        """Entries waiting or being classified (queued, handed over, or running)."""
        return len(self.queue) + self._running

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop taking entries and wait until every accepted one was completed or expired.

        Returns False when `timeout_s` passed first.
        """
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._wait_idle(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Cancel the tasks and stop the thread; entries still queued are not answered."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._followups:
            await asyncio.gather(*self._followups, return_exceptions=True)
        if self._thread is not None:
            self._to_thread.put(None)  # after the batch it may be running
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------------ tasks

    def _is_idle(self) -> bool:
        return not self.queue and not self._running

    async def _wait_idle(self) -> None:
        while True:
            await self._idle.wait()
            if self._is_idle():
                if not self._followups:
                    return
                await asyncio.gather(*self._followups, return_exceptions=True)
                continue
            self._idle.clear()

    def _check_idle(self) -> None:
        if self._is_idle():
            self._idle.set()

    async def _forming(self) -> None:
        while True:
            # Idle: nothing handed over or running. Job entries only then, and with the queue's
            # `run_when_idle` any batch at once; `_finish` wakes this task when the thread frees.
            idle = self._running == 0
            due = self.queue.ready_at(idle=idle)
            if due is None:
                self._check_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = due - self._clock()
            if delay > 0 and not self._closing:
                # Wake early when a new entry arrives: it may fill the batch.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            # Wait for the slot first, so the batch is cut as late as possible.
            if self._slot is not None:
                await self._slot_free.wait()
                continue  # time has passed: look at the queue again
            batch = self.queue.next_batch(self._clock(), force=self._closing, idle=idle)
            if batch.expired:
                self._spawn(self._expire(batch.expired))
            if not batch.entries:
                continue
            self._running += len(batch.entries)
            try:
                prepared = self._prepare(batch)
            except Exception as error:
                self._finish(batch, None, error)
                continue
            self._slot = (batch, prepared)
            self._slot_free.clear()
            self._slot_filled.set()

    async def _inference(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slot_filled.wait()
            assert self._slot is not None
            (batch, prepared), self._slot = self._slot, None
            self._slot_filled.clear()
            self._slot_free.set()
            done: asyncio.Future[R] = loop.create_future()
            self._to_thread.put((prepared, done))
            try:
                results = await done
            except Exception as error:
                self._finish(batch, None, error)
            else:
                self._finish(batch, results, None)

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        """The inference thread: runs each batch it is given and answers on the loop."""
        while (work := self._to_thread.get()) is not None:
            prepared, done = work
            try:
                result = self._run(prepared)
            except BaseException as error:  # handed to the loop, as an executor would
                _call_on(loop, _set_exception, done, error)
            else:
                _call_on(loop, _set_result, done, result)

    def _finish(self, batch: Batch[T], results: R | None, error: BaseException | None) -> None:
        self._running -= len(batch.entries)
        self._wake.set()  # job entries may be waiting for an idle model
        self._spawn(self._complete(batch, results, error))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._followups.add(task)
        task.add_done_callback(self._followup_done)

    def _followup_done(self, task: asyncio.Task[None]) -> None:
        self._followups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # complete/expire must not raise; if one does, keep the batcher alive and visible.
            _log.error("batch_callback_failed", error=repr(task.exception()))
        self._check_idle()


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
        loop.call_soon_threadsafe(callback, *args)


def _set_result(future: asyncio.Future[R], result: R) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
