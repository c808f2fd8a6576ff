"""Which HTTP client the dispatcher uses towards vLLM: CPU per request of each candidate.

Starts the mock vLLM (no latency model, 16 output tokens) on a free 127.0.0.1 port, then for each
client and each in-flight count runs N asyncio tasks that POST chat completions in a loop for
`--duration` seconds, and reports requests/s and the client process's CPU time per request
(`time.process_time`, which counts every thread of this process). Candidates:

- `httpx`          plain `httpx.AsyncClient` (httpcore pool)
- `httpx+aiohttp`  `httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(...))`
- `aiohttp`        `aiohttp.ClientSession` alone

Each cell is the median of `--reps` runs. Loopback only; bounded in time. Not a test.

    nice python loadtest/bench_upstream_client.py --duration 3 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

BODY = json.dumps(
    {
        "model": "technical-lora",
        "messages": [
            {"role": "system", "content": "You are an expert software engineer."},
            {"role": "user", "content": "Explain async/await in JavaScript. " * 20},
        ],
        "max_tokens": 16,
    }
).encode()
STREAM_BODY = json.loads(BODY)
STREAM_BODY["stream"] = True
STREAM_BYTES = json.dumps(STREAM_BODY).encode()
HEADERS = {"content-type": "application/json"}

Post = Callable[[bytes], Awaitable[int]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mock(port: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "loraroute",
        "mock-vllm",
        "--port",
        str(port),
        "--model",
        "llama2-7b",
        "--lora-modules",
        "technical-lora=technical-lora",
        "--output-tokens",
        "16:16",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with httpx.Client() as c:
                if c.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("mock vLLM did not start")


async def _load(
    post: Post, body: bytes, inflight: int, duration: float
) -> tuple[int, float, float]:
    done = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            status = await post(body)
            if status != 200:
                raise RuntimeError(f"status {status}")
            done += 1

    # Warm-up: open the connections before measuring.
    stop_at = time.monotonic() + 0.5
    await asyncio.gather(*(worker() for _ in range(inflight)))
    done = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    stop_at = wall0 + duration
    await asyncio.gather(*(worker() for _ in range(inflight)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return done, wall, cpu


async def _run_client(
    kind: str, url: str, inflight: int, duration: float, stream: bool
) -> dict[str, float]:
    body = STREAM_BYTES if stream else BODY
    if kind == "aiohttp":
        connector = aiohttp.TCPConnector(limit=inflight, keepalive_timeout=4.0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(data: bytes) -> int:
                async with session.post(url, data=data, headers=HEADERS) as r:
                    async for _ in r.content.iter_any():
                        pass
                    return r.status

            n, wall, cpu = await _load(post, body, inflight, duration)
    else:
        limits = httpx.Limits(
            max_connections=inflight, max_keepalive_connections=inflight, keepalive_expiry=4.0
        )
        transport = (
            AiohttpTransport(limits=limits)
            if kind == "httpx+aiohttp"
            else httpx.AsyncHTTPTransport(limits=limits)
        )
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:

            async def post(data: bytes) -> int:
                async with client.stream("POST", url, content=data, headers=HEADERS) as r:
                    async for _ in r.aiter_raw():
                        pass
                    return r.status_code

            n, wall, cpu = await _load(post, body, inflight, duration)
    return {"requests": n, "rps": n / wall, "cpu_us_per_req": cpu / max(n, 1) * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--inflight", type=int, nargs="+", default=[1, 64])
    p.add_argument("--clients", nargs="+", default=["httpx", "httpx+aiohttp", "aiohttp"])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    port = _free_port()
    mock = _start_mock(port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows: list[dict[str, Any]] = []
    try:
        for stream in (False, True):
            for inflight in args.inflight:
                for kind in args.clients:
                    runs = [
                        asyncio.run(_run_client(kind, url, inflight, args.duration, stream))
                        for _ in range(args.reps)
                    ]
                    row = {
                        "client": kind,
                        "stream": stream,
                        "inflight": inflight,
                        "rps": statistics.median(r["rps"] for r in runs),
                        "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in runs),
                    }
                    rows.append(row)
                    print(
                        f"{kind:<14} stream={stream!s:<5} inflight={inflight:<3} "
                        f"{row['rps']:8.0f} req/s  {row['cpu_us_per_req']:8.0f} µs CPU/req",
                        flush=True,
                    )
    finally:
        mock.terminate()
        try:
            mock.wait(10)
        except subprocess.TimeoutExpired:
            mock.kill()
            mock.wait()
    if args.json:
        meta = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "duration": args.duration,
            "reps": args.reps,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
