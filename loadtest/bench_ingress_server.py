"""The ingress's own HTTP cost under each ASGI server set-up, with no pipeline behind it.

Runs the real ingress (`loraroute ingress`) on a private nats-server with uvicorn in three
set-ups (uvloop + httptools, uvloop + h11, asyncio + h11) and loads three requests:
`GET /v1/models` and a 1 KB `POST /v1/chat/completions` naming an unknown model (body read with
the size limit, content type, JSON and schema validation, 404 envelope), which the ingress
answers alone; and the same POST for `model: MoM`, answered at once by a NATS responder in the
load generator's process (a whole `ReplyResponse`), which adds the ingress's bus work: publish,
the reply through the wildcard inbox, decode. Reports requests per second and the ingress
process's CPU µs per request (/proc/<pid>/stat). Loopback only; the load generator (aiohttp) and
the responder share the machine's cores, but their CPU is not counted.

    nice python loadtest/bench_ingress_server.py --seconds 4 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import nats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loraroute.natsserver import NatsServer  # noqa: E402
from schemas.wire import ReplyResponse, encoder  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
SETUPS = {
    "uvicorn uvloop+httptools": ["--loop", "uvloop", "--http", "httptools"],
    "uvicorn uvloop+h11": ["--loop", "uvloop", "--http", "h11"],
    "uvicorn asyncio+h11": ["--loop", "asyncio", "--http", "h11"],
}
BODY = json.dumps(
    {
        "model": "no-such-model",
        "messages": [
            {"role": "system", "content": "You are terse. " * 10},
            {
                "role": "user",
                "content": "Explain the difference between a process and a thread. " * 12,
            },
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    }
).encode()


ROUTED = BODY.replace(b'"no-such-model"', b'"MoM"')
ANSWER = encoder.encode(
    ReplyResponse(
        status=200,
        body=msgspec.Raw(
            b'{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[]}'
        ),
    )
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def load(
    url: str, kind: str, seconds: float, inflight: int, pid: int, nats_url: str
) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=inflight)
    headers = {"content-type": "application/json"}
    nc = await nats.connect(nats_url)

    async def respond(msg: Any) -> None:
        await nc.publish(msg.reply, ANSWER)

    await nc.subscribe("loraroute.classify", cb=respond)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            if kind == "routed":
                async with session.post(url, data=ROUTED, headers=headers) as r:
                    await r.read()
                    assert r.status == 200
            elif kind == "404":
                async with session.post(url, data=BODY, headers=headers) as r:
                    await r.read()
                    assert r.status == 404
            else:
                async with session.get(url) as r:
                    await r.read()
                    assert r.status == 200

        for _ in range(200):
            await one()
        count = 0
        cpu0 = cpu_seconds(pid)
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < stop_at:
                await one()
                count += 1

        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu0
    await nc.close()
    return count / elapsed, cpu * 1e6 / max(count, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder, NatsServer(store_dir=Path(folder)) as server:
        for _ in range(args.reps):
            for name, flags in SETUPS.items():
                port = free_port()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "loraroute", "ingress", "--nats", server.url,
                     "--config", str(REPO / "config" / "config.yaml"), "--port", str(port),
                     "--log-level", "warning", *flags],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    base = f"http://127.0.0.1:{port}"
                    for _ in range(100):
                        try:
                            if httpx.get(f"{base}/health").status_code == 200:
                                break
                        except httpx.HTTPError:
                            time.sleep(0.1)
                    for label, path, kind in (
                        ("GET /v1/models", "/v1/models", "get"),
                        ("POST chat, unknown model (404)", "/v1/chat/completions", "404"),
                        ("POST chat via NATS, instant reply", "/v1/chat/completions", "routed"),
                    ):
                        result = asyncio.run(
                            load(
                                base + path, kind, args.seconds, args.inflight, proc.pid, server.url
                            )
                        )
                        rows.setdefault((name, label), []).append(result)
                finally:
                    proc.terminate()
                    proc.wait(10)
    print("| server | request | req/s (median) | ingress CPU µs/req (median) [min-max] |")
    print("|---|---|---|---|")
    for (name, label), runs in rows.items():
        cpus = [c for _, c in runs]
        rate = statistics.median(r for r, _ in runs)
        print(
            f"| {name} | {label} | {rate:,.0f} | {statistics.median(cpus):.0f} "
            f"[{min(cpus):.0f}-{max(cpus):.0f}] |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
