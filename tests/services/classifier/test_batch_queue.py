"""`services.classifier.batch_queue`: admission, batch cutting, length grouping, deadlines."""

from __future__ import annotations

import pytest

from services.classifier.batch_queue import BatchQueue, Entry


def _queue(**kw: int | float) -> BatchQueue[str]:
    args: dict[str, int | float] = {
        "max_batch_size": 4,
        "max_batch_tokens": 1000,
        "max_wait_s": 0.01,
        "max_queue": 100,
    }
    args.update(kw)
    return BatchQueue(**args)  # type: ignore[arg-type]


def _entry(
    name: str, tokens: int = 10, arrival: float = 0.0, deadline: float | None = None
) -> Entry[str]:
    return Entry(tokens=tokens, arrival=arrival, payload=name, deadline=deadline)


def _names(entries: list[Entry[str]]) -> list[str]:
    return [e.payload for e in entries]


def test_empty_queue_has_nothing_due() -> None:
    q = _queue()
    assert q.ready_at() is None
    assert q.next_batch(100.0, force=True).entries == []


def test_admission_is_bounded() -> None:
    q = _queue(max_queue=2)
    assert q.append(_entry("a")) and q.append(_entry("b"))
    assert not q.append(_entry("c"))
    assert len(q) == 2


def test_waits_for_max_wait_then_cuts() -> None:
    q = _queue(max_wait_s=0.01)
    q.append(_entry("a", arrival=1.0))
    assert q.ready_at() == pytest.approx(1.01)
    assert q.next_batch(1.005).entries == []
    assert _names(q.next_batch(1.01).entries) == ["a"]
    assert len(q) == 0


def test_run_when_idle_cuts_at_once_only_while_the_model_is_idle() -> None:
    q = _queue(max_wait_s=10.0, run_when_idle=True)
    q.append(_entry("a", arrival=1.0))
    q.append(_entry("b", arrival=1.0))
    # A batch runs: the next one waits for batch mates as without the option.
    assert q.ready_at(idle=False) == pytest.approx(11.0)
    assert q.next_batch(1.0, idle=False).entries == []
    # Nothing runs: whatever waits is due now.
    assert q.ready_at(idle=True) == float("-inf")
    assert _names(q.next_batch(1.0, idle=True).entries) == ["a", "b"]
    assert q.ready_at(idle=True) is None


def test_force_cuts_at_once() -> None:
    q = _queue()
    q.append(_entry("a", arrival=1.0))
    assert _names(q.next_batch(1.0, force=True).entries) == ["a"]


def test_closes_at_max_batch_size_without_waiting() -> None:
    q = _queue(max_batch_size=3, max_wait_s=10.0)
    for name in "abcde":
        q.append(_entry(name, arrival=1.0))
    assert q.ready_at() == float("-inf")
    assert _names(q.next_batch(1.0).entries) == ["a", "b", "c"]
    assert q.next_batch(1.0).entries == []  # two left, not full, not waited long enough
    assert len(q) == 2


def test_closes_at_token_budget_longest_times_count() -> None:
    q = _queue(max_batch_size=10, max_batch_tokens=100, max_wait_s=10.0)
    q.append(_entry("a", tokens=30))
    q.append(_entry("b", tokens=30))
    q.append(_entry("c", tokens=30))
    assert q.ready_at() == pytest.approx(10.0)  # 30 x 3 = 90 fits
    q.append(_entry("d", tokens=30))  # 30 x 4 = 120 does not
    assert q.ready_at() == float("-inf")
    batch = q.next_batch(0.0)
    assert _names(batch.entries) == ["a", "b", "c"]
    assert batch.padded_tokens == 90 and batch.real_tokens == 90


def test_a_text_longer_than_the_budget_runs_alone() -> None:
    q = _queue(max_batch_tokens=50)
    q.append(_entry("huge", tokens=500))
    q.append(_entry("small", tokens=5))
    assert _names(q.next_batch(0.0).entries) == ["huge"]
    assert _names(q.next_batch(1.0).entries) == ["small"]


def test_groups_by_length_but_the_oldest_always_goes() -> None:
    q = _queue(max_batch_size=3, max_batch_tokens=10_000, max_wait_s=0.0)
    q.append(_entry("old-long", tokens=200))
    q.append(_entry("mid", tokens=50))
    q.append(_entry("short1", tokens=5))
    q.append(_entry("short2", tokens=6))
    batch = q.next_batch(0.0)
    assert _names(batch.entries) == ["short1", "short2", "old-long"]  # sorted by tokens
    assert _names(q.next_batch(0.0).entries) == ["mid"]


