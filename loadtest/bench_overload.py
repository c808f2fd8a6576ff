"""Time to a 429 from a saturated ingress under a burst of 2,000 connections.

Runs the real ingress (`loraroute ingress`) on a private nats-server with `ingress.max_in_flight`
= `--hold`, and a classifier stand-in in this process that takes every request and never answers.
`--hold` requests are sent first and stay open, so the ingress is saturated; then `--connections`
clients connect at once, each on a fresh TCP connection, and send one ~1 KB chat request. Every
one of them should be answered 429 at once. Reports, per round, the statuses and the time from
the connection attempt to the whole answer (p50, p99, max), with the ingress's CPU seconds.
The clients are raw asyncio sockets on uvloop in this one process, so they share the machine's
cores with the ingress and nats-server; the figures include the kernel's accept queue.

    nice python loadtest/bench_overload.py --connections 2000 --hold 256 --rounds 3
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

import httpx
import nats
import uvloop
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loraroute.natsserver import NatsServer  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps(
    {
        "model": "MoM",
        "messages": [
            {"role": "system", "content": "You are terse. " * 10},
            {"role": "user", "content": "Explain a process and a thread. " * 24},
        ],
        "max_tokens": 64,
    }
).encode()


def request_bytes(port: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def one(port: int, payload: bytes, timeout_s: float) -> tuple[int, float]:
    """(status, seconds from the connection attempt to the whole answer); status 0: no answer
    (refused, reset or timed out)."""
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            status = int(head.split(b" ", 2)[1])
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        status = 0
    finally:
        if writer is not None:
            writer.close()
    return status, time.perf_counter() - start


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, nats_url: str, prefix: str, port: int, pid: int) -> None:
    nc = await nats.connect(nats_url)
    held: list[object] = []
    payload = request_bytes(port)
    holders: list[asyncio.Future[tuple[int, float]]] = []
    if not args.pipeline:

        async def take(msg: object) -> None:
            held.append(msg)  # never answered: the request stays in flight

        await nc.subscribe(f"{prefix}.classify", cb=take)
        await nc.flush()
        # Fill the ingress: `hold` requests that the stand-in never answers.
        holders = [asyncio.ensure_future(one(port, payload, 3600)) for _ in range(args.hold)]
        while len(held) < args.hold:
            await asyncio.sleep(0.05)
        print(f"saturated: {len(held)} requests in flight", flush=True)
    print(
        "| round | connections | 429 | 200 | other | no answer | 429 p50 s | 429 p99 s "
        "| 429 max s | 200 p50 s | ingress CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    p99s = []
    for round_ in range(1, args.rounds + 1):
        cpu0 = cpu_seconds(pid)
        results = await asyncio.gather(
            *(one(port, payload, args.timeout) for _ in range(args.connections))
        )
        cpu = cpu_seconds(pid) - cpu0
        times = [t for status, t in results if status == 429]
        answered = [t for status, t in results if status == 200]
        refused = len(times)
        none = sum(1 for status, _ in results if status == 0)
        other = len(results) - refused - len(answered) - none
        p50, p99 = (quantile(times, 0.5), quantile(times, 0.99)) if times else (0.0, 0.0)
        p99s.append(p99)
        ok50 = quantile(answered, 0.5) if answered else 0.0
        print(
            f"| {round_} | {args.connections} | {refused} | {len(answered)} | {other} | {none} "
            f"| {p50:.3f} | {p99:.3f} | {max(times, default=0.0):.3f} | {ok50:.3f} | {cpu:.2f} |",
            flush=True,
        )
        await asyncio.sleep(1.0)
    print(f"median p99 over {args.rounds} rounds: {statistics.median(p99s):.3f} s")
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument(
        "--hold", type=int, default=256, help="ingress.max_in_flight (0: the config's default)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="per client, seconds")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="a real classifier and dispatcher and the mock vLLM behind the ingress instead of "
        "the silent stand-in: the burst itself saturates it",
    )
    parser.add_argument("--itl-ms", type=float, default=20.0, help="mock vLLM, per token")
    args = parser.parse_args()
    prefix = f"bench{os.getpid()}"
    port = free_port()
    with tempfile.TemporaryDirectory() as folder, NatsServer(store_dir=Path(folder)) as server:
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        model = config["classifier"]["category_model"]
        model["model_id"] = str(REPO / model["model_id"])
        config["nats"] = {"subject_prefix": prefix}
        config["ingress"] = {"port": port, "request_timeout_s": 600}
        if args.hold:
            config["ingress"]["max_in_flight"] = args.hold
        mock_port = free_port()
        config["vllm_endpoints"] = [
            {"name": "vllm-primary", "address": "127.0.0.1", "port": mock_port, "weight": 1}
        ]
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        workers = []
        if args.pipeline:
            base = next(iter(config["model_config"]))
            adapters = [lora["name"] for lora in config["model_config"][base].get("loras", [])]
            mock = ["mock-vllm", "--port", str(mock_port), "--model", base,
                    "--output-tokens", "16:16", "--itl-ms", str(args.itl_ms),
                    "--max-num-seqs", "4096", "--lora-modules", *(f"{a}={a}" for a in adapters)]  # fmt: skip
            common = ["--nats", server.url, "--config", str(path)]
            for command in (mock, ["classifier", *common], ["dispatcher", *common]):
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "loraroute", *command],
                        cwd=REPO,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        proc = subprocess.Popen(
            [sys.executable, "-m", "loraroute", "ingress", "--nats", server.url,
             "--config", str(path), "--log-level", "warning", "--graceful-timeout", "1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            if args.pipeline:
                for _ in range(600):
                    if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                        break
                    time.sleep(0.2)
            uvloop.run(run(args, server.url, prefix, port, proc.pid))
        finally:
            for child in [proc, *workers]:
                child.terminate()
                child.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
