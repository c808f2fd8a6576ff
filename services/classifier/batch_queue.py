"""The classifier's request queue: bounded admission, and batches cut by count, tokens and wait.

One owner (the batcher's event loop) calls the verbs: `append` (refuses at once when the
queue is full, so a request is never queued without limit), `next_batch`, and `withdraw`
(takes out the entries of a cancelled request). A batch closes
when it holds `max_batch_size` entries, when one more entry would push its padded cost
(longest x count) over `max_batch_tokens`, or when its oldest entry has waited `max_wait_s`.
Entries past their deadline are dropped first and handed back, so the caller can answer them.

Within a batch, entries of similar length are grouped to cut padding: the oldest entry always
goes first (nothing starves), then the shortest of a window of waiting entries fill the rest.
Time is passed in (`now`, monotonic seconds), so the queue is plain and testable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batch", "BatchQueue", "Entry"]

T = TypeVar("T")


@dataclass(slots=True)
class Entry(Generic[T]):
    """One queued request: its token count, arrival and deadline (monotonic s), and payload."""

    tokens: int
    arrival: float
    payload: T
    deadline: float | None = None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(slots=True)
class Batch(Generic[T]):
    """What `next_batch` took out: the entries to run (sorted by tokens) and those expired."""

    entries: list[Entry[T]] = field(default_factory=list)
    expired: list[Entry[T]] = field(default_factory=list)

    @property
    def padded_tokens(self) -> int:
        """Longest x count: what the model computes for this batch."""
        return max((e.tokens for e in self.entries), default=0) * len(self.entries)

    @property
    def real_tokens(self) -> int:
        return sum(e.tokens for e in self.entries)


class BatchQueue(Generic[T]):
    """FIFO of `Entry`s with admission control and batch cutting (see the module docstring).

    `window` is how many waiting entries a batch may choose from when grouping by length
    (default: twice `max_batch_size`); 1 keeps strict arrival order.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        window: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_batch_tokens < 1 or max_wait_s < 0:
            raise ValueError("batch queue limits must be positive")
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.window = max(1, window if window is not None else 2 * max_batch_size)
        self._entries: deque[Entry[T]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: Entry[T]) -> bool:
        """Queue `entry`; False (and nothing queued) when `max_queue` entries already wait."""
        if len(self._entries) >= self.max_queue:
            return False
        self._entries.append(entry)
        return True

    def drop_expired(self, now: float) -> list[Entry[T]]:
        """Remove and return every entry whose deadline has passed."""
        return self._take(lambda e: e.expired(now))

    def withdraw(self, match: Callable[[T], bool]) -> list[Entry[T]]:
        """Remove and return every entry whose payload `match`es (e.g. a cancelled request)."""
        return self._take(lambda e: match(e.payload))

    def _take(self, gone_if: Callable[[Entry[T]], bool]) -> list[Entry[T]]:
        if not any(gone_if(e) for e in self._entries):
            return []
        kept: deque[Entry[T]] = deque()
        gone: list[Entry[T]] = []
        for entry in self._entries:
            (gone if gone_if(entry) else kept).append(entry)
        self._entries = kept
        return gone

    def _full(self) -> bool:
        """True when the head of the queue already makes a closed batch (count or tokens)."""
        if len(self._entries) >= self.max_batch_size:
            return True
        longest = 0
        for n, entry in enumerate(self._entries, start=1):
            longest = max(longest, entry.tokens)
            if longest * n > self.max_batch_tokens:
                return True
        return False

    def ready_at(self) -> float | None:
        """When a batch may be cut (monotonic s): the oldest arrival plus `max_wait_s`, or
        -inf when a full batch is already waiting; None when the queue is empty."""
        if not self._entries:
            return None
        if self._full():
            return float("-inf")
        return self._entries[0].arrival + self.max_wait_s

    def next_batch(self, now: float, *, force: bool = False) -> Batch[T]:
        """Drop expired entries, then cut a batch if one is due at `now` (or `force`).

        The returned batch's `entries` are sorted by tokens (shortest first) and may be empty
        (nothing due); `expired` lists the entries dropped for their deadline. An entry longer
        than the whole token budget still forms a batch on its own.
        """
        batch: Batch[T] = Batch(expired=self.drop_expired(now))
        due = self.ready_at()
        if due is None or (not force and now < due):
            return batch
        oldest = self._entries.popleft()
        chosen = [oldest]
        longest = oldest.tokens
        window = [self._entries[i] for i in range(min(self.window - 1, len(self._entries)))]
        taken: set[int] = set()
        for entry in sorted(window, key=lambda e: e.tokens):
            if len(chosen) >= self.max_batch_size:
                break
            grown = max(longest, entry.tokens)
            if grown * (len(chosen) + 1) > self.max_batch_tokens:
                break  # sorted by tokens: every later entry is at least as long
            chosen.append(entry)
            longest = grown
            taken.add(id(entry))
        if taken:
            self._entries = deque(e for e in self._entries if id(e) not in taken)
        batch.entries = sorted(chosen, key=lambda e: e.tokens)
        return batch
