"""NATS wire messages of the interactive path (DESIGN section 5).

Every message is a msgspec Struct with a version field `v`, encoded as JSON. Messages evolve by
msgspec's rules: new fields get defaults and go last, a field's type never changes, unknown fields
are ignored, so an older reader accepts a newer message. The kinds that share one subject form a
tagged union (`kind`) decoded by one typed decoder.

The client's request body travels as `msgspec.Raw`: stages that need not read it pass the bytes on
untouched, and no field a client sent is dropped because loraroute does not know it.

Request id, absolute deadline and trace context travel in NATS headers (`services.common.subjects`
names them), not in these bodies.

One message is not all JSON: a `StreamChunk` travels as one JSON line of its other fields
(`ChunkHeader`), a newline, then its SSE bytes untouched, so a streamed answer is not
base64-encoded into JSON and decoded again per chunk (`loadtest/bench_stream_chunks.py`). The
header line rides in the payload rather than in NATS headers, which cost nats-py more per
message than the JSON line does. Replies are written with `encode_reply` and read with
`decode_reply`, which also reads a chunk in the previous all-JSON form, so an ingress reads
dispatchers of this and of the previous version alike; upgrade the ingress first.

    ingress ──ClassifyMessage──► classifier ──DispatchRequest──► dispatcher ──ReplyMessage──► ingress

Every chat request takes that one path. A passthrough request (an explicit base model or
adapter) goes to the classifier too, which forwards it at once with a `passthrough` route and
runs no model on it; the ingress never publishes a `DispatchRequest` itself.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.errors import ErrorResponse

__all__ = [
    "WIRE_VERSION",
    "ChunkHeader",
    "ClassifyMessage",
    "ClassifyTexts",
    "ClassifyTextsResult",
    "DispatchRequest",
    "ReplyAlive",
    "ReplyEnd",
    "ReplyError",
    "ReplyHead",
    "ReplyMessage",
    "ReplyResponse",
    "Route",
    "RouteChat",
    "StreamChunk",
    "TextClassification",
    "classify_decoder",
    "decode_reply",
    "dispatch_decoder",
    "encode_reply",
    "encoder",
    "is_keepalive",
    "reply_decoder",
]

WIRE_VERSION = 1


class Route(msgspec.Struct, kw_only=True):
    """What the classifier decided for one chat request; the dispatcher applies it to the body.

    `model` is the name vLLM must see (the adapter when one was chosen, else the base model);
    `base_model` selects the dispatch subject and the endpoints. `category` is None below the
    threshold or for a passthrough request.
    """

    model: str
    base_model: str
    category: str | None = None
    confidence: float | None = None
    adapter: str | None = None
    reason: Literal["classified", "below_threshold", "passthrough", "empty", "fallback"] = (
        "classified"
    )
    system_prompt: str | None = None
    system_prompt_mode: Literal["insert", "replace"] = "insert"
    use_reasoning: bool | None = None
    reasoning_effort: str | None = None
    reasoning_type: (
        Literal["chat_template_kwargs", "reasoning_effort", "top_level_reasoning_effort"] | None
    ) = None
    reasoning_parameter: str | None = None
    endpoints: list[str] = msgspec.field(default_factory=list)
    """Endpoint names to try, best first (weights already applied by the chooser)."""
    truncated: bool = False
    """The classified text was cut (characters or tokens); counted, never silent."""
    fallbacks: list[Route] = msgspec.field(default_factory=list)
    """The category's other candidates, next-best first: the dispatcher uses the next one when
    every endpoint of this route failed before any byte reached the client."""


# --------------------------------------------------------------------------- subject: classify


class RouteChat(msgspec.Struct, tag="chat", kw_only=True):
    """A chat completion to classify and forward. The reply subject is the ingress inbox."""

    v: int = WIRE_VERSION
    body: msgspec.Raw
    """The client's JSON body, already validated by the ingress, passed on byte for byte."""
    route_key: str | None = None
    """The value of the request's `routing.ab_key_header` header, which then picks its A/B
    variant instead of the request id (None: no such header configured or sent)."""


class ClassifyTexts(msgspec.Struct, tag="texts", kw_only=True):
    """The classification API: classify texts and reply with the results (no dispatch)."""

    v: int = WIRE_VERSION
    texts: list[str]
    return_probabilities: bool = False


ClassifyMessage = RouteChat | ClassifyTexts


class TextClassification(msgspec.Struct, kw_only=True):
    """One text's result. `category` is None below the threshold (the route then uses the
    default model); `label` is the classifier's own top label."""

    category: str | None
    confidence: float
    label: str
    probabilities: dict[str, float] | None = None
    truncated: bool = False
    label_probabilities: dict[str, float] | None = None
    """With `return_probabilities`: the model's whole distribution, every label of the model
    (`probabilities` folds it into the config's categories)."""


class ClassifyTextsResult(msgspec.Struct, tag="texts_result", kw_only=True):
    v: int = WIRE_VERSION
    results: list[TextClassification]
    processing_time_ms: float = 0.0


# --------------------------------------------------------------------------- subject: dispatch


class DispatchRequest(msgspec.Struct, kw_only=True):
    """A routed chat completion on `<prefix>.dispatch.<base-model>`."""

    v: int = WIRE_VERSION
    route: Route
    body: msgspec.Raw


