"""How closely the mock vLLM keeps its latency model: the delays asked for vs the delays seen.

Starts `loraroute mock-vllm` on a free loopback port with `--ttft-ms`, `--itl-ms`,
`--output-tokens N:N` and `--lora-swap-ms` (one LoRA slot, two adapters), then, one request at a time, `--reps` times each:

- `whole`            a non-streaming base-model request: expected TTFT + (N - 1) x ITL;
- `ttft`, `itl`      a streaming one: the first content chunk, then the gaps between chunks;
- `adapter load`     an adapter request that swaps its adapter into the slot: `whole` + swap;
- `base while load`  a base-model request sent while an adapter swaps in: `whole`, no wait for it.

The tests check only what cannot flake (order, counts, lower bounds); this prints the figures,
medians and worst case over the configured value. Loopback only, a few seconds. Not a test.

    nice python loadtest/bench_mock_latency.py --reps 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "hi"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "loraroute", "mock-vllm", "--port", str(port)]
    command += ["--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms)]
    command += ["--output-tokens", f"{args.tokens}:{args.tokens}"]
    command += ["--lora-modules", "a=/a", "b=/b", "--max-loras", "1"]
    command += ["--lora-swap-ms", str(args.load_ms)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mock-vllm exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("mock-vllm did not become healthy")


async def _whole(client: httpx.AsyncClient, model: str | None = None) -> float:
    body: dict[str, object] = {"messages": HI, **({"model": model} if model else {})}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return time.perf_counter() - started


async def _stream(client: httpx.AsyncClient) -> tuple[float, list[float]]:
    """Time to the first content chunk, and the gaps between content chunks."""
    started = time.perf_counter()
    arrivals: list[float] = []
    body = {"messages": HI, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            # Token chunks only: the role chunk (empty content) comes with the first token.
            if line.startswith('data: {"') and '"content"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter() - started)
    return arrivals[0], [b - a for a, b in itertools.pairwise(arrivals)]


async def _measure(url: str, reps: int) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {
        k: [] for k in ("whole", "ttft", "itl", "adapter load", "base while load")
    }
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for rep in range(reps):
            seen["whole"].append(await _whole(client))
            ttft, gaps = await _stream(client)
            seen["ttft"].append(ttft)
            seen["itl"].extend(gaps)
            # One slot, adapters taken in turn: each request swaps its adapter in.
            loading = asyncio.create_task(_whole(client, "ab"[rep % 2]))
            await asyncio.sleep(0.01)  # the adapter request is in and loading
            seen["base while load"].append(await _whole(client))
            seen["adapter load"].append(await loading)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--ttft-ms", type=float, default=100.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=6)
    parser.add_argument("--load-ms", type=float, default=200.0)
    args = parser.parse_args()
    whole_s = (args.ttft_ms + (args.tokens - 1) * args.itl_ms) / 1000
    expected = {
        "whole": whole_s,
        "ttft": args.ttft_ms / 1000,
        "itl": args.itl_ms / 1000,
        "adapter load": whole_s + args.load_ms / 1000,
        "base while load": whole_s,
    }
    with tempfile.TemporaryDirectory() as folder:
        process, url = _start(args, Path(folder) / "mock-vllm.log")
        try:
            seen = asyncio.run(_measure(url, args.reps))
        finally:
            process.terminate()
            process.wait(10)
    print("| figure | configured ms | median ms | worst ms | median over ms | n |")
    print("|---|---|---|---|---|---|")
    for name, values in seen.items():
        want, median, worst = expected[name], statistics.median(values), max(values)
        print(
            f"| {name} | {want * 1000:.1f} | {median * 1000:.1f} | {worst * 1000:.1f} "
            f"| {(median - want) * 1000:+.1f} | {len(values)} |"
        )


if __name__ == "__main__":
    main()
