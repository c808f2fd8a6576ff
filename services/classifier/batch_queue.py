"""The classifier's request queue: bounded admission, and batches cut by count, tokens and wait.

One owner (the batcher's event loop) calls the verbs: `append` (refuses at once when the
entry's lane is full, so a request is never queued without limit), `next_batch`, and `withdraw`
(takes out the entries of a cancelled request).

Two lanes, each a FIFO with its own bound: `interactive` (requests a client waits for) and
`job` (lines of batch jobs). Interactive entries always go first: a batch holds entries of one
lane only; a job batch is cut only when no interactive entry waits and the caller says the model
is idle (`idle=True`), so job work fills idle capacity and an interactive request waits behind
at most one job batch, itself capped at `max_job_batch_size` entries to bound that wait while
interactive requests come in. When none has arrived for `job_quiet_s` before the oldest waiting
job entry, job batches grow to `max_batch_size`: a batch job alone gets the model's full
throughput, and only the first interactive request after such a quiet spell may wait behind one
full-size job batch. Job entries are not mixed into an interactive batch's spare slots: every entry added lengthens the
forward pass that each interactive answer in that batch waits for.

A batch closes when it holds `max_batch_size` entries (job batches: see above), when
one more entry would push its padded cost (longest x count) over `max_batch_tokens`, or when its
oldest entry has waited `max_wait_s`. With `run_when_idle`, a batch is due at once whenever the
caller says the model is idle: waiting for batch mates then only delays the answer, as nothing
runs meanwhile; `max_wait_s` applies while a batch runs. Entries past their deadline are dropped
first and handed back, so the caller can answer them.

Within a batch, entries of similar length are grouped to cut padding: the oldest entry always
goes first (nothing starves), then the shortest of a window of waiting entries fill the rest.
Time is passed in (`now`, monotonic seconds), so the queue is plain and testable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

__all__ = ["LANES", "Batch", "BatchQueue", "Entry", "Lane"]

T = TypeVar("T")

#: Which queue an entry waits in: a client's request, or a line of a batch job.
Lane = Literal["interactive", "job"]
LANES: tuple[Lane, ...] = ("interactive", "job")


@dataclass(slots=True)
class Entry(Generic[T]):
    """One queued request: its token count, arrival and deadline (monotonic s), payload, lane."""

    tokens: int
    arrival: float
    payload: T
    deadline: float | None = None
    lane: Lane = "interactive"

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(slots=True)
class Batch(Generic[T]):
    """What `next_batch` took out: the entries to run (sorted by tokens, all of `lane`) and
    those expired (of either lane)."""

    entries: list[Entry[T]] = field(default_factory=list)
    expired: list[Entry[T]] = field(default_factory=list)
    lane: Lane = "interactive"

    @property
    def padded_tokens(self) -> int:
        """Longest x count: what the model computes for this batch."""
        return max((e.tokens for e in self.entries), default=0) * len(self.entries)

    @property
    def real_tokens(self) -> int:
        return sum(e.tokens for e in self.entries)


class BatchQueue(Generic[T]):
    """Two FIFOs of `Entry`s (by `Entry.lane`) with admission control and batch cutting (see
    the module docstring). `max_queue` bounds the interactive lane, `max_job_queue` the job
    lane (0: the job lane refuses everything); a job batch holds at most `max_job_batch_size`
    entries (default and ceiling: `max_batch_size`), or `max_batch_size` when no interactive
    entry arrived within `job_quiet_s` before the oldest job entry (None: never).

    `window` is how many waiting entries a batch may choose from when grouping by length
    (default: twice `max_batch_size`); 1 keeps strict arrival order. `run_when_idle`: a batch
    is due at once when the caller says the model is idle (`idle=True`), instead of after
    `max_wait_s`.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        max_job_queue: int = 0,
        max_job_batch_size: int | None = None,
        job_quiet_s: float | None = None,
        window: int | None = None,
        run_when_idle: bool = False,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_batch_tokens < 1 or max_wait_s < 0:
            raise ValueError("batch queue limits must be positive")
        if max_job_queue < 0 or (max_job_batch_size is not None and max_job_batch_size < 1):
            raise ValueError("job lane limits must be positive")
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_job_queue = max_job_queue
        self.max_job_batch_size = min(max_batch_size, max_job_batch_size or max_batch_size)
        self.job_quiet_s = job_quiet_s
        self.run_when_idle = run_when_idle
        #: Arrival (monotonic s) of the latest interactive entry appended.
        self._last_interactive = float("-inf")
        self.window = max(1, window if window is not None else 2 * max_batch_size)
        self._lanes: dict[Lane, deque[Entry[T]]] = {lane: deque() for lane in LANES}

    def __len__(self) -> int:
        """Entries waiting in both lanes."""
        return sum(len(entries) for entries in self._lanes.values())

    def depth(self, lane: Lane) -> int:
        """Entries waiting in `lane`."""
        return len(self._lanes[lane])

    def room(self, lane: Lane) -> int:
        """How many more entries `lane` accepts."""
        bound = self.max_queue if lane == "interactive" else self.max_job_queue
        return max(0, bound - len(self._lanes[lane]))

    def append(self, entry: Entry[T]) -> bool:
        """Queue `entry` in its lane; False (and nothing queued) when that lane is full."""
        if not self.room(entry.lane):
            return False
        self._lanes[entry.lane].append(entry)
        if entry.lane == "interactive":
            self._last_interactive = max(self._last_interactive, entry.arrival)
        return True

    def drop_expired(self, now: float) -> list[Entry[T]]:
        """Remove and return every entry (of either lane) whose deadline has passed."""
        return self._take(lambda e: e.expired(now))

    def withdraw(self, match: Callable[[T], bool]) -> list[Entry[T]]:
        """Remove and return every entry whose payload `match`es (e.g. a cancelled request)."""
        return self._take(lambda e: match(e.payload))

    def _take(self, gone_if: Callable[[Entry[T]], bool]) -> list[Entry[T]]:
        gone: list[Entry[T]] = []
        for lane, entries in self._lanes.items():
            if not any(gone_if(e) for e in entries):
                continue
            kept: deque[Entry[T]] = deque()
            for entry in entries:
                (gone if gone_if(entry) else kept).append(entry)
            self._lanes[lane] = kept
        return gone

    def _lane(self, idle: bool) -> deque[Entry[T]] | None:
        """The lane the next batch comes from: interactive whenever it holds an entry, else
        the job lane when the model is `idle`; None when neither may give a batch."""
        if self._lanes["interactive"]:
            return self._lanes["interactive"]
        if idle and self._lanes["job"]:
            return self._lanes["job"]
        return None

    def _size(self, entries: deque[Entry[T]]) -> int:
        """The most entries a batch cut from `entries` (a lane) may hold."""
        if entries is self._lanes["interactive"]:
            return self.max_batch_size
        quiet = self.job_quiet_s is not None and (
            entries[0].arrival - self._last_interactive >= self.job_quiet_s
        )
        return self.max_batch_size if quiet else self.max_job_batch_size

    def _full(self, entries: deque[Entry[T]]) -> bool:
        """True when the head of `entries` already makes a closed batch (count or tokens)."""
        if len(entries) >= self._size(entries):
            return True
        longest = 0
        for n, entry in enumerate(entries, start=1):
            longest = max(longest, entry.tokens)
            if longest * n > self.max_batch_tokens:
                return True
        return False

    def ready_at(self, *, idle: bool = True) -> float | None:
        """When the next batch may be cut (monotonic s): its lane's oldest arrival plus
        `max_wait_s`, or -inf when a full batch already waits or, with `run_when_idle`, the
        model is `idle`; None when nothing may be cut (both lanes empty, or only job entries
        wait and the model is not `idle`)."""
        entries = self._lane(idle)
        if entries is None:
            return None
        if (idle and self.run_when_idle) or self._full(entries):
            return float("-inf")
        return entries[0].arrival + self.max_wait_s

    def next_batch(self, now: float, *, force: bool = False, idle: bool = True) -> Batch[T]:
        """Drop expired entries, then cut a batch if one is due at `now` (or `force`).

        The batch comes from the interactive lane whenever it holds an entry; from the job lane
        only when it is empty and the caller's model is `idle`. The returned
        batch's `entries` are sorted by tokens (shortest first) and may be empty (nothing due);
        `expired` lists the entries dropped for their deadline. An entry longer than the whole
        token budget still forms a batch on its own.
        """
        batch: Batch[T] = Batch(expired=self.drop_expired(now))
        due = self.ready_at(idle=idle)
        if due is None or (not force and now < due):
            return batch
        entries = self._lane(idle)
        assert entries is not None  # ready_at said a batch is due
        size = self._size(entries)
        oldest = entries.popleft()
        chosen = [oldest]
        longest = oldest.tokens
        window = [entries[i] for i in range(min(self.window - 1, len(entries)))]
        taken: set[int] = set()
        for entry in sorted(window, key=lambda e: e.tokens):
            if len(chosen) >= size:
                break
            grown = max(longest, entry.tokens)
            if grown * (len(chosen) + 1) > self.max_batch_tokens:
                break  # sorted by tokens: every later entry is at least as long
            chosen.append(entry)
            longest = grown
            taken.add(id(entry))
        if taken:
            self._lanes[oldest.lane] = deque(e for e in entries if id(e) not in taken)
        batch.entries = sorted(chosen, key=lambda e: e.tokens)
        batch.lane = oldest.lane
        return batch
