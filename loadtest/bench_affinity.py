"""What adapter affinity saves: latency and LoRA swaps, with and without `dispatcher.lora_affinity`.

Starts a nats-server, then for each mode (`weight`: endpoints by weight alone; `affinity`: the
adapter-aware order) two fresh `loraroute mock-vllm` servers with `--max-loras K`, a swap cost
and a latency model, and one `loraroute dispatcher` process. `--concurrency` closed-loop clients
then send chat requests straight to the dispatcher over NATS (no ingress or classifier), each
for an adapter drawn at random (seeded, the same sequence in both modes) from `--adapters`
adapters, for `--seconds`. Prints p50/p99 latency, throughput, and the swaps the two servers
counted (`GET /mock/lora`) per minute.

    nice python loadtest/bench_affinity.py --max-loras 1 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loraroute.natsserver import NatsServer  # noqa: E402
from schemas.wire import DispatchRequest, ReplyResponse, Route, encoder, reply_decoder  # noqa: E402
from services.common import bus  # noqa: E402

BASE = "llama2-7b"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "loraroute", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(
    nats_url: str, subject: str, adapters: list[str], endpoints: list[str], args: argparse.Namespace
) -> list[float]:
    nc = await bus.connect(nats_url, name="bench-affinity")
    latencies: list[float] = []
    end = time.monotonic() + args.seconds

    async def client(c: int) -> None:
        rng = random.Random(args.seed * 1000 + c)
        i = 0
        while time.monotonic() < end:
            model = rng.choice(adapters)
            body = {"model": model, "messages": [{"role": "user", "content": f"q{c}-{i}"}]}
            route = Route(model=model, base_model=BASE, reason="passthrough", endpoints=endpoints)
            request = DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(body)))
            meta = bus.RequestMeta(request_id=f"b{c}-{i}", deadline_ms=bus.deadline_after(60))
            started = time.perf_counter()
            msg = await nc.request(
                subject, encoder.encode(request), timeout=60, headers=meta.to_headers()
            )
            reply = reply_decoder.decode(msg.data)
            if not isinstance(reply, ReplyResponse) or reply.status != 200:
                raise RuntimeError(f"request failed: {reply!r}")
            latencies.append(time.perf_counter() - started)
            i += 1

    try:
        await asyncio.gather(*(client(c) for c in range(args.concurrency)))
    finally:
        await bus.close(nc)
    return latencies


def _run_mode(
    affinity: bool, nats_url: str, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    adapters = [f"lora-{i}" for i in range(args.adapters)]
    processes: list[subprocess.Popen[bytes]] = []
    mode = "affinity" if affinity else "weight"
    try:
        urls = []
        for i in range(2):
            port = _free_port()
            log = workdir / f"{mode}-mock-{i}.log"
            flags = ["mock-vllm", "--port", str(port), "--model", BASE,
                     "--lora-modules", *(f"{a}=/adapters/{a}" for a in adapters),
                     "--max-loras", str(args.max_loras),
                     "--lora-load-ms", str(args.load_ms), "--lora-swap-ms", str(args.swap_ms),
                     "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms),
                     "--output-tokens", f"{args.tokens}:{args.tokens}"]  # fmt: skip
            processes.append(_spawn(flags, log))
            urls.append(f"http://127.0.0.1:{port}")
            _wait(urls[-1] + "/health", processes[-1], log)
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        model = config["classifier"]["category_model"]
        model["model_id"] = str(REPO / model["model_id"])
        config["vllm_endpoints"] = [
            {"name": f"vllm-{i}", "address": "127.0.0.1", "port": int(u.rsplit(":", 1)[1])}
            for i, u in enumerate(urls)
        ]
        config["model_config"] = {
            BASE: {"preferred_endpoints": [], "loras": [{"name": a} for a in adapters]}
        }
        config["categories"] = []
        config["default_model"] = BASE
        config["nats"] = {"subject_prefix": f"bench{mode}"}
        config["dispatcher"] = {"lora_affinity": {"enabled": affinity}}
        path = workdir / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        metrics_port = _free_port()
        log = workdir / f"{mode}-dispatcher.log"
        command = ["dispatcher", "--nats", nats_url, "--config", str(path)]
        processes.append(_spawn([*command, "--metrics-port", str(metrics_port)], log))
        _wait(f"http://127.0.0.1:{metrics_port}/metrics", processes[-1], log)
        endpoints = [e["name"] for e in config["vllm_endpoints"]]
        started = time.monotonic()
        latencies = asyncio.run(
            _load(nats_url, f"bench{mode}.dispatch.{BASE}", adapters, endpoints, args)
        )
        elapsed = time.monotonic() - started
        swaps = sum(httpx.get(u + "/mock/lora").json()["swaps"] for u in urls)
    finally:
        _stop(processes)
    return {
        "mode": mode,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "swaps": swaps,
        "swaps_per_min": swaps * 60 / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-loras", type=int, default=1, help="GPU LoRA slots per server")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="per mode")
    parser.add_argument("--load-ms", type=float, default=90.0, help="disk read of an adapter")
    parser.add_argument("--swap-ms", type=float, default=10.0, help="copy into a GPU slot")
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {vars(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-affinity-") as tmp:
        workdir = Path(tmp)
        nats = NatsServer(store_dir=workdir / "nats")
        nats_url = nats.start()
        try:
            results = [_run_mode(affinity, nats_url, workdir, args) for affinity in (False, True)]
        finally:
            nats.stop()
    print("| mode | requests | req/s | p50 ms | p99 ms | swaps | swaps/min |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['swaps']} | {r['swaps_per_min']:.0f} |")  # fmt: skip
    weight, affinity = results
    print(
        f"affinity / weight: p50 {affinity['p50_ms'] / weight['p50_ms']:.2f}, "
        f"p99 {affinity['p99_ms'] / weight['p99_ms']:.2f}, "
        f"throughput {affinity['rps'] / weight['rps']:.2f}, "
        f"swaps/min {affinity['swaps_per_min'] / max(weight['swaps_per_min'], 1e-9):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
