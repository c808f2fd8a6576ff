"""Response headers that describe the route, and what a client may say about its request id,
trace context and timeout.

Every request gets an id of the ingress's own (`RequestIds.pipeline`): it keys the request on
the bus (`Lr-Request-Id`, cancellations) and in every log line. A client's `x-request-id` is
never used for that, since two clients may send the same one (and one's departure would cancel
the other's request); it is only echoed back in `x-request-id`, for correlation, and logged
beside the ingress's id. `x-loraroute-request-id` always carries the ingress's id.

Header names are upstream's (`x-vsr-selected-*`, vLLM Semantic Router) so existing dashboards and
tests keep working. Client headers are read only for `x-request-id`, `traceparent` and the
optional timeout; any `x-vsr-*` or internal (`Lr-*`) header a client sends is ignored, because
the ingress builds every internal header itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.wire import Route
from services.common.bus import new_request_id

__all__ = [
    "PIPELINE_ID",
    "REQUEST_ID",
    "ROUTE_REASON",
    "SELECTED_CATEGORY",
    "SELECTED_CONFIDENCE",
    "SELECTED_MODEL",
    "SELECTED_REASONING",
    "TIMEOUT",
    "RequestIds",
    "request_ids",
    "route_headers",
    "timeout_s",
    "traceparent",
]

SELECTED_CATEGORY = "x-vsr-selected-category"
SELECTED_CONFIDENCE = "x-vsr-selected-confidence"
SELECTED_MODEL = "x-vsr-selected-model"
SELECTED_REASONING = "x-vsr-selected-reasoning"
REQUEST_ID = "x-request-id"
#: loraroute's own: the id the ingress gave the request (in its logs, and on the bus).
PIPELINE_ID = "x-loraroute-request-id"
#: loraroute's own: why this model (`classified`, `below_threshold`, `passthrough`, ...), so a
#: fallback to `default_model` is visible without reading logs.
ROUTE_REASON = "x-loraroute-route"
#: Optional client header: seconds this request may take, at most `ingress.request_timeout_s`.
TIMEOUT = "x-loraroute-timeout"

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True, slots=True)
class RequestIds:
    """A request's ids: `pipeline`, made by the ingress, and the client's own `client`."""

    pipeline: str
    client: str | None = None

    def response_headers(self) -> dict[str, str]:
        """`x-request-id` (the client's when it sent one, else the ingress's) and
        `x-loraroute-request-id` (the ingress's)."""
        return {REQUEST_ID: self.client or self.pipeline, PIPELINE_ID: self.pipeline}


def request_ids(client_value: str | None) -> RequestIds:
    """A fresh id for the request, and the client's `x-request-id` when it is a sane token
    (1-128 characters of `[A-Za-z0-9._:/+=-]`, so it is safe in logs and headers)."""
    sane = client_value if client_value and _REQUEST_ID.match(client_value) else None
    return RequestIds(new_request_id(), sane)


def traceparent(client_value: str | None) -> str | None:
    """The W3C `traceparent` if well formed, else None (never forward garbage downstream)."""
    if client_value and _TRACEPARENT.match(client_value.strip().lower()):
        return client_value.strip().lower()
    return None


def timeout_s(configured_s: float, client_value: str | None) -> float:
    """The seconds a request may take: `configured_s`, or less when the client asks for less.

    A client may shorten the timeout with `x-loraroute-timeout: <seconds>` (a positive number);
    it can never lengthen it beyond `configured_s`. Garbage is ignored.
    """
    if client_value:
        try:
            asked = float(client_value)
        except ValueError:
            asked = 0.0
        if 0.0 < asked < configured_s:
            return asked
    return configured_s


def route_headers(route: Route | None) -> dict[str, str]:
    """The `x-vsr-selected-*` headers for `route` (empty without one).

    Category only when there is one (below the threshold there is none: the reason header then
    says `below_threshold`); confidence as `%.4f` whenever the text was classified; reasoning
    `on`/`off` only when the chosen entry sets `use_reasoning`.
    """
    if route is None:
        return {}
    headers = {SELECTED_MODEL: route.model, ROUTE_REASON: route.reason}
    if route.category is not None:
        headers[SELECTED_CATEGORY] = route.category
    if route.confidence is not None:
        headers[SELECTED_CONFIDENCE] = f"{route.confidence:.4f}"
    if route.use_reasoning is not None:
        headers[SELECTED_REASONING] = "on" if route.use_reasoning else "off"
    return headers