# --------------------------------------------------------------------------- reply inbox


class ReplyResponse(msgspec.Struct, tag="response", kw_only=True):
    """A whole non-streaming answer: vLLM's status and JSON body, and the route taken."""

    v: int = WIRE_VERSION
    status: int
    body: msgspec.Raw
    route: Route | None = None


class ReplyHead(msgspec.Struct, tag="head", kw_only=True):
    """First message of a stream: the status and route, so the ingress can send headers.

    With `whole`, what follows is not an SSE stream but one JSON answer too large for a single
    NATS message (the connection's `max_payload`): its bytes in numbered `StreamChunk`s, then
    a `ReplyEnd`. The ingress joins them and answers as for a `ReplyResponse`, whether or not
    the client asked for a stream; a reader that knows no `whole` must not be sent one."""

    v: int = WIRE_VERSION
    status: int = 200
    route: Route | None = None
    whole: bool = False


class StreamChunk(msgspec.Struct, tag="chunk", kw_only=True):
    """Bytes of the SSE stream exactly as vLLM produced them. `seq` starts at 0 after the head;
    the ingress checks it so a lost message is an error, never a silently corrupted stream.

    On the wire: a `ChunkHeader` line, `\\n`, then `data` as it is (`encode_reply`); the JSON
    form (`data` in base64) is what the previous version sent, still read by `decode_reply`."""

    v: int = WIRE_VERSION
    seq: int
    data: bytes


class ChunkHeader(msgspec.Struct, tag="chunk", kw_only=True):
    """The first line of a chunk's payload: its fields other than its bytes. It evolves like
    every message here (new fields with defaults, unknown fields ignored)."""

    v: int = WIRE_VERSION
    seq: int


class ReplyEnd(msgspec.Struct, tag="end", kw_only=True):
    """End of a stream. `error` is set when the stream failed after its first byte; the ingress
    then sends it as an in-band SSE error event before `data: [DONE]`."""

    v: int = WIRE_VERSION
    chunks: int
    error: ErrorResponse | None = None


class ReplyError(msgspec.Struct, tag="error", kw_only=True):
    """The request failed before any byte was sent: an OpenAI-style error and its HTTP status."""

    v: int = WIRE_VERSION
    status: int
    error: ErrorResponse
    route: Route | None = None


class ReplyAlive(msgspec.Struct, tag="alive", kw_only=True):
    """A keepalive, never an answer: the worker that holds the request is still at it. Sent only
    while a request has been held for a heartbeat (`liveness.heartbeat_s`) without any other
    message to its requester (a long classifier queue, a slow vLLM, a pause between chunks), so
    a requester can tell a slow request from lost work: silence longer than `liveness.stall_s`
    means the holder died or the bus lost the reply.

    `held_by`: `classifier` while the request waits in a classifier (vLLM has not been called:
    a requester may send it again); `dispatcher` once it is with, or on its way to, a dispatcher
    (vLLM may have been called). A classifier that sent keepalives for a request sends one with
    `dispatcher` before forwarding it, so a requester always knows when that line was crossed.
    Requesters of the previous version cannot read it: upgrade ingresses and jobs workers before
    classifiers and dispatchers."""

    v: int = WIRE_VERSION
    held_by: Literal["classifier", "dispatcher"] = "dispatcher"


ReplyMessage = (
    ReplyResponse
    | ReplyHead
    | StreamChunk
    | ReplyEnd
    | ReplyError
    | ClassifyTextsResult
    | ReplyAlive
)

encoder = msgspec.json.Encoder()
classify_decoder = msgspec.json.Decoder(ClassifyMessage)
dispatch_decoder = msgspec.json.Decoder(DispatchRequest)
reply_decoder = msgspec.json.Decoder(ReplyMessage)
"""Reads the JSON replies; use `decode_reply` for a received message, which may be a raw chunk."""
_chunk_header_decoder = msgspec.json.Decoder(ChunkHeader)
#: How a chunk's payload starts: `encoder` writes a tagged Struct's tag first. A JSON reply holds
#: no raw newline (msgspec escapes them), so the first one ends the header line.
_CHUNK_START = b'{"type":"chunk",'


def encode_reply(message: ReplyMessage) -> bytes:
    """The NATS payload to publish `message` with."""
    if isinstance(message, StreamChunk):
        header = encoder.encode(ChunkHeader(v=message.v, seq=message.seq))
        return header + b"\n" + message.data
    return encoder.encode(message)


def decode_reply(data: bytes) -> ReplyMessage:
    """The reply a received NATS payload carries (`encode_reply`'s inverse).

    Raises `msgspec.DecodeError` or `msgspec.ValidationError` for a payload that is no reply.
    """
    if data.startswith(_CHUNK_START):
        end = data.find(b"\n")
        if end != -1:  # else the previous version's all-JSON chunk
            header = _chunk_header_decoder.decode(data[:end])
            return StreamChunk(v=header.v, seq=header.seq, data=data[end + 1 :])
    message: ReplyMessage = reply_decoder.decode(data)
    return message


#: How a keepalive's payload starts (`encoder` writes a tagged Struct's tag first).
_ALIVE_START = b'{"type":"alive"'


def is_keepalive(data: bytes) -> bool:
    """True when a received payload is a `ReplyAlive` (to skip it without decoding)."""
    return data.startswith(_ALIVE_START)
