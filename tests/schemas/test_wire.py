"""The NATS wire contract (`schemas.wire`): every message kind round-trips through the decoder of
its subject, and messages evolve by the rules (DESIGN section 5, STYLE rule 6).

The examples are built from the Structs' own type information, every field set (to a value
other than its default where the type allows), so a message kind or a field added later is
covered without editing this file.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from schemas import wire
from schemas.errors import ErrorKind, error_response
from schemas.wire import StreamChunk, decode_reply, encode_reply, encoder

#: Every Struct of the contract, by name.
STRUCTS: dict[str, type[msgspec.Struct]] = {
    name: obj
    for name in wire.__all__
    if isinstance(obj := getattr(wire, name), type) and issubclass(obj, msgspec.Struct)
}
#: The decoders of the subjects; a message kind is read by the one whose type names it.
DECODERS: list[msgspec.json.Decoder[Any]] = [
    wire.classify_decoder,
    wire.dispatch_decoder,
    wire.reply_decoder,
]

#: The fields of the first version of the contract (`WIRE_VERSION` 1), in their order. A field
#: added since then must have a default and come after these, so that a message from an older
#: writer, which lacks it, still decodes.
V1_FIELDS: dict[str, tuple[str, ...]] = {
    "Route": (
        "model",
        "base_model",
        "category",
        "confidence",
        "adapter",
        "reason",
        "system_prompt",
        "system_prompt_mode",
        "use_reasoning",
        "reasoning_effort",
        "reasoning_type",
        "reasoning_parameter",
        "endpoints",
        "truncated",
    ),
    "RouteChat": ("v", "body"),
    "ClassifyTexts": ("v", "texts", "return_probabilities"),
    "TextClassification": ("category", "confidence", "label", "probabilities", "truncated"),
    "ClassifyTextsResult": ("v", "results", "processing_time_ms"),
    "DispatchRequest": ("v", "route", "body"),
    "ReplyResponse": ("v", "status", "body", "route"),
    "ReplyHead": ("v", "status", "route"),
    "StreamChunk": ("v", "seq", "data"),
    "ReplyEnd": ("v", "chunks", "error"),
    "ReplyError": ("v", "status", "error", "route"),
}

#: A client body as compact JSON, so that decoding and encoding it again gives the same bytes.
_BODY = '{"model":"MoM","messages":[{"role":"user","content":"hi é"}],"x_client":[1,{}]}'.encode()


def _sample(t: mi.Type, depth: int) -> Any:
    """A value of type `t`; nested Structs get every field, recursion stops at `depth` 2."""
    if isinstance(t, mi.StructType):
        return _example(t.cls, depth + 1)
    if isinstance(t, mi.UnionType):
        return _sample(next(u for u in t.types if not isinstance(u, mi.NoneType)), depth)
    if isinstance(t, mi.ListType):
        return [] if depth >= 2 else [_sample(t.item_type, depth)]
    if isinstance(t, mi.DictType):
        return {_sample(t.key_type, depth): _sample(t.value_type, depth)}
    if isinstance(t, mi.LiteralType):
        return t.values[-1]
    simple: dict[type[mi.Type], Any] = {
        mi.StrType: "sample é",
        mi.IntType: 7,
        mi.FloatType: 0.25,
        mi.BoolType: True,
        mi.BytesType: b'data: {"x": 1}\n\n\x00\xff',
        mi.RawType: msgspec.Raw(_BODY),
    }
    for kind, value in simple.items():
        if isinstance(t, kind):
            return value
    raise AssertionError(f"no sample for {t!r}: teach this test the new type")


def _example(cls: type[msgspec.Struct], depth: int = 0) -> Any:
    """An instance of `cls` with every field set (`v` keeps its default, the current version)."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    values = {f.name: _sample(f.type, depth) for f in info.fields if f.name != "v"}
    return cls(**values)


def _decode(data: bytes, cls: type[msgspec.Struct]) -> Any:
    """Decode `data` the way a receiver of `cls` does: through its subject's decoder when it is
    a message kind of its own, else as the type itself (a part of other messages)."""
    for decoder in DECODERS:
        if cls is decoder.type or cls in typing.get_args(decoder.type):
            return decoder.decode(data)
    return msgspec.json.decode(data, type=cls)


