"""What applying a route to a chat body costs the dispatcher (`services.dispatcher.apply`).

Times `apply_route` in process over three bodies (a one-turn question, a 20-turn conversation, a
~64 KiB pasted document) and three routes (model only; model and a reasoning switch; a system
prompt), and prints the median over `--reps` runs of µs per call. Run it once on each
version to compare, from the root of each checkout:

    PYTHONPATH=. nice python loadtest/bench_apply.py --seconds 1 --reps 3

Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import msgspec

from schemas.wire import Route
from services.dispatcher.apply import apply_route

_TURN = "Explain how async/await works in JavaScript, with an example. "
BODIES = {
    "one_turn": {
        "model": "MoM",
        "messages": [{"role": "user", "content": _TURN}],
        "temperature": 0.7,
        "max_tokens": 256,
    },
    "20_turns": {
        "model": "MoM",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            *(
                {"role": "user" if i % 2 == 0 else "assistant", "content": _TURN * 4}
                for i in range(20)
            ),
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
    },
    "64k_document": {
        "model": "MoM",
        "messages": [{"role": "user", "content": "Summarise:\n" + "Lorem ipsum dolor. " * 3400}],
        "max_tokens": 512,
    },
}
ROUTES = {
    "model": Route(model="technical-lora", base_model="llama2-7b"),
    "system_prompt": Route(
        model="technical-lora", base_model="llama2-7b", system_prompt="You are a programmer."
    ),
    "reasoning": Route(
        model="technical-lora",
        base_model="llama2-7b",
        use_reasoning=True,
        reasoning_type="chat_template_kwargs",
        reasoning_parameter="enable_thinking",
    ),
}


def _per_call_us(body: bytes, route: Route, seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(50):
            apply_route(body, route)
        calls += 50
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="per case and run")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    for body_name, body in BODIES.items():
        data = msgspec.json.encode(body)
        for route_name, route in ROUTES.items():
            runs = [_per_call_us(data, route, args.seconds) for _ in range(args.reps)]
            row = {
                "body": body_name,
                "bytes": len(data),
                "route": route_name,
                "us_per_call": round(statistics.median(runs), 2),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
