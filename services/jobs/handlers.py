"""The jobs worker's entry points: one job line, one control message, one expiry sweep.

`on_line` runs a line (`run_line`) and settles it: the result is stored in the results stream
first and only then is the line acked, so a worker that dies in between has the line
redelivered and the stream drops the second result as a duplicate. A transient failure is
nak'ed with the configured backoff; on the last delivery, and for a payload that cannot be read,
the line goes to the dead-letter stream and a failed result is stored; so does a line whose
every delivery died with its worker (`on_exhausted`, from JetStream's advisory). After every stored result
the batch is checked, and a `FinalizeBatch` is published once it is ready. `on_control` starts
and finalizes batches (`start`, `finalize`); `sweep` finds running batches that are ready to
end but were not finalized.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from schemas.config import Jobs, Limits
from schemas.jobs import (
    CancelBatch,
    FinalizeBatch,
    JobLine,
    JobResult,
    StartBatch,
    control_decoder,
    line_decoder,
)
from schemas.wire import is_keepalive
from services.common import bus
from services.common.subjects import HEADER_REQUEST_ID, Subjects
from services.jobs import dead_letters, run_line
from services.jobs.consumers import backoff_delay
from services.jobs.finalize import finalize_batch, request_if_ready, store_result, sweep
from services.jobs.metrics import JobsMetrics
from services.jobs.start import start_batch
from services.jobs.store import BatchStore, now_s

__all__ = ["JobsHandlers"]

_log = structlog.get_logger("loraroute.jobs")
#: Pauses between tries of a line while the pipeline is down: doubling from the first to the
#: last, so a short blip costs half a second and a long outage a try every few seconds.
_FIRST_PAUSE_S = 0.5
_LAST_PAUSE_S = 5.0
_encoder = msgspec.json.Encoder()


class _MaxDeliveries(msgspec.Struct):
    """The fields used of JetStream's max-deliveries advisory."""

    stream: str
    stream_seq: int
    deliveries: int


_advisory_decoder = msgspec.json.Decoder(_MaxDeliveries)


class _HandedBack(Exception):
    """The worker stops while a line waits for the pipeline: the line goes back to the stream."""


