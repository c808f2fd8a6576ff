"""What a streamed chunk costs on its way from the dispatcher to the ingress: the reply encoding.

Two encodings of `schemas.wire.StreamChunk`:

- `json`  the previous form: the whole chunk as JSON, its bytes in base64 (`encoder.encode`,
          `reply_decoder.decode`), which the ingress still reads;
- `raw`   the current form: a JSON line with `seq` and `v`, then the bytes as they are
          (`encode_reply`, `decode_reply`);
- `header` the bytes as the whole payload and `seq` and `v` in a NATS header instead (a
          variant measured to choose between them; nats-py's header handling costs more).

For each, two figures, medians over `--reps` runs of `--seconds` each:

- `codec`: µs to encode and decode one chunk in process (no NATS);
- `hop`: chunks per second through a real nats-server (`loraroute.natsserver`), one
  connection publishing as the dispatcher does and another receiving and decoding as the ingress
  does, in this one process, so the figure includes nats-py's cost per message.

    PYTHONPATH=. nice python loadtest/bench_stream_chunks.py --seconds 2 --reps 3

Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from loraroute.natsserver import NatsServer
from schemas.wire import (
    ChunkHeader,
    ReplyMessage,
    StreamChunk,
    decode_reply,
    encode_reply,
    encoder,
    reply_decoder,
)
from services.common import bus
from services.common.log import configure

# One token of a vLLM chat stream, as vLLM frames it (about 230 bytes), and a 4 KiB burst.
TOKEN = (
    b'data: {"id":"chatcmpl-8f3a9c2e1b7d4e6f","object":"chat.completion.chunk","created":1733472000,'
    b'"model":"medical-lora","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":null}]}\n\n'
)
FRAMES = {"token": TOKEN, "4KiB": TOKEN * (4096 // len(TOKEN))}

Headers = dict[str, str] | None
Encode = Callable[[StreamChunk], tuple[bytes, Headers]]
Decode = Callable[[Mapping[str, str] | None, bytes], Any]
_HEADER = "Lr-Chunk"
_header_decoder = msgspec.json.Decoder(ChunkHeader)


def _json_encode(chunk: StreamChunk) -> tuple[bytes, Headers]:
    return encoder.encode(chunk), None


def _json_decode(headers: Mapping[str, str] | None, data: bytes) -> ReplyMessage:
    message: ReplyMessage = reply_decoder.decode(data)
    return message


def _raw_encode(chunk: StreamChunk) -> tuple[bytes, Headers]:
    return encode_reply(chunk), None


def _raw_decode(headers: Mapping[str, str] | None, data: bytes) -> ReplyMessage:
    return decode_reply(data)


def _header_encode(chunk: StreamChunk) -> tuple[bytes, Headers]:
    return chunk.data, {_HEADER: encoder.encode(ChunkHeader(v=chunk.v, seq=chunk.seq)).decode()}


def _header_decode(headers: Mapping[str, str] | None, data: bytes) -> StreamChunk:
    assert headers is not None
    header = _header_decoder.decode(headers[_HEADER])
    return StreamChunk(v=header.v, seq=header.seq, data=data)


CODECS: dict[str, tuple[Encode, Decode]] = {
    "json": (_json_encode, _json_decode),
    "raw": (_raw_encode, _raw_decode),
    "header": (_header_encode, _header_decode),
}


def _codec_us(frame: bytes, encode: Encode, decode: Decode, seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while True:
        for seq in range(100):
            payload, headers = encode(StreamChunk(seq=seq, data=frame))
            decode(headers, payload)
        calls += 100
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls * 1e6


async def _hop_rate(
    url: str, frame: bytes, encode: Encode, decode: Decode, seconds: float
) -> float:
    sender = await bus.connect(url, name="bench-dispatcher")
    receiver = await bus.connect(url, name="bench-ingress")
    received = 0
    window = asyncio.Event()

    async def on_reply(msg: bus.Msg) -> None:
        nonlocal received
        message = decode(msg.headers, msg.data)
        assert isinstance(message, StreamChunk)
        received += 1
        if received % 1000 == 0:
            window.set()

    await receiver.subscribe("bench.inbox", cb=on_reply)
    await receiver.flush()
    sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            payload, headers = encode(StreamChunk(seq=sent, data=frame))
            await sender.publish("bench.inbox", payload, headers=headers)
            sent += 1
        # Keep at most a few thousand chunks in flight, as a stream's flow would.
        while sent - received > 4000:
            window.clear()
            await window.wait()
    await sender.flush()
    while received < sent:
        window.clear()
        await asyncio.wait_for(window.wait(), 10)
    rate = received / (time.perf_counter() - start)
    await bus.close(sender)
    await bus.close(receiver)
    return rate


def main() -> int:
    configure("bench", "warning")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per run")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        NatsServer(store_dir=Path(tmp), jetstream=False) as server,
    ):
        for frame_name, frame in FRAMES.items():
            codec_us: dict[str, list[float]] = {name: [] for name in CODECS}
            rates: dict[str, list[float]] = {name: [] for name in CODECS}
            for rep in range(args.reps):
                # The order turns each repetition, so drift on a shared machine hits all alike.
                names = list(CODECS)[rep % len(CODECS) :] + list(CODECS)[: rep % len(CODECS)]
                for name in names:
                    encode, decode = CODECS[name]
                    codec_us[name].append(_codec_us(frame, encode, decode, args.seconds / 4))
                    rate = asyncio.run(_hop_rate(server.url, frame, encode, decode, args.seconds))
                    rates[name].append(rate)
            for name in CODECS:
                row = {
                    "frame": frame_name,
                    "bytes": len(frame),
                    "encoding": name,
                    "codec_us": round(statistics.median(codec_us[name]), 3),
                    "hop_chunks_per_s": round(statistics.median(rates[name])),
                }
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
