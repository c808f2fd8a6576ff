"""Soak: a whole stack under a moderate fixed request rate for a long time.

Starts a real stack (`realstack.py`: nats-server with JetStream on file storage, mock vLLM,
classifier, dispatcher, jobs worker, ingress) and sends `--rate` requests per second for
`--duration` seconds on a fixed schedule (open loop: a slow answer does not slow the sender).
The requests take turns: chat completions with `model: MoM` (plain and streamed), with an
explicit adapter (passthrough), and the classification API; every `--batch-every` seconds a
Batch API job of `--batch-lines` lines is posted as well, and every job must complete with no
failed line.

Every `--sample` seconds it reads the resident memory of every process. Growth is measured from
the end of the warm-up (`--warmup` seconds, when caches and allocator pools have filled) to the
end of the run. It reports requests by kind and status, every error (a non-2xx answer, a
timeout, a stream without `[DONE]`), p50/p99 latency per kind, the batches, per process the
resident MiB after warm-up, at the end and at its peak, and what JetStream holds after warm-up
and at the end (stored bytes, streams and consumers, by stream). Exit status 1 on any error, an
unfinished batch, a process that exited, or a growth above `--max-growth` per cent.

    python loadtest/soak.py --duration 1800 --rate 20 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import nats
import openai
from bench_batch import batch_file
from bench_pipeline import QUERIES
from bench_vs_litellm import percentile
from realstack import ADAPTERS, RealStack, stop_on_sigterm

KINDS = ("auto", "auto", "stream", "passthrough", "auto", "classify")
FINAL = {"completed", "failed", "expired", "cancelled"}


def request(kind: str, i: int) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of the `i`-th request of `kind`."""
    text = f"{QUERIES[i % len(QUERIES)]} (#{i})"
    if kind == "classify":
        return "/api/v1/classify/intent", {"text": text}
    body: dict[str, Any] = {
        "model": ADAPTERS[i % len(ADAPTERS)] if kind == "passthrough" else "MoM",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": text}],
    }
    if kind == "stream":
        body["stream"] = True
    return "/v1/chat/completions", body


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.latency: defaultdict[str, list[float]] = defaultdict(list)
        self.errors = 0
        #: The first errors in full (kind, request number, what went wrong).
        self.first_errors: list[dict[str, Any]] = []

    def error(self, kind: str, i: int, what: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 20:
            self.first_errors.append({"kind": kind, "i": i, "error": what[:300]})

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, values in sorted(self.latency.items()):
            ordered = sorted(values)
            out[kind] = {
                "ok": len(ordered),
                "p50_ms": round(statistics.median(ordered) * 1000, 2),
                "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
            }
        return out


async def send(
    session: aiohttp.ClientSession, base: str, kind: str, i: int, tally: Tally, timeout_s: float
) -> None:
    path, body = request(kind, i)
    started = time.perf_counter()
    try:
        async with session.post(
            base + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            raw = await resp.read()
            tally.statuses[(kind, resp.status)] += 1
            if resp.status != 200:
                tally.error(kind, i, f"HTTP {resp.status}: {raw.decode(errors='replace')}")
                return
            if kind == "stream" and not raw.rstrip().endswith(b"data: [DONE]"):
                tally.error(kind, i, f"stream without [DONE]: {raw[-200:]!r}")
                return
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.statuses[(kind, 0)] += 1
        tally.error(kind, i, f"{type(exc).__name__}: {exc}")
        return
    tally.latency[kind].append(time.perf_counter() - started)


async def batches(
    base: str, every_s: float, lines: int, stop: asyncio.Event, posted: list[str]
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", timeout=60)
    while not stop.is_set():
        uploaded = await client.files.create(
            file=("soak.jsonl", io.BytesIO(batch_file(lines))), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        posted.append(batch.id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def finish_batches(base: str, ids: list[str], lines: int, timeout_s: float) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", timeout=60)
    deadline = time.monotonic() + timeout_s
    statuses: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    for batch_id in ids:
        batch = await client.batches.retrieve(batch_id)
        while batch.status not in FINAL and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            batch = await client.batches.retrieve(batch_id)
        statuses[batch.status] += 1
        counts = batch.request_counts
        if batch.status != "completed" or counts is None or counts.completed != lines:
            bad.append({"id": batch_id, "status": batch.status, "counts": str(counts)})
    return {"posted": len(ids), "statuses": dict(statuses), "unfinished_or_failed": bad}


async def sample_rss(
    stack: RealStack, every_s: float, stop: asyncio.Event, out: list[dict[str, Any]]
) -> None:
    started = time.monotonic()
    while True:
        out.append({"t": round(time.monotonic() - started, 1), "rss_mib": stack.rss()})
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass


async def jetstream(url: str) -> dict[str, Any]:
    """What the JetStream account holds: stored bytes, streams and consumers, and per stream
    its messages, bytes and consumers. Consumers or streams that pile up would be a leak of
    ours; bytes that grow with the accepted batches are the data kept by design."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        account = await js.account_info()
        streams = {
            s.config.name: {
                "messages": s.state.messages,
                "bytes": s.state.bytes,
                "consumers": s.state.consumer_count,
            }
            for s in await js.streams_info()
        }
    finally:
        await nc.close()
    return {
        "storage_bytes": account.storage,
        "streams": account.streams,
        "consumers": account.consumers,
        "by_stream": streams,
    }


async def after(delay_s: float, url: str) -> dict[str, Any]:
    await asyncio.sleep(delay_s)
    return await jetstream(url)


def growth(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per process: resident MiB at the first sample after warm-up, at the last sample, the
    peak, the growth between the first two in per cent, and the growth over the second half
    of the time after warm-up (a leak keeps growing there; a process still filling its pools
    levels off)."""
    after = [s for s in samples if s["t"] >= warmup_s] or samples[-1:]
    middle = after[len(after) // 2]

    def pct(base: float | None, last: float | None) -> float | None:
        return round((last - base) / base * 100, 2) if base and last else None

    out: dict[str, dict[str, Any]] = {}
    for name in samples[-1]["rss_mib"]:
        base, last = after[0]["rss_mib"].get(name), samples[-1]["rss_mib"].get(name)
        out[name] = {
            "after_warmup_mib": base,
            "end_mib": last,
            "peak_mib": max((s["rss_mib"].get(name) or 0.0) for s in samples),
            "growth_pct": pct(base, last),
            "second_half_growth_pct": pct(middle["rss_mib"].get(name), last),
        }
    return out


async def run(args: argparse.Namespace, stack: RealStack) -> dict[str, Any]:
    base = stack.ingress_urls[0]
    tally = Tally()
    samples: list[dict[str, Any]] = []
    posted: list[str] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(stack, args.sample, stop, samples))
    poster = (
        asyncio.create_task(batches(base, args.batch_every, args.batch_lines, stop, posted))
        if args.batch_every > 0
        else None
    )
    assert stack.nats is not None
    at_warmup = asyncio.create_task(after(args.warmup, stack.nats.url))
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        inflight: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        total = int(args.rate * args.duration)
        for i in range(total):
            delay = started + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                send(session, base, KINDS[i % len(KINDS)], i, tally, args.timeout)
            )
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        await asyncio.gather(*inflight)
        elapsed = time.monotonic() - started
    stop.set()
    if poster is not None:
        await poster
    await sampler
    batch_report = await finish_batches(base, posted, args.batch_lines, args.batch_timeout)
    store = {"after_warmup": await at_warmup, "end": await jetstream(stack.nats.url)}
    return {
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "duration_s": round(elapsed, 1),
        "rate_per_s": args.rate,
        "sent": total,
        "statuses": {f"{k} {s}": n for (k, s), n in sorted(tally.statuses.items())},
        "errors": tally.errors,
        "first_errors": tally.first_errors,
        "latency": tally.summary(),
        "batches": batch_report,
        "rss": growth(samples, args.warmup),
        "jetstream": store,
        "exited": stack.exited(),
        "samples": samples,
    }


def verdict(report: dict[str, Any], max_growth: float) -> list[str]:
    """What failed, in words; empty when the soak passed."""
    failed = []
    if report["errors"]:
        failed.append(f"{report['errors']} request errors")
    if report["batches"]["unfinished_or_failed"]:
        failed.append(f"batches not completed: {report['batches']['unfinished_or_failed']}")
    if report["exited"]:
        failed.append(f"processes exited: {report['exited']}")
    for name, row in report["rss"].items():
        if row["growth_pct"] is not None and row["growth_pct"] > max_growth:
            failed.append(f"{name} resident memory grew {row['growth_pct']} %")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before growth counts")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--batch-every", type=float, default=60.0, help="0: no batch jobs")
    parser.add_argument("--batch-lines", type=int, default=50)
    parser.add_argument("--batch-timeout", type=float, default=120.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--max-growth", type=float, default=5.0, help="per cent")
    parser.add_argument("--json", type=Path, help="write the whole report (with every sample)")
    args = parser.parse_args()
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="loraroute-soak-") as folder:
        stack = RealStack(Path(folder), jobs=1)
        try:
            stack.start()
            report = asyncio.run(run(args, stack))
        finally:
            stack.stop()
    failed = verdict(report, args.max_growth)
    report["failed"] = failed
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    shown = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(shown, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