class JobsHandlers:
    """Entry points bound to one connection, the job buckets and the config's `jobs` section."""

    def __init__(
        self,
        *,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        jobs: Jobs,
        batches: BatchStore,
        files: ObjectStore,
        metrics: JobsMetrics,
        limits: Limits | None = None,
        stall_s: float | None = None,
    ) -> None:
        self.nc = nc
        #: `liveness.stall_s`: silence after which a line in the pipeline is taken as lost.
        self.stall_s = stall_s
        self.js = js
        self.subjects = subjects
        self.jobs = jobs
        #: The caps a line's body is held to before it runs (`config.limits`).
        self.limits = limits or Limits()
        self.batches = batches
        self.files = files
        #: Batches the sweep has seen final: it never reads them again (`finalize.sweep`).
        self.finished: set[str] = set()
        self.metrics = metrics
        #: Set when the worker stops: a line waiting for the pipeline goes back to the stream.
        self.stopping = asyncio.Event()

    # ------------------------------------------------------------------ lines

    async def on_line(self, msg: Msg) -> None:
        """One delivery of a job line; settles it (ack, nak or term) and never raises."""
        started = time.perf_counter()
        deliveries = msg.metadata.num_delivered
        self.metrics.in_flight.inc()
        try:
            await self._line(msg, deliveries)
        except _HandedBack:  # the worker stops while the pipeline is down: no delivery used up
            self.metrics.lines.labels("retried").inc()
            await self._nak(msg, 0)
        except asyncio.CancelledError:  # the worker stops: let another one take the line
            await asyncio.shield(self._nak(msg, 0))
            raise
        except Exception as error:  # the outermost guard: NATS away, a bug
            _log.warning("line_failed", error=repr(error), deliveries=deliveries)
            self.metrics.lines.labels("retried").inc()
            await self._nak(msg, backoff_delay(self.jobs, deliveries))
        finally:
            self.metrics.in_flight.dec()
            self.metrics.line_seconds.observe(time.perf_counter() - started)

    async def _line(self, msg: Msg, deliveries: int) -> None:
        try:
            line = line_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            await self._unreadable(msg, f"unreadable job line: {error}", deliveries)
            return
        outcome = await self._run_while_the_pipeline_is_down(msg, line)
        if isinstance(outcome, run_line.Retry):
            if deliveries < self.jobs.max_deliver:
                self.metrics.lines.labels("retried").inc()
                _log.info(
                    "line_retry",
                    job_id=line.job_id,
                    custom_id=line.custom_id,
                    deliveries=deliveries,
                    reason=outcome.reason,
                )
                await msg.nak(delay=backoff_delay(self.jobs, deliveries))
                return
            ids = dead_letters.LineIds(line.job_id, line.custom_id)
            seq = msg.metadata.sequence.stream
            await self._dead_letter(msg.data, seq, ids, outcome.reason, deliveries)
            await self._store(JobResult(job_id=line.job_id, line=outcome.line, finished_at=now_s()))
            await msg.term()
        else:
            result = JobResult(
                job_id=line.job_id, line=outcome.line, route=outcome.route, finished_at=now_s()
            )
            stored = await self._store(result)
            label = "duplicate" if not stored else "completed" if outcome.line.ok else "failed"
            self.metrics.lines.labels(label).inc()
            await msg.ack()
        try:
            await self.check_finalize(line.job_id)
        except Exception as error:  # settled already; the sweep finalizes the batch instead
            _log.debug("finalize_check_failed", job_id=line.job_id, error=repr(error))

    async def _run_while_the_pipeline_is_down(self, msg: Msg, line: JobLine) -> run_line.Outcome:
        """Run `line`; while the pipeline cannot take it at all (no classifier, a full job lane,
        no dispatcher), hold the delivery (`in_progress`) and try again with a growing pause,
        up to `jobs.line_timeout_s`: an outage of the pipeline must not use up the line's
        deliveries and dead-letter a whole batch. A failure that may be the line's own is
        returned at once. Raises `_HandedBack` when the worker stops during a pause, so a
        stopping worker never waits for the pipeline."""
        give_up = time.monotonic() + self.jobs.line_timeout_s
        pause = _FIRST_PAUSE_S
        outcome = await self._run(line)
        while (
            isinstance(outcome, run_line.Retry)
            and outcome.pipeline_down
            and time.monotonic() + pause < give_up
        ):
            self.metrics.lines.labels("waiting").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
            if self.stopping.is_set():
                raise _HandedBack
            await msg.in_progress()
            pause = min(pause * 2, _LAST_PAUSE_S)
            outcome = await self._run(line)
        return outcome

    async def _run(self, line: JobLine) -> run_line.Outcome:
        found = await self.batches.read(line.job_id)
        status = None if found is None else found[0].status
        failed = run_line.precheck(line, status, now_s(), self.limits)
        if failed is not None:
            return run_line.Done(failed)
        return await run_line.run(line, self._request, timeout_s=self.jobs.line_timeout_s)

    async def _request(self, payload: bytes, headers: Mapping[str, str], timeout_s: float) -> bytes:
        """Send a line to the job lane and return the answer's payload, skipping keepalives.

        Silence longer than `stall_s` means the line was lost (its classifier or dispatcher
        died, or the bus dropped the answer): `LineUnreachable` at once, not at the deadline.
        It counts as the pipeline's state (no delivery used up) when the line was lost at a
        classifier or with the connection; when a dispatcher may have called vLLM with it, it
        uses a delivery, so a line that kills its dispatcher is dead-lettered, not run forever.
        """
        subject = self.subjects.classify_jobs
        inbox = self.nc.new_inbox()
        try:
            sub = await self.nc.subscribe(inbox)
            try:
                await self.nc.publish(subject, payload, reply=inbox, headers=dict(headers))
                return await self._answer(sub, subject, timeout_s)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        except nats.errors.Error as error:  # connection closed or reconnecting
            _log.info(
                "bus_unavailable", error=repr(error), request_id=headers.get(HEADER_REQUEST_ID)
            )
            raise run_line.LineUnreachable(
                "the message bus is unavailable", pipeline_down=True
            ) from error

    async def _answer(self, sub: Subscription, subject: str, timeout_s: float) -> bytes:
        loop = asyncio.get_running_loop()
        end = loop.time() + max(timeout_s, 0.001)
        held_by = b""
        while True:
            left = end - loop.time()
            if left <= 0:
                raise run_line.LineUnreachable(f"no answer within {timeout_s:.3g} s")
            stalls = self.stall_s is not None and self.stall_s < left
            try:
                msg = await sub.next_msg(timeout=self.stall_s if stalls else left)
            except nats.errors.TimeoutError as error:
                if not stalls:
                    raise run_line.LineUnreachable(f"no answer within {timeout_s:.3g} s") from error
                bus_lost = not self.nc.is_connected
                at_classifier = held_by == b"classifier"
                where = "the bus connection dropped" if bus_lost else "its worker stopped"
                self.metrics.lines.labels("lost").inc()
                raise run_line.LineUnreachable(
                    f"the line was lost in the pipeline ({where}; nothing for {self.stall_s:g} s)",
                    pipeline_down=bus_lost or at_classifier,
                ) from error
            if bus.is_no_responders(msg):
                _log.info("no_classifier", subject=subject)
                raise run_line.LineUnreachable("no classifier is available", pipeline_down=True)
            if not is_keepalive(msg.data):
                return msg.data
            if held_by != b"dispatcher":
                held_by = b"classifier" if b'"classifier"' in msg.data else b"dispatcher"

    async def _store(self, result: JobResult) -> bool:
        return await store_result(self.js, self.subjects, result)

    async def _unreadable(self, msg: Msg, error: str, deliveries: int) -> None:
        seq = msg.metadata.sequence.stream
        await self._bury(msg.data, seq, error, deliveries, "invalid_request")
        await msg.term()

    async def on_exhausted(self, msg: Msg) -> None:
        """JetStream's advisory that a line reached `max_deliver` deliveries without being
        settled (each time its worker died or hung): dead-letter it, store a failed result and
        remove it from the lines stream, as for a line that failed every delivery. Never raises."""
        try:
            advisory = _advisory_decoder.decode(msg.data)
            if advisory.stream != self.subjects.lines_stream:
                return
            stored = await self.js.get_msg(advisory.stream, advisory.stream_seq)
        except (msgspec.DecodeError, msgspec.ValidationError, NotFoundError):
            return  # not ours, or settled and gone after all
        except Exception as error:
            _log.warning("exhausted_unreadable", error=repr(error))
            return
        reason = f"delivered {advisory.deliveries} times without being settled (workers died)"
        try:
            await self._bury(
                stored.data or b"", advisory.stream_seq, reason, advisory.deliveries, "failed"
            )
            await self.js.delete_msg(advisory.stream, advisory.stream_seq)
        except Exception as failure:  # NATS away: the batch then ends expired
            _log.warning("exhausted_failed", error=repr(failure))

    async def _bury(self, payload: bytes, seq: int, error: str, deliveries: int, code: str) -> None:
        """Dead-letter a line that will not run; store a failed result when its ids can be read."""
        ids = dead_letters.read_ids(payload)
        await self._dead_letter(payload, seq, ids, error, deliveries)
        result = dead_letters.failed_result(ids, code, error)
        if result is not None:
            await self._store(result)
        if ids.job_id:
            await self.check_finalize(ids.job_id)

    async def _dead_letter(
        self, payload: bytes, seq: int, ids: dead_letters.LineIds, error: str, deliveries: int
    ) -> None:
        self.metrics.lines.labels("dead").inc()
        _log.warning(
            "line_dead",
            job_id=ids.job_id,
            custom_id=ids.custom_id,
            deliveries=deliveries,
            error=error,
        )
        await dead_letters.publish_dead_letter(
            self.js, self.subjects, payload, seq, ids, error, deliveries
        )

    @staticmethod
    async def _nak(msg: Msg, delay: float) -> None:
        try:
            await msg.nak(delay=delay or None)
        except Exception as error:  # NATS away: the ack wait redelivers it anyway
            _log.debug("nak_failed", error=repr(error))

    # ------------------------------------------------------------------ batches

    async def check_finalize(self, batch_id: str) -> None:
        """Publish `FinalizeBatch` for `batch_id` when it is ready (`finalize.request_if_ready`)."""
        await request_if_ready(self.js, self.subjects, self.batches, batch_id)

    async def on_control(self, msg: Msg) -> None:
        """One control message (start, cancel, finalize); settles it and never raises."""
        deliveries = msg.metadata.num_delivered
        try:
            message = control_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            _log.warning("control_unreadable", error=str(error))
            await msg.term()
            return
        try:
            await self._control(message)
            await msg.ack()
        except asyncio.CancelledError:
            await asyncio.shield(self._nak(msg, 0))
            raise
        except Exception as error:
            _log.warning(
                "control_failed",
                batch_id=message.batch_id,
                kind=type(message).__name__,
                deliveries=deliveries,
                error=repr(error),
            )
            await self._nak(msg, backoff_delay(self.jobs, deliveries))

    async def _control(self, message: StartBatch | CancelBatch | FinalizeBatch) -> None:
        args = (self.js, self.subjects, self.batches, self.files, self.jobs, message.batch_id)
        if isinstance(message, StartBatch):
            batch = await start_batch(*args)
            if batch is not None:
                self.metrics.batches.labels(batch.status).inc()
                _log.info(
                    "batch_started",
                    batch_id=batch.id,
                    status=batch.status,
                    lines=batch.request_counts.total,
                )
                await self.check_finalize(message.batch_id)
            return
        before = await self.batches.read(message.batch_id)
        batch = await finalize_batch(*args)
        if batch is not None and before is not None and batch.status != before[0].status:
            self.metrics.batches.labels(batch.status).inc()
            _log.info(
                "batch_finalized",
                batch_id=batch.id,
                status=batch.status,
                completed=batch.request_counts.completed,
                failed=batch.request_counts.failed,
            )

    async def sweep(self) -> None:
        """One pass of the sweep for running batches ready to end (`finalize.sweep`)."""
        await sweep(self.js, self.subjects, self.batches, self.finished)
