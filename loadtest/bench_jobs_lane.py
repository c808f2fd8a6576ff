"""Interactive latency with and without batch-job lines saturating the classifier's job lane.

Starts the pipeline the way `bench_pipeline.py` does (its own nats-server, mock vLLM with no
latency model, classifier, dispatcher and ingress on 127.0.0.1 free ports), then for each
repetition runs two phases of `--duration` seconds:

- `quiet`  interactive requests only: `model: MoM` chat completions to the ingress, open loop at
           `--rate` per second (a request starts on schedule whether or not the last has ended);
- `jobs`   the same, while a feeder process keeps `--job-concurrency` `RouteChat` requests in
           flight on the classifier's job lane (`<prefix>.classify.jobs`), each a NATS request on
           its own inbox as a jobs worker sends it. A line refused as overloaded is retried after
           `--job-retry-ms`, as a jobs worker would.

It reports the interactive p50/p99 of each phase and the job lines answered per second. The
feeder runs in its own process so that its CPU is not the interactive load generator's. Loopback
only, bounded in time. Not a test: it prints a table and writes JSON for docs/benchmarks.md.

    nice python loadtest/bench_jobs_lane.py --duration 10 --rate 20 --job-concurrency 128
    nice python loadtest/bench_jobs_lane.py ... --max-job-batch-size 32   # another job batch cap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_pipeline import QUERIES, Bench, write_report  # noqa: E402

from schemas.wire import ReplyError, ReplyResponse, RouteChat, decode_reply, encoder  # noqa: E402
from services.common import bus  # noqa: E402
from services.common.subjects import Subjects  # noqa: E402


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {}
    ordered = sorted(latencies_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max_ms": round(ordered[-1], 2),
    }


# ---------------------------------------------------------------------- the job feeder


async def _feed(url: str, prefix: str, concurrency: int, retry_s: float, out: Path) -> None:
    """Keep `concurrency` job-lane requests in flight until SIGTERM; write the counts to `out`."""
    nc = await bus.connect(url, name="bench-job-feeder")
    subject = Subjects(prefix).classify_jobs
    payloads = [
        encoder.encode(
            RouteChat(
                body=msgspec.Raw(
                    json.dumps(
                        {
                            "model": "MoM",
                            "max_tokens": 16,
                            "messages": [{"role": "user", "content": q}],
                        }
                    ).encode()
                )
            )
        )
        for q in QUERIES
    ]
    counts = {"answered": 0, "overloaded": 0, "errors": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.perf_counter()

    async def line(w: int) -> None:
        i = w
        while not stop.is_set():
            meta = bus.RequestMeta(request_id=uuid.uuid4().hex, deadline_ms=bus.deadline_after(60))
            try:
                msg = await nc.request(
                    subject, payloads[i % len(payloads)], timeout=60, headers=meta.to_headers()
                )
                reply = decode_reply(msg.data)
            except Exception:
                counts["errors"] += 1
                await asyncio.sleep(retry_s)
                continue
            i += concurrency
            if isinstance(reply, ReplyResponse) and reply.status == 200:
                counts["answered"] += 1
            elif isinstance(reply, ReplyError) and reply.status == 429:
                counts["overloaded"] += 1
                await asyncio.sleep(retry_s)
            else:
                counts["errors"] += 1

    tasks = [asyncio.create_task(line(w)) for w in range(concurrency)]
    await stop.wait()
    seconds = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await bus.close(nc)
    out.write_text(json.dumps({**counts, "seconds": seconds}))


# ---------------------------------------------------------------------- interactive load


async def _interactive(port: int, rate: float, duration: float, warmup: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    bodies = [
        json.dumps(
            {"model": "MoM", "max_tokens": 16, "messages": [{"role": "user", "content": q}]}
        ).encode()
        for q in QUERIES
    ]
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:

        async def one(i: int, record: bool) -> None:
            nonlocal errors
            start = time.perf_counter()
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                await r.read()
                ok = r.status == 200
            if record:
                if ok:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

        for i in range(warmup):
            await one(i, record=False)
        tasks = []
        started = time.perf_counter()
        for i in range(int(rate * duration)):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, record=True)))
        await asyncio.gather(*tasks)
    return {"requests": len(latencies) + errors, "errors": errors, **_percentiles(latencies)}


class LanesBench(Bench):
    """`Bench` with the job lane's batch cap of `--max-job-batch-size` (when given)."""

    def _config(self) -> Path:
        path = super()._config()
        if self.args.max_job_batch_size:
            data = yaml.safe_load(path.read_text())
            data["batching"]["max_job_batch_size"] = self.args.max_job_batch_size
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


async def _phase(bench: Bench, args: argparse.Namespace, name: str, url: str) -> dict[str, Any]:
    feeder: subprocess.Popen[bytes] | None = None
    counts_path = bench.workdir / f"feeder-{uuid.uuid4().hex[:6]}.json"
    if name == "jobs":
        feeder = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--feed",
                url,
                "--prefix",
                args.prefix,
                "--job-concurrency",
                str(args.job_concurrency),
                "--job-retry-ms",
                str(args.job_retry_ms),
                "--feed-out",
                str(counts_path),
            ],
            cwd=REPO,
        )
        await asyncio.sleep(args.job_ramp)  # let the job lane fill before measuring
    try:
        result = await _interactive(bench.ingress_port, args.rate, args.duration, args.warmup)
    finally:
        if feeder is not None:
            feeder.send_signal(signal.SIGTERM)
            feeder.wait(30)
    out: dict[str, Any] = {"phase": name, **result}
    if feeder is not None and counts_path.is_file():
        counts = json.loads(counts_path.read_text())
        out["job_lines_per_s"] = round(counts["answered"] / counts["seconds"], 1)
        out["job_counts"] = counts
    return out


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="loraroute-bench-") as folder:
        bench = LanesBench(args, Path(folder))
        results: list[dict[str, Any]] = []
        try:
            bench.start()
            assert bench.nats is not None
            url = bench.nats.url
            args.prefix = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["nats"][
                "subject_prefix"
            ]
            for rep in range(args.reps):
                for name in ("quiet", "jobs"):
                    summary = {"rep": rep, **await _phase(bench, args, name, url)}
                    results.append(summary)
                    print(json.dumps(summary), file=sys.stderr, flush=True)
        finally:
            bench.stop()
    write_report(args, {"results": results})
    print("| phase | interactive req | p50 ms | p99 ms | max ms | errors | job lines/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['phase']} | {r['requests']} | {r.get('p50_ms', '')} | {r.get('p99_ms', '')} "
            f"| {r.get('max_ms', '')} | {r['errors']} | {r.get('job_lines_per_s', '')} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="interactive requests per s")
    parser.add_argument("--job-concurrency", type=int, default=128, help="job lines in flight")
    parser.add_argument("--job-retry-ms", type=float, default=50.0, help="wait after a refusal")
    parser.add_argument("--job-ramp", type=float, default=2.0, help="s of jobs before measuring")
    parser.add_argument(
        "--max-job-batch-size", type=int, help="batching.max_job_batch_size (default: config's)"
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", help="write the JSON report here")
    # The feeder process's own arguments (set by the benchmark, not by hand).
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="loraroute", help=argparse.SUPPRESS)
    parser.add_argument("--feed-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        asyncio.run(
            _feed(
                args.feed,
                args.prefix,
                args.job_concurrency,
                args.job_retry_ms / 1000,
                Path(args.feed_out),
            )
        )
        return 0
    if args.job_concurrency > 1024 or args.duration > 60 or args.rate > 200:
        parser.error("bounded load only: job concurrency <= 1024, duration <= 60 s, rate <= 200")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
