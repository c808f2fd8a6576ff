"""The fault table: steady chat load through a real stack while one thing at a time breaks.

Starts nats-server, the mock vLLM, 2 classifiers, 2 dispatchers and 2 ingresses
(`realstack.py`; `ingress.request_timeout_s` is `--deadline`), then for each fault runs
`--concurrency` clients sending chat requests (`model: MoM`, every fourth one streamed),
spread over both ingresses, for `--before` seconds, injects the fault, keeps the load for
`--during` seconds, heals (restarts the killed process, clears the vLLM fault) and keeps the
load `--after` seconds more. Faults:

- `kill -9 classifier`, `kill -9 dispatcher`, `kill -9 ingress` (one of two; the load
  generator keeps sending to both, as a client without a balancer would)
- `NATS restart` (kill -9 of nats-server, down for 1 s, started again on the same port)
- `vLLM 500`, `vLLM hang`, `vLLM drop` (the mock's fault injection, `POST /mock/faults`, on
  every request during the fault; `drop` cuts the connection after the first chunk)

Every request ends as exactly one of: `ok` (200, a stream ending in `[DONE]`), `error` (an
explicit error: an error status, or a stream ending in an error event), `refused` (no
connection: nothing was sent), `broken` (the connection closed without an answer) or `lost`
(no answer within `--bound` seconds, which is longer than the deadline). Recovery is the time
from the fault (vLLM faults: from the heal) to the first request after which every request
was answered `ok`.

Prints a markdown table and writes JSON. Not a test: the figures go to docs/reliability.md.

    python loadtest/faults.py --json faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from realstack import RealStack, stop_on_sigterm

QUESTIONS = [
    "What causes high blood pressure?",
    "How do I reverse a linked list in Python?",
    "What are the elements of a valid contract?",
    "What is the capital of France?",
]


@dataclass
class Result:
    sent: float
    done: float
    kind: str  # ok | error | refused | broken | lost
    status: int = 0


@dataclass
class Phase:
    fault: str
    results: list[Result] = field(default_factory=list)
    fault_at: float = 0.0
    healed_at: float = 0.0
    recovery_from: str = "fault"
    exited: dict[str, int | None] = field(default_factory=dict)
    notes: str = ""

    def summary(self) -> dict[str, Any]:
        kinds = collections.Counter(r.kind for r in self.results)
        # An error event inside a stream that had started (status 200) is shown as `stream`.
        statuses = collections.Counter(
            str(r.status) if r.status != 200 else "stream"
            for r in self.results
            if r.kind == "error"
        )
        latencies = [r.done - r.sent for r in self.results if r.kind in ("ok", "error")]
        origin = self.fault_at if self.recovery_from == "fault" else self.healed_at
        return {
            "fault": self.fault,
            "tried": len(self.results),
            "ok": kinds["ok"],
            "error": kinds["error"],
            "error_statuses": dict(sorted(statuses.items())),
            "refused": kinds["refused"],
            "broken": kinds["broken"],
            "lost": kinds["lost"],
            "recovery_s": _recovery(self.results, origin),
            "recovery_from": self.recovery_from,
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "max_s": round(max(latencies), 2) if latencies else None,
            "exited_unexpectedly": self.exited,
            "notes": self.notes,
        }


def _recovery(results: list[Result], origin: float) -> float | None:
    """Seconds from `origin` to the first request (by send time) after which every request was
    `ok`; 0 when nothing failed after `origin`; None when the phase ended still failing."""
    ordered = sorted(results, key=lambda r: r.sent)
    last_bad = None
    for result in ordered:
        if result.kind != "ok" and result.done >= origin:
            last_bad = result
    if last_bad is None:
        return 0.0
    after = [r for r in ordered if r.sent > last_bad.sent]
    if not after:
        return None
    return round(max(0.0, after[0].sent - origin), 2)


async def _one(
    session: aiohttp.ClientSession, url: str, i: int, bound_s: float, started: float
) -> Result:
    stream = i % 4 == 3
    body = {
        "model": "MoM",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}],
        "stream": stream,
    }
    sent = time.monotonic() - started
    kind, status = "ok", 0
    try:
        async with asyncio.timeout(bound_s):
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                status = response.status
                data = await response.read()
                if status != 200:
                    kind = "error"
                elif stream and not data.rstrip().endswith(b"data: [DONE]"):
                    kind = "broken"
                elif stream and b'"error"' in data:
                    kind = "error"
    except TimeoutError:
        kind = "lost"
    except aiohttp.ClientConnectorError:
        kind = "refused"
    except (aiohttp.ClientError, OSError):
        kind = "broken"
    return Result(sent, time.monotonic() - started, kind, status)


async def _load(
    urls: list[str],
    concurrency: int,
    bound_s: float,
    started: float,
    stop: asyncio.Event,
    results: list[Result],
) -> None:
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(w: int) -> None:
            while not stop.is_set():
                i = next(counter)
                results.append(await _one(session, urls[i % len(urls)], i, bound_s, started))

        await asyncio.gather(*(worker(w) for w in range(concurrency)))


def _mock_faults(stack: RealStack, specs: list[str]) -> None:
    httpx.post(f"{stack.mock_url}/mock/faults", json={"faults": specs}, timeout=5.0)


async def _wait_ok(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)


@dataclass
class Fault:
    name: str
    inject: Callable[[RealStack], Awaitable[str]]  # returns the name of what it broke
    heal: Callable[[RealStack, str], Awaitable[None]]
    recovery_from: str = "fault"
    notes: str = ""


async def _kill(stack: RealStack, name: str) -> str:
    await asyncio.to_thread(stack.by_name(name).kill)
    return name


async def _restart(stack: RealStack, name: str) -> None:
    proc = stack.by_name(name)
    if not proc.alive():
        proc.start()


async def _nats_down(stack: RealStack) -> str:
    await asyncio.to_thread(stack.restart_nats, 1.0)
    return "nats-server"


async def _nothing(stack: RealStack, name: str) -> None:
    return None


def _vllm(spec: str) -> Callable[[RealStack], Awaitable[str]]:
    async def inject(stack: RealStack) -> str:
        await asyncio.to_thread(_mock_faults, stack, [spec])
        return "mock-vllm"

    return inject


async def _clear_vllm(stack: RealStack, name: str) -> None:
    await asyncio.to_thread(_mock_faults, stack, [])


FAULTS = [
    Fault("kill -9 classifier", lambda s: _kill(s, "classifier-1"), _restart),
    Fault("kill -9 dispatcher", lambda s: _kill(s, "dispatcher-1"), _restart),
    Fault("kill -9 ingress", lambda s: _kill(s, "ingress-2"), _restart),
    Fault("NATS restart", _nats_down, _nothing),
    Fault("vLLM 500", _vllm("500@*"), _clear_vllm, "heal"),
    Fault("vLLM hang", _vllm("hang@*"), _clear_vllm, "heal"),
    Fault("vLLM drop", _vllm("drop@*,after=1"), _clear_vllm, "heal"),
]


async def run_fault(stack: RealStack, fault: Fault, args: argparse.Namespace) -> Phase:
    phase = Phase(fault.name, recovery_from=fault.recovery_from, notes=fault.notes)
    started = time.monotonic()
    stop = asyncio.Event()
    load = asyncio.create_task(
        _load(stack.ingress_urls, args.concurrency, args.bound, started, stop, phase.results)
    )
    await asyncio.sleep(args.before)
    phase.fault_at = time.monotonic() - started
    broken = await fault.inject(stack)
    await asyncio.sleep(args.during)
    phase.healed_at = time.monotonic() - started
    await fault.heal(stack, broken)
    await asyncio.sleep(args.after)
    stop.set()
    await load
    phase.exited = {name: status for name, status in stack.exited().items() if name != broken}
    # Back to a whole stack before the next fault.
    for proc in stack.procs:
        if not proc.alive():
            proc.start()
    for url in stack.ingress_urls:
        await _wait_ok(url, 120.0)
    return phase


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| fault | tried | ok | explicit error | refused | broken | lost | recovery s | "
        "p50 / max s |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        errors = ", ".join(f"{n}x{s}" for s, n in r["error_statuses"].items())
        recovery = "never" if r["recovery_s"] is None else f"{r['recovery_s']}"
        if r["recovery_from"] == "heal":
            recovery += " (after heal)"
        lines.append(
            f"| {r['fault']} | {r['tried']} | {r['ok']} | {r['error']}"
            f"{f' ({errors})' if errors else ''} | {r['refused']} | {r['broken']} | "
            f"{r['lost']} | {recovery} | {r['p50_s']} / {r['max_s']} |"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace, stack: RealStack) -> int:
    chosen = [f for f in FAULTS if not args.only or any(o in f.name for o in args.only)]
    phases: list[Phase] = []
    await asyncio.to_thread(stack.start)
    rss_before = stack.rss()
    for fault in chosen:
        print(f"-- {fault.name}", flush=True)
        phase = await run_fault(stack, fault, args)
        phases.append(phase)
        print(json.dumps(phase.summary()), flush=True)
    rss_after = stack.rss()
    rows = [p.summary() for p in phases]
    report = {
        "machine": platform.machine(),
        "command": " ".join(["python", *sys.argv]),
        "concurrency": args.concurrency,
        "deadline_s": args.deadline,
        "bound_s": args.bound,
        "windows_s": {"before": args.before, "during": args.during, "after": args.after},
        "faults": rows,
        "rss_mib_before": rss_before,
        "rss_mib_after": rss_after,
        "logs": str(stack.workdir),
    }
    table = _table(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({**report, "table": table}, indent=2) + "\n")
    return 1 if any(r["lost"] for r in rows) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--during", type=float, default=8.0)
    parser.add_argument("--after", type=float, default=8.0)
    parser.add_argument("--deadline", type=float, default=10.0, help="ingress.request_timeout_s")
    parser.add_argument("--bound", type=float, default=20.0, help="client gives up after (s)")
    parser.add_argument("--only", nargs="*", help="run the faults whose name contains one of these")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loraroute-faults-"))
    stack = RealStack(
        workdir,
        classifiers=2,
        dispatchers=2,
        ingresses=2,
        changes={"ingress": {"request_timeout_s": args.deadline}},
    )
    try:
        return asyncio.run(_main(args, stack))
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
