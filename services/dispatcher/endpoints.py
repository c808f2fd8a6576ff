"""Which vLLM endpoint to try, in which order: weighted choice, and endpoints marked down.

`EndpointPool.order(names)` returns a route's endpoints in the order to try them: a weighted
random order of those up (weight w is picked first with probability proportional to w),
then standbys (weight 0), then those marked down (a last resort, so a request is never refused
only because every endpoint failed recently). `mark_down` follows a failed connect and lasts
`down_for_s`; a success marks the endpoint up again at once.

`update` swaps in a new config revision's endpoints (down marks of endpoints that stay are
kept). A route decided under an older revision may name endpoints this one no longer has:
when it names none that is known, its base model's endpoints in the current revision are used.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

from schemas.config import Config, VllmEndpoint

__all__ = ["EndpointPool", "model_endpoints"]


def model_endpoints(config: Config) -> dict[str, list[str]]:
    """Each base model's `preferred_endpoints` (empty: every endpoint)."""
    return {base: list(model.preferred_endpoints) for base, model in config.model_config.items()}


class EndpointPool:
    """The configured endpoints and their short-lived down marks. One per dispatcher process."""

    def __init__(
        self,
        endpoints: Sequence[VllmEndpoint],
        *,
        models: Mapping[str, Sequence[str]] | None = None,
        down_for_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self.models = {base: list(names) for base, names in (models or {}).items()}
        self.down_for_s = down_for_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._down_until: dict[str, float] = {}

    def is_down(self, name: str) -> bool:
        until = self._down_until.get(name)
        if until is None:
            return False
        if self._clock() >= until:
            del self._down_until[name]
            return False
        return True

    def mark_down(self, name: str) -> None:
        """Skip `name` for `down_for_s` (after a connect failure)."""
        self._down_until[name] = self._clock() + self.down_for_s

    def mark_up(self, name: str) -> None:
        self._down_until.pop(name, None)

    def update(
        self, endpoints: Sequence[VllmEndpoint], models: Mapping[str, Sequence[str]]
    ) -> None:
        """Use another config revision's endpoints and base models from now on."""
        self.endpoints = {e.name: e for e in endpoints}
        self.models = {base: list(names) for base, names in models.items()}
        for name in [n for n in self._down_until if n not in self.endpoints]:
            del self._down_until[name]

    def order(self, names: Sequence[str], base_model: str | None = None) -> list[VllmEndpoint]:
        """The endpoints of `names` to try, best first (see the module docstring).

        Unknown names are skipped; an empty `names` means every configured endpoint. When
        `names` holds no known one, `base_model`'s endpoints are used instead.
        """
        endpoints = self.endpoints
        chosen = [endpoints[n] for n in (names or endpoints) if n in endpoints]
        if not chosen and base_model in self.models:
            preferred = self.models[base_model] or endpoints
            chosen = [endpoints[n] for n in preferred if n in endpoints]
        up = [e for e in chosen if not self.is_down(e.name)]
        down = [e for e in chosen if self.is_down(e.name)]
        weighted = [e for e in up if e.weight > 0]
        standby = [e for e in up if e.weight <= 0]
        # Weighted sampling without replacement (Efraimidis-Spirakis): key = u ** (1 / w).
        keyed = sorted(weighted, key=lambda e: self._rng.random() ** (1.0 / e.weight), reverse=True)
        return keyed + standby + down
