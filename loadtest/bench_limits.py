"""What the `limits` checks cost the ingress per chat body: the depth scan and the caps.

For each body, µs (median over `--reps` runs of `--number` calls each) of:

- `decode`  the ingress's decode alone (`msgspec` into `ChatRequestView`), the cost before limits;
- `parse`   `services.ingress.validation.parse_chat` (depth scan, decode, schema, caps);
- `scan`    `services.common.limits.too_deep` alone.

Bodies: a typical request (one user message), a long conversation (200 messages, past the
bracket count that skips the scan), the same with quoted code in every message (escaped quotes
take the scan's slower path), a 4 MiB conversation (the default body limit), and the worst case
for the scan: 4 MiB of brackets 64 deep (refused, but only after the scan).

    PYTHONPATH=. nice python loadtest/bench_limits.py --number 200 --reps 5

Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from collections.abc import Callable

import msgspec

from schemas.config import Limits
from schemas.openai import ChatRequestView
from services.common.limits import too_deep
from services.ingress.validation import parse_chat

_decoder = msgspec.json.Decoder(ChatRequestView)
_DEPTH = Limits().max_json_depth


def _chat(messages: int, words: int, quoted: bool = False) -> bytes:
    text = " ".join(["pressure"] * words) + (' print("a[0]", {"k": 1})' if quoted else "")
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{text} [{i}]"}
        for i in range(messages)
    ]
    return json.dumps({"model": "MoM", "messages": turns, "max_tokens": 256}).encode()


def _bodies() -> dict[str, bytes]:
    nest = b"[" * 64 + b"]" * 64
    return {
        "1 message, 60 B text": _chat(1, 8),
        "200 messages, 40 KiB": _chat(200, 24),
        "200 messages with quotes": _chat(200, 24, quoted=True),
        "4 MiB conversation": _chat(400, 1300),
        "4 MiB of brackets, 64 deep": b'{"messages":[],"x":['
        + b",".join([nest] * (4 * 1024 * 1024 // (len(nest) + 1)))
        + b"]}",
    }


def _median_us(call: Callable[[], object], number: int, reps: int) -> float:
    runs = timeit.repeat(call, number=number, repeat=reps)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200, help="calls per run")
    parser.add_argument("--reps", type=int, default=5, help="runs; the median is reported")
    args = parser.parse_args()
    print(f"{'body':28} {'bytes':>9} {'decode µs':>10} {'parse µs':>10} {'scan µs':>9}")
    for name, body in _bodies().items():
        number = args.number if len(body) < 100_000 else max(1, args.number // 20)

        def decode(body: bytes = body) -> object:
            try:
                return _decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return None

        def parse(body: bytes = body) -> object:
            return parse_chat(body)

        def scan(body: bytes = body) -> object:
            return too_deep(body, _DEPTH)

        decode_us = _median_us(decode, number, args.reps)
        parse_us = _median_us(parse, number, args.reps)
        scan_us = _median_us(scan, number, args.reps)
        print(f"{name:28} {len(body):>9} {decode_us:>10.1f} {parse_us:>10.1f} {scan_us:>9.1f}")


if __name__ == "__main__":
    main()
