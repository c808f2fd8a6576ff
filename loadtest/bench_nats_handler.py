"""CPU per consumed message: a raw nats-py subscriber against a FastStream subscriber.

Why the hot path (ingress, classifier, dispatcher) uses raw nats-py: this measures what one
consumed-and-answered message costs the responder process in each style, with the same requester
(raw nats-py, `--inflight` requests in flight) and the same 1 KiB payload, on a private
nats-server. Responders run in their own processes; their CPU comes from /proc/<pid>/stat.

    nice python loadtest/bench_nats_handler.py --seconds 4 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.common.natsserver import NatsServer  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")

RAW = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def cb(msg):
        await nc.publish(msg.reply, msg.data)
    await nc.subscribe("bench", queue="q", cb=cb)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

FASTSTREAM = """
import asyncio, sys
from faststream.nats import NatsBroker
broker = NatsBroker(sys.argv[1], logger=None)
@broker.subscriber("bench", queue="q")
async def handle(body: bytes) -> bytes:
    return body
async def main():
    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def load(url: str, seconds: float, inflight: int, pid: int) -> tuple[float, float]:
    """(messages per second, responder CPU µs per message)."""
    nc = await nats.connect(url)
    payload = os.urandom(1024)
    for _ in range(200):
        await nc.request("bench", payload, timeout=5)
    count = 0
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await nc.request("bench", payload, timeout=5)
            count += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0
    await nc.close()
    return count / elapsed, cpu * 1e6 / max(count, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"raw nats-py": [], "FastStream": []}
    with tempfile.TemporaryDirectory() as folder, NatsServer(store_dir=Path(folder)) as server:
        for _ in range(args.reps):
            for name, code in (("raw nats-py", RAW), ("FastStream", FASTSTREAM)):
                proc = subprocess.Popen(
                    [sys.executable, "-c", code, server.url], stdout=subprocess.PIPE, text=True
                )
                try:
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                    results[name].append(
                        asyncio.run(load(server.url, args.seconds, args.inflight, proc.pid))
                    )
                finally:
                    proc.terminate()
                    proc.wait(10)
    print("| responder | msg/s (median) | responder CPU µs/msg (median) [min-max] |")
    print("|---|---|---|")
    for name, runs in results.items():
        rates = [r for r, _ in runs]
        cpus = [c for _, c in runs]
        print(
            f"| {name} | {statistics.median(rates):,.0f} | {statistics.median(cpus):.1f} "
            f"[{min(cpus):.1f}-{max(cpus):.1f}] |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
