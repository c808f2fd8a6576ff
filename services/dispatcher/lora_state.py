"""What each vLLM endpoint holds (adapters served, adapters in LoRA slots, load), and the
endpoint order for an adapter request that follows from it.

`LoraState` is plain state, fed by `lora_sync.LoraSync` (each endpoint's `/v1/models` and
`/metrics`, read every few seconds) and by the dispatcher itself (`sending`: which adapter it
sends where, and how many requests it has in flight there). vLLM keeps up to `max_lora` adapters
in GPU slots and evicts the least recently used idle one when another adapter arrives (a swap,
which every request for that adapter waits for); `vllm:lora_requests_info` shows only the
adapters of running and waiting requests, so the slots are estimated: the adapters seen running
there and the ones sent there, most recent last, at most `max_lora` of them.

`order` ranks the route's endpoints that are up and weighted for one adapter, best first:

| rank | the endpoint ... |
|---|---|
| held | has the adapter in a slot (estimated), or waiting there |
| free slot | has fewer adapters in its slots than `max_lora` |
| idle slot | is full, but its least recently used adapter has nothing running: a swap, no wait |
| busy | is full of running adapters, or nothing is known of it |
| not listed | does not list the adapter in `/v1/models` (it would answer 404) |

An endpoint whose load exceeds the least loaded candidate's by more than `max_extra_load`
drops to `busy` (bounded preference: a hot adapter spills over rather than piling onto one
server). Ties keep the weighted random order of `EndpointPool.order`; standbys and endpoints
marked down stay last, as they were.
"""

from __future__ import annotations

import enum
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from schemas.config import Config, VllmEndpoint

__all__ = [
    "EndpointView",
    "LoraState",
    "Polled",
    "Rank",
    "adapters_of",
    "parse_metrics",
    "parse_models",
]

#: vLLM's default `--max-loras`, assumed until an endpoint's metric says otherwise.
DEFAULT_MAX_LORA = 1


class Rank(enum.IntEnum):
    """How good an endpoint is for one adapter request (higher is better)."""

    NOT_LISTED = 0
    BUSY = 1
    IDLE_SLOT = 2
    FREE_SLOT = 3
    HELD = 4


@dataclass(frozen=True, slots=True)
class Polled:
    """One endpoint read: the adapters `/v1/models` lists (None: not read), and from `/metrics`
    the running and waiting adapters, `max_lora` and vLLM's running plus waiting requests."""

    listed: frozenset[str] | None = None
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    max_lora: int | None = None
    queued: int | None = None


@dataclass(slots=True)
class EndpointView:
    """What this dispatcher believes about one endpoint."""

    listed: frozenset[str] | None = None
    """Adapters its `/v1/models` lists; None while unknown (never read, or the last read failed)."""
    slots: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Adapters believed to be in its LoRA slots, least recently used first."""
    running: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    max_lora: int = DEFAULT_MAX_LORA
    queued: int = 0
    """vLLM's running plus waiting requests at the last read (every dispatcher's)."""
    in_flight: Counter[str] = field(default_factory=Counter)
    """This dispatcher's requests in flight there, by model."""
    polled_at: float | None = None

    @property
    def load(self) -> int:
        return max(self.queued, sum(self.in_flight.values()))

    def touch(self, adapter: str) -> None:
        """`adapter` is (or is about to be) in a slot: most recently used; the oldest goes
        beyond `max_lora`."""
        self.slots[adapter] = None
        self.slots.move_to_end(adapter)
        while len(self.slots) > self.max_lora:
            self.slots.popitem(last=False)

    def rank(self, adapter: str) -> Rank:
        if self.listed is not None and adapter not in self.listed:
            return Rank.NOT_LISTED
        if adapter in self.slots or adapter in self.waiting or self.in_flight[adapter] > 0:
            return Rank.HELD
        if len(self.slots) < self.max_lora:
            return Rank.FREE_SLOT
        oldest = next(iter(self.slots))
        if oldest not in self.running and self.in_flight[oldest] == 0:
            return Rank.IDLE_SLOT
        return Rank.BUSY


class _Sending:
    """`LoraState.sending`'s block: one more request for `model` in flight while it runs (a
    plain class: a generator-based context manager costs more on every call to vLLM)."""

    __slots__ = ("_counts", "_model")

    def __init__(self, counts: Counter[str], model: str) -> None:
        self._counts = counts
        self._model = model

    def __enter__(self) -> None:
        self._counts[self._model] += 1

    def __exit__(self, *_: object) -> None:
        self._counts[self._model] -= 1
        if self._counts[self._model] <= 0:
            del self._counts[self._model]


