"""What one NATS hop costs the consuming process: raw nats-py (as the services use it) vs FastStream.

Starts its own nats-server (`loraroute.natsserver`) and, for each variant, a responder
subprocess that subscribes to one subject in a queue group and answers each request on its reply
subject, the way a classifier or dispatcher consumes and publishes:

- `raw`         nats-py subscription callback: read `RequestMeta` from the headers, decode a
                `DispatchRequest` (msgspec, the body kept raw), publish a `ReplyResponse`
                (`services.common.bus` connection, as the services do);
- `raw-bare`    nats-py callback that only publishes the payload back (the floor);
- `faststream`  a FastStream `NatsBroker` subscriber doing the same decode and reply through its
                return value.

The requester keeps `--inflight` requests outstanding for `--duration` seconds; the responder
reports its own CPU time (`time.process_time`) over the timed window, so the figure is CPU per
consumed-and-answered message in the consuming process. Loopback only. Not a test.

    pip install -e '.[bench]'   # FastStream: no service imports it
    nice python loadtest/bench_nats_hop.py --duration 3 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

from loraroute.natsserver import NatsServer
from schemas.wire import DispatchRequest, Route, encoder
from services.common import bus
from services.common.log import configure

SUBJECT = "bench.hop"
BODY = msgspec.json.encode(
    {
        "model": "MoM",
        "messages": [{"role": "user", "content": "Explain async/await in JavaScript. " * 10}],
    }
)
PAYLOAD = encoder.encode(
    DispatchRequest(
        route=Route(model="technical-lora", base_model="llama2-7b"), body=msgspec.Raw(BODY)
    )
)

RESPONDER = r"""
import asyncio, sys, time, msgspec
from schemas.wire import ReplyResponse, dispatch_decoder, encoder
from services.common import bus
from services.common.log import configure

configure("bench-responder", "warning")  # logs to stderr; stdout carries the protocol
kind, url = sys.argv[1], sys.argv[2]
REPLY = b'{"id":"x","object":"chat.completion","model":"technical-lora","choices":[]}'

async def main():
    marks = []
    if kind == "faststream":
        from faststream.nats import NatsBroker
        from faststream.nats.annotations import NatsMessage
        broker = NatsBroker(url, logger=None)

        @broker.subscriber("bench.hop", queue="q")
        async def handle(message: NatsMessage) -> bytes:
            meta = bus.RequestMeta.from_headers(message.headers)
            request = dispatch_decoder.decode(message.body)
            return encoder.encode(ReplyResponse(status=200, body=msgspec.Raw(REPLY), route=request.route))

        await broker.start()
        nc = await bus.connect(url, name="control")
    else:
        nc = await bus.connect(url, name="responder")

        async def handle(msg):
            if kind == "raw-bare":
                await nc.publish(msg.reply, msg.data)
                return
            meta = bus.RequestMeta.from_headers(msg.headers)
            request = dispatch_decoder.decode(msg.data)
            await nc.publish(msg.reply, encoder.encode(ReplyResponse(status=200, body=msgspec.Raw(REPLY), route=request.route)))

        await nc.subscribe("bench.hop", queue="q", cb=handle)

    async def control(msg):
        marks.append(time.process_time())
        await nc.publish(msg.reply, str(marks[-1]).encode())

    await nc.subscribe("bench.control", cb=control)
    await nc.flush()
    print("ready", flush=True)
    while len(marks) < 2:
        await asyncio.sleep(0.05)
    print(json.dumps({"cpu": marks[1] - marks[0]}), flush=True)
    await bus.close(nc)
    if kind == "faststream":
        await broker.stop()

import json
asyncio.run(main())
"""


async def _drive(url: str, inflight: int, duration: float) -> int:
    nc = await bus.connect(url, name="requester")
    inbox = f"_INBOX.{uuid.uuid4().hex}"
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(msg: bus.Msg) -> None:
        fut = waiting.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    await nc.subscribe(f"{inbox}.*", cb=on_reply)
    headers = bus.RequestMeta(request_id="r", deadline_ms=bus.deadline_after(60)).to_headers()
    done = 0
    stop_at = 0.0

    async def worker(w: int) -> None:
        nonlocal done
        n = 0
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop_at:
            reply = f"{inbox}.{w}x{n}"
            n += 1
            fut = loop.create_future()
            waiting[reply] = fut
            await nc.publish(SUBJECT, PAYLOAD, reply=reply, headers=headers)
            await asyncio.wait_for(fut, 10)
            done += 1

    stop_at = time.monotonic() + 0.5  # warm-up
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    await nc.request("bench.control", b"", timeout=5)
    done = 0
    stop_at = time.monotonic() + duration
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    await nc.request("bench.control", b"", timeout=5)
    await bus.close(nc)
    return done


def _one(url: str, kind: str, inflight: int, duration: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-c", RESPONDER, kind, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{kind} responder did not start")
        start = time.monotonic()
        done = asyncio.run(_drive(url, inflight, duration))
        wall = time.monotonic() - start
        cpu = json.loads(proc.stdout.readline())["cpu"]
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "messages": done,
        "rate": done / duration,
        "cpu_us_per_msg": cpu / max(done, 1) * 1e6,
        "wall": wall,
    }


def main() -> int:
    configure("bench", "warning")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--kinds", nargs="+", default=["raw-bare", "raw", "faststream"])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        NatsServer(store_dir=Path(tmp), jetstream=False) as server,
    ):
        for kind in args.kinds:
            runs = [_one(server.url, kind, args.inflight, args.duration) for _ in range(args.reps)]
            row = {
                "kind": kind,
                "inflight": args.inflight,
                "rate": statistics.median(r["rate"] for r in runs),
                "cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in runs),
            }
            rows.append(row)
            print(
                f"{kind:<11} {row['rate']:8.0f} msg/s  {row['cpu_us_per_msg']:7.1f} µs CPU/msg (consumer)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
