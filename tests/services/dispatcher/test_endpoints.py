"""`services.dispatcher.endpoints`: weighted order, standbys, and down marks that expire."""

from __future__ import annotations

import random
from collections import Counter

from schemas.config import VllmEndpoint
from services.dispatcher.endpoints import EndpointPool


def _endpoints(*weights: float) -> list[VllmEndpoint]:
    return [
        VllmEndpoint(name=f"e{i}", address="127.0.0.1", port=8000 + i, weight=w)
        for i, w in enumerate(weights)
    ]


def _names(pool: EndpointPool, names: list[str]) -> list[str]:
    return [e.name for e in pool.order(names)]


def test_weights_set_the_share_of_first_picks() -> None:
    pool = EndpointPool(_endpoints(1, 3), rng=random.Random(7))
    firsts = Counter(_names(pool, ["e0", "e1"])[0] for _ in range(4000))
    assert 0.70 < firsts["e1"] / 4000 < 0.80  # 3 / (1 + 3) = 0.75


def test_every_endpoint_is_listed_once() -> None:
    pool = EndpointPool(_endpoints(1, 2, 3))
    assert sorted(_names(pool, ["e0", "e1", "e2"])) == ["e0", "e1", "e2"]


def test_only_the_routes_endpoints_and_all_when_none_given() -> None:
    pool = EndpointPool(_endpoints(1, 1, 1))
    assert sorted(_names(pool, ["e2", "e0"])) == ["e0", "e2"]
    assert sorted(_names(pool, [])) == ["e0", "e1", "e2"]
    assert _names(pool, ["nope"]) == []


def test_standby_after_weighted() -> None:
    pool = EndpointPool(_endpoints(0, 1))
    assert _names(pool, ["e0", "e1"]) == ["e1", "e0"]


def test_down_endpoints_go_last_until_the_mark_expires() -> None:
    now = [100.0]
    pool = EndpointPool(_endpoints(5, 1), down_for_s=5.0, clock=lambda: now[0])
    pool.mark_down("e0")
    assert pool.is_down("e0")
    assert _names(pool, ["e0", "e1"]) == ["e1", "e0"]
    now[0] += 5.0
    assert not pool.is_down("e0")


def test_mark_up_clears_at_once() -> None:
    pool = EndpointPool(_endpoints(1, 1))
    pool.mark_down("e1")
    pool.mark_up("e1")
    assert not pool.is_down("e1")