def _builtins(message: msgspec.Struct) -> Any:
    """`message` as the JSON objects, lists and scalars a receiver parses."""
    return msgspec.json.decode(wire.encoder.encode(message))


def _with_unknown_fields(data: Any, t: mi.Type) -> Any:
    """The builtins `data` of type `t` with a field no reader knows added to every object."""
    if isinstance(t, mi.StructType):
        fields = {f.encode_name: f.type for f in t.fields}
        out = {k: _with_unknown_fields(v, fields[k]) if k in fields else v for k, v in data.items()}
        out["x_from_a_newer_writer"] = {"nested": [1, "two", None], "flag": True}
        return out
    if isinstance(t, mi.UnionType) and data is not None:
        structs = [u for u in t.types if isinstance(u, mi.StructType)]
        return _with_unknown_fields(data, structs[0]) if structs else data
    if isinstance(t, mi.ListType):
        return [_with_unknown_fields(item, t.item_type) for item in data]
    return data


def test_the_contract_has_its_kinds() -> None:
    for name in ("Route", "RouteChat", "ClassifyTexts", "DispatchRequest", "ReplyError"):
        assert name in STRUCTS
    # Every kind on a subject carries its tag, so one typed decoder tells them apart.
    for decoder in DECODERS:
        kinds = typing.get_args(decoder.type)
        tags = [mi.type_info(k).tag for k in kinds]  # type: ignore[attr-defined]
        assert None not in tags and len(set(tags)) == len(tags), decoder.type


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_every_kind_round_trips_through_its_decoder(name: str) -> None:
    cls = STRUCTS[name]
    message = _example(cls)
    data = wire.encoder.encode(message)
    decoded = _decode(data, cls)
    assert type(decoded) is cls
    assert decoded == message
    assert wire.encoder.encode(decoded) == data


def test_raw_bodies_and_stream_bytes_pass_byte_for_byte() -> None:
    body = msgspec.Raw(b'{ "model" : "MoM",  "messages":[], "z":1.50 }')
    route = wire.Route(model="m", base_model="b")
    decoded = wire.dispatch_decoder.decode(
        wire.encoder.encode(wire.DispatchRequest(route=route, body=body))
    )
    assert bytes(decoded.body) == bytes(body)  # spacing and number spelling kept
    reply = wire.reply_decoder.decode(
        wire.encoder.encode(wire.ReplyResponse(status=200, body=body))
    )
    assert isinstance(reply, wire.ReplyResponse) and bytes(reply.body) == bytes(body)


def test_messages_carry_the_wire_version() -> None:
    for name, cls in STRUCTS.items():
        if "v" in cls.__struct_fields__:
            assert _example(cls).v == wire.WIRE_VERSION, name


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_an_older_reader_ignores_a_newer_field(name: str) -> None:
    cls = STRUCTS[name]
    assert not cls.__struct_config__.forbid_unknown_fields, name
    message = _example(cls)
    newer = _with_unknown_fields(_builtins(message), mi.type_info(cls))
    data = msgspec.json.encode(newer)
    assert b"x_from_a_newer_writer" in data
    assert _decode(data, cls) == message


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_a_field_added_after_v1_has_a_default_and_comes_last(name: str) -> None:
    cls = STRUCTS[name]
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    if name not in V1_FIELDS:
        return  # a kind of its own since: no older writer sends it
    v1 = V1_FIELDS[name]
    fields = [f.name for f in info.fields]
    kept = [f for f in fields if f in v1]
    assert kept == [f for f in v1 if f in fields], "a field of v1 moved"
    added = [f for f in info.fields if f.name not in v1]
    for field in added:
        assert not field.required, f"{name}.{field.name} was added after v1 without a default"
        assert fields.index(field.name) > max(fields.index(f) for f in kept), (
            f"{name}.{field.name} was added after v1 before a field of v1"
        )


