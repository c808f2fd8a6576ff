"""Fault specs and the plan that applies them."""

from __future__ import annotations

import pytest

from services.mockvllm.faults import Fault, FaultKind, FaultPlan, fault_error, parse_fault


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("500@3", Fault(FaultKind.ERROR_500, nth=3)),
        ("503@%2", Fault(FaultKind.ERROR_503, every=2)),
        ("drop@*,after=4", Fault(FaultKind.DROP, every=1, after=4)),
        ("stream-500@1", Fault(FaultKind.STREAM_500, nth=1)),
        ("hang@2", Fault(FaultKind.HANG, nth=2)),
        ("500@~POISON-1", Fault(FaultKind.ERROR_500, marker="POISON-1")),
    ],
)
def test_parse_round_trips(spec: str, fault: Fault) -> None:
    assert parse_fault(spec) == fault
    assert str(fault) == spec


@pytest.mark.parametrize(
    "spec", ["500", "boom@1", "500@0", "500@x", "drop@1,after=-1", "500@~", "500@~a b"]
)
def test_bad_specs_say_why(spec: str) -> None:
    with pytest.raises(ValueError, match="bad fault"):
        parse_fault(spec)


def test_plan_counts_and_first_match_wins() -> None:
    plan = FaultPlan([parse_fault("500@2"), parse_fault("503@%2")])
    kinds = [f.kind if (f := plan.next_request()) else None for _ in range(4)]
    assert kinds == [None, FaultKind.ERROR_500, None, FaultKind.ERROR_503]
    plan.replace([parse_fault("drop@1")])
    assert plan.count == 0
    first = plan.next_request()
    assert first is not None and first.kind is FaultKind.DROP


def test_a_marker_fault_hits_every_prompt_that_contains_it() -> None:
    plan = FaultPlan([parse_fault("500@~POISON")])
    hits = [plan.next_request(p) for p in ["fine", "a POISON pill", "fine", "POISON again"]]
    assert [f.kind if f else None for f in hits] == [
        None,
        FaultKind.ERROR_500,
        None,
        FaultKind.ERROR_500,
    ]


def test_fault_errors_are_vllms() -> None:
    assert fault_error(FaultKind.STREAM_503).error.type == "ServiceUnavailableError"
    assert fault_error(FaultKind.ERROR_500).status == 500
