"""The ingress's side of the NATS contract: publish a request, turn its replies into an outcome.

`Exchange` holds no NATS client; it is given a `publish` function (the app wraps nats-py's) and the
`Inbox` fed by the app's one reply subscription. Every call ends in exactly one `Outcome`:
an answer, an error from the pipeline, 503 at once when the bus is down or NATS reports no
responders (two causes, told apart in the answer), or 504 at the deadline. A non-streamed
answer too large for one NATS message arrives in pieces (`ReplyHead.whole`) and is joined here.
What the client reads never names a subject, a URL or an exception; those go to the log with
the request id. Waiting requests are bounded (`ingress.max_in_flight`): beyond it the answer is
429 with `Retry-After`, never an unbounded queue.

Nothing waits for dead work: a request whose worker goes silent for `liveness.stall_s` (no
answer, no keepalive) or whose bus connection drops ends at once with an explicit error (503
when vLLM was not called, 502 when it may have been), after a cancel so that a worker that only
hung drops it; one lost while a classifier held it (vLLM not called, nothing sent to the client)
is sent once more first, to whichever classifier takes it.

Passthrough requests (an explicit model or adapter) are sent through the classifier like auto
ones: it owns every routing decision (endpoints by weight, reasoning, fallbacks) and skips the
model for them, so the ingress stays free of routing logic; the extra hop costs one NATS message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import msgspec

from schemas.config import Config
from schemas.errors import ErrorKind
from schemas.wire import (
    ClassifyTexts,
    ClassifyTextsResult,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyResponse,
    RouteChat,
    StreamChunk,
    encoder,
)
from services.common.bus import RequestMeta
from services.common.log import get_logger
from services.common.subjects import (
    HEADER_CONFIG_REVISION,
    HEADER_PING,
    HEADER_REQUEST_ID,
    Subjects,
)
from services.ingress import sse
from services.ingress.inbox import Inbox, Lost, Mailbox, NoResponders
from services.ingress.outcomes import (
    ErrorAnswer,
    JsonAnswer,
    Outcome,
    StreamAnswer,
    error_answer,
)

__all__ = ["Exchange", "Publish", "PublishError"]

_log = get_logger()

#: `publish(subject, payload, reply, headers)`; raises `PublishError` when the bus refuses.
Publish = Callable[[str, bytes, str, Mapping[str, str]], Awaitable[None]]


class PublishError(Exception):
    """The bus did not take the message; `kind` says how to answer (e.g. UNAVAILABLE, TOO_LARGE)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Exchange:
    """Request/reply over the bus for the ingress's routes."""

    def __init__(
        self,
        config: Config,
        inbox: Inbox,
        publish: Publish,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.inbox = inbox
        self._publish = publish
        self._clock = clock
        self.subjects = Subjects(config.nats.subject_prefix)

    # ------------------------------------------------------------------ helpers

    def overloaded(self) -> ErrorAnswer | None:
        """The 429 to answer when `ingress.max_in_flight` requests are waiting, else None."""
        limit = self.config.ingress.max_in_flight
        if len(self.inbox) < limit:
            return None
        return error_answer(
            ErrorKind.OVERLOADED,
            f"The router is overloaded ({limit} requests in flight); retry later.",
            retry_after=self.config.ingress.retry_after_s,
        )

    async def _send(
        self, mailbox: Mailbox, subject: str, payload: bytes, meta: RequestMeta
    ) -> ErrorAnswer | None:
        try:
            await self._publish(subject, payload, mailbox.reply, meta.to_headers())
        except PublishError as error:
            return error_answer(error.kind, str(error))
        return None

    def _from_error(self, reply: ReplyError) -> ErrorAnswer:
        retry_after = self.config.ingress.retry_after_s if reply.status == 429 else None
        return ErrorAnswer(reply.status, reply.error, reply.route, retry_after)

    def _budget(self, meta: RequestMeta) -> float:
        """Seconds left to wait for `meta`'s request (its deadline is set by the routes)."""
        left = meta.remaining_s()
        return self.config.ingress.request_timeout_s if left is None else left

    @staticmethod
    def _timeout(budget_s: float) -> ErrorAnswer:
        return error_answer(
            ErrorKind.TIMEOUT, f"No answer within the request's deadline ({budget_s:.3g} s)."
        )

    def _lost(self, lost: Lost, meta: RequestMeta) -> ErrorAnswer:
        """The error for a request given up as lost (see `inbox.Lost`)."""
        self.inbox.lost += 1
        _log.warning(
            "request_lost",
            request_id=meta.request_id,
            bus=lost.bus,
            held_by=lost.held_by,
            silent_s=lost.silent_s,
        )
        if lost.bus:
            return error_answer(
                ErrorKind.UNAVAILABLE,
                "The router lost its connection to its message bus (NATS) while the request "
                "was in the pipeline, so its answer cannot arrive. Retry shortly.",
                retry_after=self.config.ingress.retry_after_s,
            )
        if lost.held_by == "dispatcher":
            return error_answer(
                ErrorKind.BAD_GATEWAY,
                f"The dispatcher handling the request stopped answering (nothing for "
                f"{lost.silent_s:g} s); it may have died while vLLM was generating.",
            )
        return error_answer(
            ErrorKind.UNAVAILABLE,
            f"The request was lost in the pipeline (nothing for {lost.silent_s:g} s): the "
            "classifier or dispatcher holding it stopped. Retry.",
            retry_after=self.config.ingress.retry_after_s,
        )

    @staticmethod
    def _unexpected(message: object, meta: RequestMeta) -> ErrorAnswer:
        _log.warning("unexpected_reply", request_id=meta.request_id, kind=type(message).__name__)
        return error_answer(ErrorKind.BAD_GATEWAY, "The router's pipeline answered out of order.")

    def _no_classifier(self, meta: RequestMeta) -> ErrorAnswer:
        """503 for "nobody listens on the classify subject": no classifier runs, or, right
        after this process's bus connection came back, the workers have not resubscribed yet."""
        if self.inbox.bus_unsettled(2 * self.config.liveness.stall_s):
            _log.warning("no_classifier_after_reconnect", request_id=meta.request_id)
            return error_answer(
                ErrorKind.UNAVAILABLE,
                "The router's connection to its message bus was lost and is being restored; "
                "the workers are reconnecting. Retry shortly.",
                retry_after=self.config.ingress.retry_after_s,
            )
        _log.warning(
            "no_classifier",
            request_id=meta.request_id,
            subject=self.subjects.classify,
            hint="start one with `loraroute classifier`",
        )
        return error_answer(
            ErrorKind.UNAVAILABLE, "No classifier is available to take the request; retry shortly."
        )

    # ------------------------------------------------------------------ chat completions

    async def chat(
        self, body: bytes, stream: bool, meta: RequestMeta, route_key: str | None = None
    ) -> Outcome:
        """Send a validated chat body through the pipeline and wait for its answer.

        For `stream=True` the outcome is a `StreamAnswer` once the head arrived (the caller
        must `release()` it); errors before the head are ordinary `ErrorAnswer`s. `route_key`
        picks the A/B variant instead of the request id (`routing.ab_key_header`). A request
        lost while a classifier held it is sent once more (see the module docstring).
        """
        refused = self.overloaded()
        if refused is not None:
            return refused
        budget = self._budget(meta)
        deadline = self._clock() + budget
        payload = encoder.encode(RouteChat(body=msgspec.Raw(body), route_key=route_key))
        retried = False
        while True:
            mailbox = self.inbox.open()
            handed_over = False
            try:
                failed = await self._send(mailbox, self.subjects.classify, payload, meta)
                if failed is not None:
                    return failed
                try:
                    first = await mailbox.receive(deadline - self._clock())
                except TimeoutError:
                    return self._timeout(budget)
                if isinstance(first, Lost):
                    if first.retryable and not retried:
                        retried = True
                        _log.info("request_retried", request_id=meta.request_id)
                        continue
                    await self.cancel(meta)
                    return self._lost(first, meta)
                if isinstance(first, NoResponders):
                    return self._no_classifier(meta)
                if isinstance(first, ReplyResponse):
                    return JsonAnswer(first.status, bytes(first.body), first.route)
                if isinstance(first, ReplyError):
                    return self._from_error(first)
                if isinstance(first, ReplyHead) and first.whole:
                    return await self._join(mailbox, first, deadline, budget, meta)
                if isinstance(first, ReplyHead) and stream:
                    handed_over = True
                    return self._stream(mailbox, first, deadline, meta)
                return self._unexpected(first, meta)
            finally:
                if not handed_over:
                    mailbox.close()

    async def _join(
        self, mailbox: Mailbox, head: ReplyHead, deadline: float, budget: float, meta: RequestMeta
    ) -> Outcome:
        """The whole answer that follows `head` in pieces, joined (`ReplyHead.whole`)."""
        parts: list[bytes] = []
        while True:
            try:
                message = await mailbox.receive(deadline - self._clock())
            except TimeoutError:
                return self._timeout(budget)
            if isinstance(message, StreamChunk) and message.seq == len(parts):
                parts.append(message.data)
            elif isinstance(message, ReplyEnd) and message.error is None:
                if message.chunks != len(parts):
                    break
                return JsonAnswer(head.status, b"".join(parts), head.route)
            elif isinstance(message, ReplyEnd) and message.error is not None:
                error = message.error
                return ErrorAnswer(error.status, error, head.route)
            elif isinstance(message, ReplyError):
                return self._from_error(message)
            elif isinstance(message, Lost):
                message.held_by = "dispatcher"  # the head came from one
                await self.cancel(meta)
                return self._lost(message, meta)
            else:
                break
        _log.warning("answer_incomplete", request_id=meta.request_id, pieces=len(parts))
        return error_answer(
            ErrorKind.BAD_GATEWAY, "The answer arrived incomplete from the router's pipeline."
        )

    def _stream(
        self, mailbox: Mailbox, head: ReplyHead, deadline: float, meta: RequestMeta
    ) -> StreamAnswer:
        finished = lost = False

        async def receive(timeout_s: float) -> object:
            # Lost work after the head: an in-band error (a `ReplyError` to the relay).
            nonlocal lost
            message = await mailbox.receive(timeout_s)
            if not isinstance(message, Lost):
                return message
            lost = True
            message.held_by = "dispatcher"  # a stream's head came from one
            answer = self._lost(message, meta)
            return ReplyError(status=answer.status, error=answer.error)

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal finished
            async for data in sse.relay(receive, deadline, self._clock):
                yield data
            finished = True

        async def release() -> None:
            mailbox.close()
            if lost or not finished:
                await self.cancel(meta)

        return StreamAnswer(chunks=chunks(), release=release, route=head.route, status=head.status)

    async def cancel(self, meta: RequestMeta) -> None:
        """Tell the workers that the client of `meta`'s request went away (or that the request
        was given up as lost), so a classifier still holding it drops it, the dispatcher running
        it stops its call to vLLM (and vLLM stops generating), and one that has not received it
        yet drops it on arrival (the cancel carries the request's deadline, how long it counts).
        Best effort: a bus failure is only logged."""
        try:
            await self._publish(self.subjects.cancel(meta.request_id), b"", "", meta.to_headers())
        except PublishError as error:
            _log.warning("cancel_not_sent", request_id=meta.request_id, error=str(error))

    # ------------------------------------------------------------------ classification API

    async def classify(
        self, texts: list[str], return_probabilities: bool, meta: RequestMeta
    ) -> ClassifyTextsResult | ErrorAnswer:
        """Classify `texts` with the classifiers' model (no dispatch)."""
        refused = self.overloaded()
        if refused is not None:
            return refused
        with self.inbox.open() as mailbox:
            payload = encoder.encode(
                ClassifyTexts(texts=texts, return_probabilities=return_probabilities)
            )
            failed = await self._send(mailbox, self.subjects.classify, payload, meta)
            if failed is not None:
                return failed
            budget = self._budget(meta)
            try:
                reply = await mailbox.receive(budget)
            except TimeoutError:
                return self._timeout(budget)
            if isinstance(reply, NoResponders):
                return self._no_classifier(meta)
            if isinstance(reply, Lost):
                return self._lost(reply, meta)
            if isinstance(reply, ClassifyTextsResult):
                if len(reply.results) != len(texts):
                    return error_answer(
                        ErrorKind.BAD_GATEWAY,
                        f"The classifier answered {len(reply.results)} results for "
                        f"{len(texts)} texts.",
                    )
                return reply
            if isinstance(reply, ReplyError):
                return self._from_error(reply)
            return self._unexpected(reply, meta)

    # ------------------------------------------------------------------ readiness

    async def _ping(self, subject: str, timeout_s: float) -> tuple[bool, int | None]:
        """Whether a worker on `subject` answers, and the config revision it says it runs."""
        with self.inbox.open() as mailbox:
            headers = {HEADER_PING: "1", HEADER_REQUEST_ID: "ready"}
            try:
                await self._publish(subject, b"", mailbox.reply, headers)
            except PublishError:
                return False, None
            try:
                item = await mailbox.receive_raw(timeout_s)
            except TimeoutError:
                return False, None
            if item is None:  # the bus was lost
                return False, None
            answer, data = item
            if answer is not None and answer.get("Status") == "503" and not data:
                return False, None  # no responders
            raw = (answer or {}).get(HEADER_CONFIG_REVISION)
            return True, int(raw) if raw and raw.isdigit() else None

    async def readiness(self) -> dict[str, bool]:
        """Which worker kinds answer a ping now (see `probe`)."""
        return (await self.probe())[0]

    async def probe(self) -> tuple[dict[str, bool], dict[str, int | None]]:
        """Which worker kinds answer a ping now: `classifier` and `dispatcher:<base model>` for
        each configured base model. A ping is an empty message with the `Lr-Ping` header on the
        classify subject or the dispatchers' probe subject (`Subjects.ping_dispatch`), answered
        at once without work. All pings run at once; each waits `ready_timeout_s`, and one
        nobody listens to fails at once (no responders). Also returns the live config revision
        each answering kind says it runs."""
        timeout_s = self.config.ingress.ready_timeout_s
        names = ["classifier", *(f"dispatcher:{base}" for base in self.config.model_config)]
        subjects = [
            self.subjects.classify,
            *(self.subjects.ping_dispatch(base) for base in self.config.model_config),
        ]
        answers = await asyncio.gather(*(self._ping(s, timeout_s) for s in subjects))
        alive = {name: ok for name, (ok, _) in zip(names, answers, strict=True)}
        revisions = {name: revision for name, (_, revision) in zip(names, answers, strict=True)}
        return alive, revisions