@pytest.mark.parametrize("name", sorted(n for n in STRUCTS if n in V1_FIELDS))
def test_a_message_from_a_v1_writer_decodes_with_the_defaults(name: str) -> None:
    cls = STRUCTS[name]
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    full = _builtins(_example(cls))
    added = [f for f in info.fields if f.name not in V1_FIELDS[name]]
    older = {k: v for k, v in full.items() if k not in {f.encode_name for f in added}}
    decoded = _decode(msgspec.json.encode(older), cls)
    assert type(decoded) is cls
    for field in added:
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        assert getattr(decoded, field.name) == default, field.name


def test_a_missing_required_field_is_refused() -> None:
    # The converse of the rule: a field without a default is one every writer must send.
    with pytest.raises(msgspec.ValidationError, match="route"):
        wire.dispatch_decoder.decode(b'{"v": 1, "body": {}}')
    with pytest.raises(msgspec.ValidationError, match="no-such-kind"):
        wire.reply_decoder.decode(b'{"type": "no-such-kind", "v": 1}')


# Replies on the ingress inbox: `encode_reply` / `decode_reply`. A stream chunk is a header line
# and its raw bytes; every other reply is its JSON.

ROUTE = wire.Route(model="medical-lora", base_model="llama2-7b", category="medical")
FRAME = 'data: {"choices":[{"delta":{"content":"Grüße ☃\\n"}}]}\n\ndata: [DONE]\n\n'.encode()


@pytest.mark.parametrize(
    "message",
    [
        wire.ReplyHead(route=ROUTE),
        StreamChunk(seq=0, data=FRAME),
        StreamChunk(seq=41, data=b""),
        StreamChunk(seq=2, data=b"\n\n{\n"),
        wire.ReplyEnd(chunks=42, error=error_response(ErrorKind.BAD_GATEWAY, "cut\nshort")),
        wire.ReplyResponse(status=200, body=msgspec.Raw(b'{"id":"x"}'), route=ROUTE),
        wire.ReplyError(status=503, error=error_response(ErrorKind.UNAVAILABLE, "none")),
        wire.ReplyAlive(held_by="classifier"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_a_reply_round_trips_through_encode_and_decode_reply(message: wire.ReplyMessage) -> None:
    got = decode_reply(encode_reply(message))
    assert type(got) is type(message)
    assert encoder.encode(got) == encoder.encode(message)


def test_a_chunk_is_a_header_line_then_its_bytes() -> None:
    assert (
        encode_reply(StreamChunk(seq=7, data=FRAME)) == b'{"type":"chunk","v":1,"seq":7}\n' + FRAME
    )


def test_a_keepalive_is_told_from_every_answer_without_decoding() -> None:
    for held_by in ("classifier", "dispatcher"):
        assert wire.is_keepalive(encode_reply(wire.ReplyAlive(held_by=held_by)))
    answers: list[wire.ReplyMessage] = [
        wire.ReplyHead(route=ROUTE),
        StreamChunk(seq=0, data=b'{"type":"alive"}'),
        wire.ReplyEnd(chunks=1),
        wire.ReplyResponse(status=200, body=msgspec.Raw(b'{"type":"alive"}')),
        wire.ReplyError(status=499, error=error_response(ErrorKind.CLIENT_GONE, "alive")),
    ]
    assert not any(wire.is_keepalive(encode_reply(m)) for m in answers)


def test_other_replies_are_their_json() -> None:
    message = wire.ReplyEnd(chunks=3)
    assert encode_reply(message) == encoder.encode(message)


def test_the_json_chunk_of_the_previous_version_is_still_read() -> None:
    old = encoder.encode(StreamChunk(seq=3, data=FRAME))
    assert b'"data":"' in old and b"\n" not in old  # base64 inside JSON
    assert decode_reply(old) == StreamChunk(seq=3, data=FRAME)


def test_a_newer_chunk_header_is_read_by_this_version() -> None:
    newer = b'{"type":"chunk","v":2,"seq":5,"flags":["compressed-someday"]}\n' + FRAME
    assert decode_reply(newer) == StreamChunk(v=2, seq=5, data=FRAME)


@pytest.mark.parametrize(
    "payload",
    [b'{"type":"chunk","v":1}\nx', b'{"type":"chunk","seq":"7"}\nx', b'{"type":"chunk",\nx', b"x"],
)
def test_a_bad_payload_is_an_error(payload: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_reply(payload)