class LoraState:
    """Every endpoint's view, and the adapter-aware order. One per dispatcher process."""

    def __init__(
        self, *, max_extra_load: int = 8, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.views: dict[str, EndpointView] = {}
        self.adapters: frozenset[str] = frozenset()
        """Every adapter the config declares (requests for anything else are left alone)."""
        self.enabled = True
        self.max_extra_load = max_extra_load
        self._clock = clock

    def configure(self, config: Config) -> None:
        """Follow `config`: its endpoints, its adapters and the affinity settings."""
        settings = config.dispatcher.lora_affinity
        self.enabled = settings.enabled
        self.max_extra_load = settings.max_extra_load
        self.adapters = frozenset(
            lora.name for model in config.model_config.values() for lora in model.loras
        )
        names = {e.name for e in config.vllm_endpoints}
        self.views = {name: self.views.get(name) or EndpointView() for name in names}

    def view(self, name: str) -> EndpointView:
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = EndpointView()
        return view

    def observe(self, name: str, polled: Polled) -> None:
        """Take in one read of endpoint `name`."""
        view = self.view(name)
        view.polled_at = self._clock()
        view.listed = polled.listed
        if polled.max_lora is not None:
            view.max_lora = max(1, polled.max_lora)
        if polled.queued is not None:
            view.queued = polled.queued
        view.running = frozenset(polled.running)
        view.waiting = frozenset(polled.waiting)
        if polled.listed is not None:
            for gone in [a for a in view.slots if a not in polled.listed]:
                del view.slots[gone]
        for adapter in polled.running:
            view.touch(adapter)

    def failed(self, name: str) -> None:
        """A read of `name` failed: what it lists and runs is unknown until the next one."""
        view = self.view(name)
        view.listed = None
        view.running = view.waiting = frozenset()
        view.queued = 0

    def listed(self, name: str, adapter: str, present: bool) -> None:
        """`adapter` was just loaded on (or unloaded from) endpoint `name`."""
        view = self.view(name)
        if view.listed is not None:
            view.listed = view.listed | {adapter} if present else view.listed - {adapter}
        if not present:
            view.slots.pop(adapter, None)

    def sending(self, endpoint: str, model: str) -> _Sending:
        """Count one request to `endpoint` for `model` while the `with` block runs; an adapter
        sent there takes a slot there."""
        view = self.view(endpoint)
        if model in self.adapters:
            view.touch(model)
        return _Sending(view.in_flight, model)

    def order(
        self,
        endpoints: Sequence[VllmEndpoint],
        model: str,
        is_down: Callable[[str], bool],
    ) -> list[VllmEndpoint]:
        """`endpoints` (in `EndpointPool.order`'s order) re-ranked for `model` (module docstring).

        Unchanged when affinity is off or `model` is not a configured adapter."""
        if not self.enabled or model not in self.adapters:
            return list(endpoints)
        head = [e for e in endpoints if e.weight > 0 and not is_down(e.name)]
        if len(head) < 2:
            return list(endpoints)
        chosen = {e.name for e in head}
        tail = [e for e in endpoints if e.name not in chosen]
        views = [self.view(e.name) for e in head]
        least = min(v.load for v in views)

        def rank(view: EndpointView) -> Rank:
            rank = view.rank(model)
            if rank > Rank.BUSY and view.load > least + self.max_extra_load:
                return Rank.BUSY
            return rank

        ranks = [rank(v) for v in views]
        ranked = sorted(range(len(head)), key=lambda i: ranks[i], reverse=True)  # stable
        return [head[i] for i in ranked] + tail


# --------------------------------------------------------------------------- reading vLLM


class _Card(msgspec.Struct):
    id: str
    parent: str | None = None


class _ModelList(msgspec.Struct):
    data: list[_Card]


_models_decoder = msgspec.json.Decoder(_ModelList)


def parse_models(body: bytes) -> frozenset[str]:
    """The adapters (cards with a `parent`) of a `/v1/models` body. Raises `ValueError`."""
    try:
        cards = _models_decoder.decode(body).data
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ValueError(f"not a /v1/models body: {error}") from error
    return frozenset(card.id for card in cards if card.parent is not None)


def _split(labels: str) -> tuple[str, ...]:
    return tuple(name for name in labels.split(",") if name)


#: The families `parse_metrics` reads; only their lines are parsed.
_READ_FAMILIES = (
    "vllm:lora_requests_info",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
)


def _read_lines(text: str) -> str:
    """The lines of `_READ_FAMILIES` (samples, `# HELP` and `# TYPE`) in `text`: vLLM's
    `/metrics` holds hundreds of lines, mostly histograms, and Prometheus' parser costs about
    10 µs a line on the dispatcher's event loop (1 ms every poll for the mock's 100)."""
    kept = []
    for line in text.splitlines():
        if line.startswith(_READ_FAMILIES):
            kept.append(line)
        elif line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) > 2 and parts[2] in _READ_FAMILIES:
                kept.append(line)
    return "\n".join(kept) + "\n"


def parse_metrics(text: str) -> Polled:
    """From vLLM's `/metrics` text: the newest `vllm:lora_requests_info` sample (its value is
    its update time; old label sets stay in the output) and the request gauges, summed over
    engines. Missing series stay None/empty. Raises `ValueError` for a line of those families
    that is not in the Prometheus format (other lines are not read)."""
    newest: tuple[float, dict[str, str]] | None = None
    queued: float | None = None
    for family in text_string_to_metric_families(_read_lines(text)):
        if family.name == "vllm:lora_requests_info":
            for sample in family.samples:
                if newest is None or sample.value > newest[0]:
                    newest = (sample.value, sample.labels)
        elif family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            queued = (queued or 0.0) + sum(sample.value for sample in family.samples)
    if newest is None:
        return Polled(queued=None if queued is None else int(queued))
    labels = newest[1]
    try:
        max_lora: int | None = int(labels.get("max_lora", ""))
    except ValueError:
        max_lora = None
    return Polled(
        running=_split(labels.get("running_lora_adapters", "")),
        waiting=_split(labels.get("waiting_lora_adapters", "")),
        max_lora=max_lora,
        queued=None if queued is None else int(queued),
    )


def adapters_of(config: Config) -> Iterable[tuple[str, str, str | None]]:
    """`(base model, adapter, path)` for every adapter the config declares."""
    for base, model in config.model_config.items():
        for lora in model.loras:
            yield base, lora.name, lora.path