def test_length_grouping_respects_the_budget() -> None:
    q = _queue(max_batch_size=8, max_batch_tokens=100, max_wait_s=0.0)
    q.append(_entry("a", tokens=10))
    q.append(_entry("b", tokens=60))
    q.append(_entry("c", tokens=20))
    q.append(_entry("d", tokens=20))
    # a, c, d: longest 20 x 3 = 60; adding b: 60 x 4 = 240 > 100.
    assert _names(q.next_batch(0.0).entries) == ["a", "c", "d"]
    assert _names(q.next_batch(0.0).entries) == ["b"]


def test_window_of_one_keeps_arrival_order() -> None:
    q = _queue(max_batch_size=2, window=1, max_wait_s=0.0)
    for name, tokens in [("a", 50), ("b", 40), ("c", 5)]:
        q.append(_entry(name, tokens=tokens))
    assert _names(q.next_batch(0.0).entries) == ["a"]
    assert _names(q.next_batch(0.0).entries) == ["b"]


def test_expired_entries_are_dropped_first_and_returned() -> None:
    q = _queue(max_wait_s=0.0)
    q.append(_entry("late", arrival=0.0, deadline=1.0))
    q.append(_entry("fine", arrival=0.0, deadline=5.0))
    q.append(_entry("no-deadline", arrival=0.0))
    batch = q.next_batch(1.0)
    assert _names(batch.expired) == ["late"]
    assert _names(batch.entries) == ["fine", "no-deadline"]


def test_expired_entries_are_returned_even_when_no_batch_is_due() -> None:
    q = _queue(max_wait_s=10.0)
    q.append(_entry("late", arrival=0.0, deadline=1.0))
    q.append(_entry("waiting", arrival=0.5))
    batch = q.next_batch(2.0)
    assert _names(batch.expired) == ["late"] and batch.entries == []
    assert len(q) == 1


def test_withdraw_takes_out_matching_entries_only() -> None:
    q = _queue(max_wait_s=10.0)
    for name in ("a", "gone", "b", "gone"):
        q.append(_entry(name))
    assert _names(q.withdraw(lambda payload: payload == "gone")) == ["gone", "gone"]
    assert q.withdraw(lambda payload: payload == "gone") == []
    assert _names(q.next_batch(0.0, force=True).entries) == ["a", "b"]


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        _queue(max_batch_size=0)


# ---------------------------------------------------------------------- lanes


def _job(
    name: str, tokens: int = 10, arrival: float = 0.0, deadline: float | None = None
) -> Entry[str]:
    return Entry(tokens=tokens, arrival=arrival, payload=name, deadline=deadline, lane="job")


def test_each_lane_has_its_own_bound() -> None:
    q = _queue(max_queue=2, max_job_queue=3)
    assert all(q.append(_job(f"j{i}")) for i in range(3))
    assert not q.append(_job("j3"))
    # A full job lane takes no interactive slot, and the other way round.
    assert q.append(_entry("a")) and q.append(_entry("b"))
    assert not q.append(_entry("c"))
    assert (q.depth("interactive"), q.depth("job"), len(q)) == (2, 3, 5)
    assert (q.room("interactive"), q.room("job")) == (0, 0)


def test_job_lane_is_closed_by_default() -> None:
    q = _queue()
    assert q.room("job") == 0 and not q.append(_job("j"))
    with pytest.raises(ValueError):
        _queue(max_job_queue=-1)


def test_interactive_entries_go_first_even_when_jobs_are_older() -> None:
    q = _queue(max_batch_size=4, max_job_queue=10, max_wait_s=0.0)
    for i in range(6):
        q.append(_job(f"j{i}", arrival=0.0))
    q.append(_entry("a", arrival=5.0))
    q.append(_entry("b", arrival=5.0))
    first = q.next_batch(5.0)
    # A batch holds one lane only: no job entry fills the two free slots.
    assert first.lane == "interactive" and _names(first.entries) == ["a", "b"]
    second = q.next_batch(5.0)
    assert second.lane == "job" and _names(second.entries) == ["j0", "j1", "j2", "j3"]
    third = q.next_batch(5.0)
    assert _names(third.entries) == ["j4", "j5"]


def test_job_entries_wait_while_the_model_is_busy() -> None:
    q = _queue(max_job_queue=10, max_wait_s=0.0)
    q.append(_job("j", arrival=0.0))
    assert q.ready_at(idle=False) is None
    assert q.next_batch(1.0, idle=False).entries == []
    assert q.next_batch(1.0, force=True, idle=False).entries == []
    assert q.ready_at(idle=True) == 0.0
    assert _names(q.next_batch(1.0, idle=True).entries) == ["j"]


