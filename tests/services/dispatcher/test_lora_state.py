"""`services.dispatcher.lora_state`: reading vLLM's listings and metric, and the adapter-aware order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from schemas.config import Config, VllmEndpoint, decode_config
from services.dispatcher.lora_state import LoraState, Polled, Rank, parse_metrics, parse_models

E0, E1, E2 = (VllmEndpoint(name=f"e{i}", address="127.0.0.1", port=8000 + i) for i in range(3))


def _config(repo_root: Path, **affinity: Any) -> Config:
    data = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    data["vllm_endpoints"] = [msgspec.to_builtins(e) for e in (E0, E1, E2)]
    data["model_config"]["llama2-7b"]["preferred_endpoints"] = []
    data["dispatcher"] = {"lora_affinity": affinity}
    return decode_config(data)


@pytest.fixture
def state(repo_root: Path) -> LoraState:
    state = LoraState()
    state.configure(_config(repo_root, max_extra_load=2))
    return state


def _up(name: str) -> bool:
    return False


def _order(state: LoraState, model: str, endpoints: list[VllmEndpoint] | None = None) -> list[str]:
    return [e.name for e in state.order(endpoints or [E0, E1, E2], model, _up)]


def _listing(*names: str) -> frozenset[str]:
    return frozenset(names)


ALL = _listing("technical-lora", "medical-lora", "legal-lora")


def test_an_endpoint_that_runs_the_adapter_comes_first(state: LoraState) -> None:
    for name in ("e0", "e1", "e2"):
        state.observe(name, Polled(listed=ALL, max_lora=1))
    state.observe("e2", Polled(listed=ALL, running=("medical-lora",), max_lora=1))
    assert _order(state, "medical-lora") == ["e2", "e0", "e1"]  # the rest keep their order
    assert state.view("e2").rank("medical-lora") is Rank.HELD


def test_a_free_slot_beats_an_idle_one_which_beats_a_busy_one(state: LoraState) -> None:
    state.observe("e0", Polled(listed=ALL, running=("technical-lora",), max_lora=1))
    state.observe("e1", Polled(listed=ALL, max_lora=2))
    state.observe("e1", Polled(listed=ALL, running=("technical-lora",), max_lora=2))
    state.observe("e2", Polled(listed=ALL, max_lora=1))
    with state.sending("e2", "legal-lora"):
        pass  # legal-lora took e2's only slot and finished: e2 can swap without waiting
    ranks = [state.view(n).rank("medical-lora") for n in ("e0", "e1", "e2")]
    assert ranks == [Rank.BUSY, Rank.FREE_SLOT, Rank.IDLE_SLOT]
    assert _order(state, "medical-lora") == ["e1", "e2", "e0"]


def test_an_endpoint_that_does_not_list_the_adapter_comes_last(state: LoraState) -> None:
    state.observe("e0", Polled(listed=_listing("technical-lora"), max_lora=1))
    state.observe("e1", Polled(listed=ALL, running=("technical-lora", "legal-lora"), max_lora=2))
    # e2 was never read: it may serve the adapter, and nothing was sent there (a free slot);
    # e1 lists it but both its slots are busy; e0 would answer 404.
    assert _order(state, "medical-lora") == ["e2", "e1", "e0"]


def test_what_this_dispatcher_sends_counts_at_once(state: LoraState) -> None:
    for name in ("e0", "e1", "e2"):
        state.observe(name, Polled(listed=ALL, max_lora=1))
    with state.sending("e1", "legal-lora"):
        assert _order(state, "legal-lora") == ["e1", "e0", "e2"]
        assert state.view("e1").in_flight["legal-lora"] == 1
    assert state.view("e1").in_flight == {}
    assert _order(state, "legal-lora")[0] == "e1"  # still in its slot after it finished
    with state.sending("e1", "medical-lora"):  # ... until another adapter took the only slot
        pass
    assert _order(state, "legal-lora") == ["e0", "e2", "e1"]


def test_a_much_busier_endpoint_loses_its_preference(state: LoraState) -> None:
    for name in ("e0", "e1", "e2"):
        state.observe(name, Polled(listed=ALL, max_lora=4, queued=0))
    state.observe("e0", Polled(listed=ALL, running=("medical-lora",), max_lora=4, queued=2))
    assert _order(state, "medical-lora")[0] == "e0"  # 2 more than the least: within the bound
    state.observe("e0", Polled(listed=ALL, running=("medical-lora",), max_lora=4, queued=3))
    assert _order(state, "medical-lora") == ["e1", "e2", "e0"]  # free slots, lightly loaded


def test_base_models_unknown_adapters_standbys_down_and_off_keep_the_weighted_order(
    repo_root: Path, state: LoraState
) -> None:
    state.observe("e2", Polled(listed=ALL, running=("medical-lora",), max_lora=1))
    assert _order(state, "llama2-7b") == ["e0", "e1", "e2"]
    assert _order(state, "no-such-lora") == ["e0", "e1", "e2"]
    standby = VllmEndpoint(name="e2", address="127.0.0.1", port=8002, weight=0)
    assert _order(state, "medical-lora", [E0, E1, standby]) == ["e0", "e1", "e2"]
    down = [e.name for e in state.order([E0, E1, E2], "medical-lora", lambda n: n == "e2")]
    assert down == ["e0", "e1", "e2"]
    state.configure(_config(repo_root, enabled=False))
    assert _order(state, "medical-lora") == ["e0", "e1", "e2"]


def test_a_failed_read_forgets_listing_and_load_but_not_what_was_sent(state: LoraState) -> None:
    state.observe("e0", Polled(listed=_listing("technical-lora"), max_lora=1, queued=50))
    state.failed("e0")
    view = state.view("e0")
    assert (view.listed, view.queued) == (None, 0)
    assert view.rank("medical-lora") is Rank.FREE_SLOT


def test_an_adapter_no_longer_listed_leaves_its_slot(state: LoraState) -> None:
    state.observe("e0", Polled(listed=ALL, running=("legal-lora",), max_lora=1))
    state.observe("e0", Polled(listed=_listing("medical-lora"), max_lora=1))
    assert list(state.view("e0").slots) == []


def test_parse_models_keeps_the_adapters() -> None:
    body = msgspec.json.encode(
        {
            "object": "list",
            "data": [
                {"id": "base", "object": "model", "parent": None, "root": "m"},
                {"id": "medical-lora", "object": "model", "parent": "base", "root": "/l/m"},
            ],
        }
    )
    assert parse_models(body) == {"medical-lora"}
    with pytest.raises(ValueError, match="not a /v1/models body"):
        parse_models(b"<html>")


def test_parse_metrics_takes_the_newest_lora_sample_and_sums_the_queues() -> None:
    text = """# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",waiting_lora_adapters=""} 1.7e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="b,c",waiting_lora_adapters="d"} 1.8e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.75e+09
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
"""
    assert parse_metrics(text) == Polled(running=("b", "c"), waiting=("d",), max_lora=2, queued=6)
    assert parse_metrics("# nothing here\n") == Polled()
    # The other families vLLM exports around them change nothing (only these lines are read).
    other = """# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 4.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 9.0
vllm:e2e_request_latency_seconds_count{model_name="m"} 9.0
vllm:e2e_request_latency_seconds_sum{model_name="m"} 2.5
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{reason="capacity"} 40.0
"""
    running = "# TYPE vllm:num_requests_running"
    mixed = other + text.replace(running, other + running)
    assert "vllm:num_requests_running gauge" in mixed
    assert parse_metrics(mixed) == parse_metrics(text)


def test_parse_metrics_refuses_a_malformed_line_of_a_family_it_reads() -> None:
    with pytest.raises(ValueError):
        parse_metrics('vllm:num_requests_running{engine="0" 3.0\n')
