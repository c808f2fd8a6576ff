from __future__ import annotations

from schemas.wire import Route
from services.ingress import headers


def test_route_headers_classified() -> None:
    route = Route(
        model="medical-lora",
        base_model="llama2-7b",
        category="medical",
        confidence=0.912345,
        use_reasoning=True,
    )
    assert headers.route_headers(route) == {
        "x-vsr-selected-model": "medical-lora",
        "x-vsr-selected-category": "medical",
        "x-vsr-selected-confidence": "0.9123",
        "x-vsr-selected-reasoning": "on",
        "x-loraroute-route": "classified",
    }


def test_route_headers_below_threshold_shows_the_fallback() -> None:
    route = Route(
        model="llama2-7b", base_model="llama2-7b", confidence=0.41, reason="below_threshold"
    )
    got = headers.route_headers(route)
    assert "x-vsr-selected-category" not in got
    assert "x-vsr-selected-reasoning" not in got
    assert got["x-vsr-selected-confidence"] == "0.4100"
    assert got["x-loraroute-route"] == "below_threshold"


def test_reasoning_off_is_explicit() -> None:
    route = Route(model="m", base_model="m", use_reasoning=False)
    assert headers.route_headers(route)["x-vsr-selected-reasoning"] == "off"
    assert headers.route_headers(None) == {}


def test_the_pipeline_id_is_always_the_ingress_own_and_sane_client_ids_are_echoed() -> None:
    ids = headers.request_ids("abc-123_x.y")
    assert ids.client == "abc-123_x.y"
    assert ids.pipeline != ids.client and len(ids.pipeline) == 32
    assert ids.response_headers() == {
        "x-request-id": "abc-123_x.y",
        "x-loraroute-request-id": ids.pipeline,
    }
    # The same client id twice: two different pipeline ids (cancels key on these).
    assert headers.request_ids("abc-123_x.y").pipeline != ids.pipeline
    for bad in [None, "", "has space", "x" * 129, "new\nline", "é"]:
        ids = headers.request_ids(bad)
        assert ids.client is None and len(ids.pipeline) == 32
        assert ids.response_headers()["x-request-id"] == ids.pipeline


def test_traceparent_is_validated() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers.traceparent(good) == good
    assert headers.traceparent("garbage") is None
    assert headers.traceparent(None) is None


def test_client_timeout_may_only_shorten_the_deadline() -> None:
    assert headers.timeout_s(300.0, None) == 300.0
    assert headers.timeout_s(300.0, "2.5") == 2.5
    assert headers.timeout_s(300.0, "900") == 300.0
    assert headers.timeout_s(300.0, "-1") == 300.0
    assert headers.timeout_s(300.0, "soon") == 300.0
