"""What a live config push costs the requests around it.

Starts the pipeline of bench_pipeline.py (nats-server, mock vLLM with 16 output tokens,
classifier, dispatcher, ingress on 127.0.0.1 free ports), keeps `--concurrency` clients asking
`model: MoM` without pause for `--duration` seconds, and every `--every` seconds pushes a new
revision with `loraroute config push` (the real command, its own process): it alternates the
medical category between `medical-lora` and an A/B split with `medical-lora-v2`, a change every
service applies (new route table, label map, endpoints, `/v1/models`). For each push it
records the requests in flight when the revision was stored and when the last service
reported it in `/ready`, and it compares the latency of requests that started within
`--window` seconds after a push with the latency of the others (steady state). Every failed
request is counted. Not a test: it prints a table and writes JSON for docs/benchmarks.md.

    nice python loadtest/bench_config_swap.py --duration 40 --every 4 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import QUERIES, REPO, Bench, write_report


class SwapBench(Bench):
    """The pipeline, with a mock that also serves `medical-lora-v2`."""

    def start(self) -> None:
        # Appended to the mock's arguments: its adapters again, with the new version.
        adapters = ("technical-lora", "medical-lora", "medical-lora-v2", "legal-lora")
        self.args.mock_args = ["--lora-modules", *(f"{a}={a}" for a in adapters)]
        super().start()

    def revisions(self) -> list[dict[str, Any]]:
        """The two configs pushed in turn (the second: an A/B split of the medical category)."""
        data = yaml.safe_load((self.workdir / "config.yaml").read_text())
        data["model_config"]["llama2-7b"]["loras"].append({"name": "medical-lora-v2"})
        split = copy.deepcopy(data)
        medical = next(c for c in split["categories"] if c["name"] == "medical")
        medical["model_scores"].append(
            {"model": "llama2-7b", "lora_name": "medical-lora-v2", "score": 1.0}
        )
        return [split, data]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2) if ordered else 0.0


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "requests": len(values),
        "p50_ms": round(statistics.median(values), 2) if values else 0.0,
        "p99_ms": _percentile(values, 0.99),
    }


async def run(bench: SwapBench, args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://127.0.0.1:{bench.ingress_port}/v1/chat/completions"
    ready = f"http://127.0.0.1:{bench.ingress_port}/ready"
    bodies = [
        json.dumps(
            {"model": "MoM", "max_tokens": 16, "messages": [{"role": "user", "content": q}]}
        ).encode()
        for q in QUERIES
    ]
    done: list[tuple[float, float]] = []  # (start, latency ms)
    failures: list[str] = []
    in_flight = 0
    pushes: list[dict[str, Any]] = []
    stop_at = time.perf_counter() + args.duration
    nats_url = bench.nats.url if bench.nats is not None else ""
    revisions = bench.revisions()

    async def push(index: int) -> None:
        path = bench.workdir / f"push-{index}.yaml"
        path.write_text(yaml.safe_dump(revisions[index % 2], sort_keys=False))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loraroute", "config", "push", str(path), "--nats", nats_url,
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        stored_at, at_store = time.perf_counter(), in_flight
        text = out.decode()
        if process.returncode != 0 or "pushed as revision" not in text:
            raise RuntimeError(f"push failed: {text}{err.decode()}")
        revision = int(text.rsplit("revision", 1)[1].split()[0])
        async with httpx.AsyncClient() as client:
            while True:
                report = (await client.get(ready, timeout=5.0)).json()
                if set(report["config_revision"].values()) == {revision}:
                    break
                await asyncio.sleep(0.01)
        everywhere = time.perf_counter()
        pushes.append(
            {
                "revision": revision,
                "stored_at_s": stored_at,
                "in_flight_when_stored": at_store,
                "in_flight_when_everywhere": in_flight,
                "everywhere_after_ms": round((everywhere - stored_at) * 1000, 1),
            }
        )

    async def pusher() -> None:
        index = 0
        await asyncio.sleep(args.every)
        while time.perf_counter() + args.every / 2 < stop_at:
            await push(index)
            index += 1
            await asyncio.sleep(args.every)

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal in_flight
            start = time.perf_counter()
            in_flight += 1
            try:
                async with session.post(
                    url, data=bodies[i % len(bodies)], headers={"content-type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"{response.status}")
            except aiohttp.ClientError as error:
                failures.append(repr(error))
            finally:
                in_flight -= 1
            done.append((start, (time.perf_counter() - start) * 1000))

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop_at:
                await one(i)
                i += args.concurrency

        for i in range(args.concurrency * 4):  # warm connections and caches
            await one(i)
        done.clear()
        await asyncio.gather(pusher(), *(worker(w) for w in range(args.concurrency)))

    starts = [p["stored_at_s"] for p in pushes]

    def around(start: float, ms: float) -> bool:
        # Running at some moment of [push, push + window]: stored while it ran, or started
        # while the services were taking the revision.
        end = start + ms / 1000
        return any(start <= s + args.window and end >= s for s in starts)

    near = [ms for start, ms in done if around(start, ms)]
    steady = [ms for start, ms in done if not around(start, ms)]
    return {
        "pushes": [{k: v for k, v in p.items() if k != "stored_at_s"} for p in pushes],
        "around_pushes": _stats(near),
        "steady": _stats(steady),
        "failures": len(failures),
        "failure_samples": failures[:5],
        "requests": len(done),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--every", type=float, default=4.0, help="seconds between pushes")
    parser.add_argument("--concurrency", type=int, default=8, help="clients asking at once")
    parser.add_argument(
        "--window", type=float, default=1.0, help="seconds after a push counted as around it"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench = SwapBench(args, Path(folder))
        try:
            bench.start()
            result = asyncio.run(run(bench, args))
        finally:
            bench.stop()
    write_report(args, result)
    for push in result["pushes"]:
        print(
            f"revision {push['revision']}: in flight when stored {push['in_flight_when_stored']}, "
            f"when every service ran it {push['in_flight_when_everywhere']}, "
            f"everywhere after {push['everywhere_after_ms']} ms"
        )
    print("| requests | count | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name in ("steady", "around_pushes"):
        row = result[name]
        print(f"| {name} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} |")
    print(f"failures: {result['failures']} of {result['requests']} requests")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