def test_a_waiting_interactive_entry_holds_back_due_jobs() -> None:
    # The interactive entry is not due yet; the full job batch still does not go before it.
    q = _queue(max_batch_size=2, max_job_queue=10, max_wait_s=0.01)
    q.append(_job("j0", arrival=0.0))
    q.append(_job("j1", arrival=0.0))
    q.append(_entry("a", arrival=1.0))
    assert q.ready_at() == pytest.approx(1.01)
    assert q.next_batch(1.005).entries == []
    batch = q.next_batch(1.01)
    assert batch.lane == "interactive" and _names(batch.entries) == ["a"]


def test_job_batches_obey_size_tokens_and_wait() -> None:
    q = _queue(max_batch_size=3, max_batch_tokens=100, max_job_queue=10, max_wait_s=0.01)
    q.append(_job("j0", tokens=10, arrival=1.0))
    assert q.ready_at() == pytest.approx(1.01)
    assert q.next_batch(1.0).entries == []
    q.append(_job("j1", tokens=40, arrival=1.0))
    q.append(_job("j2", tokens=40, arrival=1.0))
    # 40 x 3 = 120 > 100: the padded budget closes the batch at two.
    assert q.ready_at() == float("-inf")
    assert _names(q.next_batch(1.0).entries) == ["j0", "j1"]


def test_deadlines_drop_entries_of_both_lanes() -> None:
    q = _queue(max_job_queue=10, max_wait_s=0.0)
    q.append(_job("j-late", deadline=1.0))
    q.append(_job("j-ok", deadline=9.0))
    q.append(_entry("a-late", deadline=1.0))
    # Expired entries come back even when the job lane may not run and nothing else is cut.
    batch = q.next_batch(2.0, idle=False)
    assert sorted(_names(batch.expired)) == ["a-late", "j-late"] and batch.entries == []
    assert [e.lane for e in sorted(batch.expired, key=lambda e: e.payload)] == [
        "interactive",
        "job",
    ]
    assert _names(q.next_batch(2.0).entries) == ["j-ok"]


def test_withdraw_takes_entries_out_of_either_lane() -> None:
    q = _queue(max_job_queue=10)
    q.append(_job("x"))
    q.append(_entry("x"))
    q.append(_job("y"))
    gone = q.withdraw(lambda name: name == "x")
    assert sorted(e.lane for e in gone) == ["interactive", "job"]
    assert (q.depth("interactive"), q.depth("job")) == (0, 1)


def test_job_batches_are_capped_at_max_job_batch_size() -> None:
    q = _queue(max_batch_size=4, max_job_queue=10, max_job_batch_size=2, max_wait_s=10.0)
    for i in range(3):
        q.append(_job(f"j{i}", arrival=0.0))
        q.append(_entry(f"a{i}", arrival=0.0))
    # Interactive batches keep the full size; a job batch is full (due at once) at two.
    assert _names(q.next_batch(0.0, force=True).entries) == ["a0", "a1", "a2"]
    assert q.ready_at() == float("-inf")
    assert _names(q.next_batch(0.0).entries) == ["j0", "j1"]
    assert _queue(max_batch_size=4, max_job_batch_size=64).max_job_batch_size == 4
    with pytest.raises(ValueError):
        _queue(max_job_batch_size=0)


def test_job_batches_grow_after_a_quiet_spell_of_interactive_traffic() -> None:
    q = _queue(
        max_batch_size=8, max_job_queue=20, max_job_batch_size=2, job_quiet_s=1.0, max_wait_s=0.0
    )
    q.append(_entry("a", arrival=10.0))
    assert _names(q.next_batch(10.0).entries) == ["a"]
    # Job entries 0.5 s after an interactive one: small batches.
    for i in range(6):
        q.append(_job(f"j{i}", arrival=10.5))
    assert len(q.next_batch(10.5).entries) == 2
    assert len(q.next_batch(10.5).entries) == 2
    # Job entries that came 1 s or more after the last interactive one: full batches.
    for i in range(6, 16):
        q.append(_job(f"j{i}", arrival=11.0))
    q.next_batch(11.0)  # the two left from 10.5 (the oldest decides)
    assert len(q.next_batch(11.0).entries) == 8
    # A new interactive request shrinks the job batches again.
    q.append(_entry("b", arrival=11.2))
    assert _names(q.next_batch(11.2).entries) == ["b"]
    q.append(_job("late", arrival=11.3))
    assert len(q.next_batch(11.3).entries) == 2


def test_without_a_quiet_spell_job_batches_stay_small() -> None:
    q = _queue(max_batch_size=8, max_job_queue=20, max_job_batch_size=2, max_wait_s=0.0)
    for i in range(6):
        q.append(_job(f"j{i}", arrival=100.0))
    assert len(q.next_batch(100.0).entries) == 2
