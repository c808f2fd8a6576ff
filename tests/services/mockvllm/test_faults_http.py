"""Each injected fault, as a client sees it over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.services.mockvllm.conftest import StartMock

HI = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.integration

INTERNAL = {
    "error": {
        "message": "Internal server error",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}
UNAVAILABLE = {
    "error": {
        "message": "Request failed; please retry",
        "type": "ServiceUnavailableError",
        "param": None,
        "code": 503,
    }
}


def _chat(url: str, **body: object) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"messages": HI, **body}, timeout=30)


def test_the_nth_request_fails_with_500(start_mock: StartMock) -> None:
    url = start_mock("--fault", "500@2")
    responses = [_chat(url) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert responses[1].json() == INTERNAL


def test_every_nth_request_fails_with_503_on_completions_too(start_mock: StartMock) -> None:
    url = start_mock("--fault", "503@%2")
    statuses = []
    for i in range(4):
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"}) if i % 2 else _chat(url)
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.json() == UNAVAILABLE
            assert "retry-after" not in r.headers
    assert statuses == [200, 503, 200, 503]


def test_a_streaming_request_gets_the_json_error_before_any_frame(start_mock: StartMock) -> None:
    url = start_mock("--fault", "500@*")
    response = _chat(url, stream=True)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"


def test_refused_requests_do_not_advance_the_count(start_mock: StartMock) -> None:
    url = start_mock("--fault", "500@1")
    assert _chat(url, model="nope").status_code == 404
    assert _chat(url, max_tokens="x").status_code == 400
    assert _chat(url).status_code == 500


@pytest.mark.parametrize(
    ("kind", "code", "expected"), [("stream-500", 500, INTERNAL), ("stream-503", 503, UNAVAILABLE)]
)
def test_in_band_error_after_k_chunks(
    start_mock: StartMock, kind: str, code: int, expected: dict[str, object]
) -> None:
    url = start_mock("--fault", f"{kind}@1,after=2", "--output-tokens", "6:6")
    response = _chat(url, stream=True)
    assert response.status_code == 200  # the status went out before the failure
    frames = [e[6:] for e in response.text.strip().split("\n\n")]
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2]) == expected
    role, *content = (json.loads(f) for f in frames[:-2])
    assert role["choices"][0]["delta"]["role"] == "assistant"
    assert len(content) == 2 and all(c["choices"][0]["finish_reason"] is None for c in content)
    # Not streaming: the same fault is an ordinary JSON error.
    url = start_mock("--fault", f"{kind}@1")
    response = _chat(url)
    assert (response.status_code, response.json()) == (code, expected)


def test_connection_dropped_mid_stream(start_mock: StartMock) -> None:
    url = start_mock("--fault", "drop@1,after=3", "--output-tokens", "8:8")
    received: list[str] = []
    body = {"messages": HI, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        received.extend(line for line in response.iter_lines() if line)
    assert len(received) == 1 + 3  # role chunk and three content chunks, no [DONE]
    assert "data: [DONE]" not in received
    assert _chat(url).status_code == 200  # the server itself is fine


def test_connection_dropped_mid_body(start_mock: StartMock) -> None:
    url = start_mock("--fault", "drop@1")
    with pytest.raises(httpx.RemoteProtocolError):
        _chat(url)
    assert _chat(url).status_code == 200


def test_hang_until_the_client_gives_up(start_mock: StartMock) -> None:
    url = start_mock("--fault", "hang@1")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json={"messages": HI}, timeout=0.5)
    assert _chat(url).status_code == 200


def test_faults_can_be_replaced_at_run_time(start_mock: StartMock) -> None:
    url = start_mock()
    assert _chat(url).status_code == 200
    response = httpx.post(url + "/mock/faults", json={"faults": ["503@2", "drop@3"]})
    assert response.json() == {"count": 0, "faults": ["503@2", "drop@3"]}
    assert [_chat(url).status_code for _ in range(2)] == [200, 503]
    assert httpx.get(url + "/mock/faults").json()["count"] == 2
    bad = httpx.post(url + "/mock/faults", json={"faults": ["nope"]})
    assert bad.status_code == 400 and "bad fault" in bad.json()["detail"]
    httpx.post(url + "/mock/faults", json={"faults": []})
    assert _chat(url).status_code == 200


def test_a_client_that_gives_up_frees_its_slot(start_mock: StartMock) -> None:
    url = start_mock("--fault", "hang@1", "--max-num-seqs", "1")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json={"messages": HI}, timeout=0.5)
    # With the hung request still holding the only slot, this one would wait for an hour.
    assert _chat(url).status_code == 200
    metrics = httpx.get(url + "/metrics").text
    assert 'finished_reason="abort",model_name="base-model"} 1.0' in metrics
