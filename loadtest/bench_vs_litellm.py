"""Side by side in one run: the mock vLLM alone, loraroute, and LiteLLM's proxy before the same mock.

Starts the pipeline of bench_pipeline.py (nats-server, mock vLLM with no latency model and 16
output tokens, classifier, dispatcher, ingress, on 127.0.0.1 free ports) and LiteLLM's proxy
(installed from PyPI into a virtual environment of its own, `--litellm-venv`) with 1 and 2
workers, configured for the same mock (`hosted_vllm/<adapter>`), and sends the same 8 rotating
chat bodies (a 732-character system message and a short question, ~900 bytes) to each target:

- `direct`       client -> mock vLLM (`model: technical-lora`)
- `passthrough`  client -> loraroute (explicit adapter: no forward pass) -> mock vLLM
- `auto`         client -> loraroute (`model: MoM`: the classifier's forward pass runs) -> mock
- `litellm-1`    client -> LiteLLM proxy, 1 worker (`model: technical-lora`, a master key) -> mock
- `litellm-2`    the same with 2 workers

Each repetition measures every target in turn (reps interleaved across targets): a closed loop
at 1 connection (`--requests` sequential requests: p50/p99, and p50/p99 added over `direct` in
the same repetition), a closed loop at `--concurrency` connections for `--duration` seconds
(throughput at saturation), and an open loop at each of `--rates` (requests per second, Poisson
or fixed-interval arrivals, `--point-duration` seconds per point, latency counted from each
request's scheduled arrival, timeouts and errors counted; a target's higher rates are skipped
once its p99 passed `--stop-p99-ms` or more than 1 % of its requests failed). CPU time per
request of every process comes from /proc/<pid>/stat before and after each phase, summed over
each process's tree (LiteLLM's workers are children of its master). The load client is one
aiohttp process on the same machine. Prints Markdown tables of medians, the ratios within the
run and the targets; `--json` writes everything, `--plots DIR` draws p50 and p99 latency
against offered load (matplotlib, the `bench` extra).

    python loadtest/bench_vs_litellm.py --reps 3 --json vs-litellm.json --plots docs/img/vs-litellm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import Bench, chat_bodies, cpu_seconds, free_port, write_report

LITELLM_VERSION = "1.108.7"
#: What goes into LiteLLM's environment besides the proxy itself (docs/benchmarks.md).
LITELLM_PACKAGES = (f"litellm[proxy]=={LITELLM_VERSION}", "prisma", "opentelemetry-sdk")
TARGETS = ("direct", "passthrough", "auto", "litellm-1", "litellm-2")
ADAPTER = "technical-lora"
#: loraroute's own processes; in `passthrough` their CPU per request is the plumbing.
PLUMBING = ("ingress", "classifier", "dispatcher", "nats-server")
SYSTEM = (
    "You are the assistant of a help desk that answers questions from the public about "
    "software, health, law and everyday matters. Answer in plain language that a reader "
    "without special training can follow and start with the direct answer before any "
    "explanation. When a question depends on facts you do not have, such as the reader's "
    "country or age, say which facts matter and how the answer changes with them instead of "
    "guessing. Do not invent citations, laws or product features; when you are unsure, say "
    "so and suggest where the reader can check. For health and legal questions, give "
    "general information, name the warning signs or deadlines that call for a professional, "
    "and never present the answer as a diagnosis or as legal advice."
)
QUICK = {
    "reps": 1,
    "requests": 40,
    "concurrency": 16,
    "duration": 1.5,
    "rates": [50.0, 200.0],
    "point_duration": 1.0,
    "warmup": 5,
}


def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "loraroute" / f"litellm-{LITELLM_VERSION}"


def ensure_litellm(venv: Path) -> Path:
    """The `litellm` command of `venv`, created and installed from PyPI when it is not there."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    check = (
        "import importlib.metadata as m, sys; "
        f"sys.exit(m.version('litellm') != {LITELLM_VERSION!r} or "
        "not all(m.version(p) for p in ('prisma', 'opentelemetry-sdk')))"
    )
    if subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
        print(f"installing {' '.join(LITELLM_PACKAGES)} into {venv}", file=sys.stderr, flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *LITELLM_PACKAGES], check=True)
    return venv / "bin" / "litellm"


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/<tid>/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live process in the tree of `pid`."""
    out = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):  # exited while we walked
            out[p] = cpu_seconds(p)
    return out


@dataclass
class Sample:
    """The outcome of one phase's requests, from the client's side."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0
    seconds: float = 0.0


@dataclass
class Endpoint:
    """A target's URL, encoded bodies and headers; as a context, one client session with at most
    `connections` connections."""

    url: str
    bodies: list[bytes]
    headers: dict[str, str]
    connections: int
    session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Endpoint:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def send(self, sample: Sample, i: int, scheduled: float, deadline: float) -> None:
        """POST body `i`; its latency counts from `scheduled` (event loop time)."""
        assert self.session is not None
        loop = asyncio.get_running_loop()
        body = self.bodies[i % len(self.bodies)]
        try:
            async with (
                asyncio.timeout_at(deadline),
                self.session.post(self.url, data=body, headers=self.headers) as response,
            ):
                await response.read()
                ok = response.status == 200
        except TimeoutError:
            sample.timeouts += 1
            return
        except (aiohttp.ClientError, OSError):
            sample.errors += 1
            return
        if ok:
            sample.latencies_ms.append((loop.time() - scheduled) * 1000)
        else:
            sample.errors += 1


async def closed_loop(
    endpoint: Endpoint,
    *,
    concurrency: int,
    requests: int | None = None,
    duration: float | None = None,
    timeout: float,
) -> Sample:
    """`concurrency` connections, each sending its next request when its last one is answered,
    until `requests` were sent or `duration` seconds passed."""
    sample = Sample()
    loop = asyncio.get_running_loop()
    issued = 0
    started = loop.time()
    stop_at = started + duration if duration is not None else math.inf

    async def connection() -> None:
        nonlocal issued
        while loop.time() < stop_at and (requests is None or issued < requests):
            issued += 1
            now = loop.time()
            await endpoint.send(sample, issued, now, now + timeout)

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    sample.seconds = loop.time() - started
    return sample


def arrival_times(rate: float, duration: float, arrivals: str, rng: random.Random) -> list[float]:
    """Offsets in seconds of the requests of one open-loop point."""
    if arrivals == "fixed":
        return [i / rate for i in range(int(rate * duration))]
    times, t = [], rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def open_loop(endpoint: Endpoint, *, times: list[float], timeout: float) -> Sample:
    """One request at each of `times` whether or not earlier ones were answered (when all the
    endpoint's connections are busy, a request waits for one, and that wait counts)."""
    sample = Sample()
    loop = asyncio.get_running_loop()
    tasks = []
    started = loop.time()
    for i, offset in enumerate(times):
        scheduled = started + offset
        if scheduled > loop.time():
            await asyncio.sleep(scheduled - loop.time())
        tasks.append(asyncio.create_task(endpoint.send(sample, i, scheduled, scheduled + timeout)))
    await asyncio.gather(*tasks)
    sample.seconds = loop.time() - started
    return sample


class SideBySide(Bench):
    """bench_pipeline's processes plus LiteLLM's proxy, 1 and 2 workers, before the same mock."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        self.master_key = "sk-" + secrets.token_hex(32)
        self.litellm_ports: dict[str, int] = {}

    def start_litellm(self, executable: Path, names: list[str]) -> None:
        config = {
            "model_list": [
                {
                    "model_name": ADAPTER,
                    "litellm_params": {
                        "model": f"hosted_vllm/{ADAPTER}",
                        "api_base": f"http://127.0.0.1:{self.mock_port}/v1",
                    },
                }
            ],
            "general_settings": {
                "master_key": "os.environ/LITELLM_MASTER_KEY",
                "disable_spend_logs": True,
                "disable_error_logs": True,
            },
        }
        path = self.workdir / "litellm.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
            "LITELLM_MASTER_KEY": self.master_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no cost map from the internet at start
            "LITELLM_TELEMETRY_DISABLED": "true",
            "DISABLE_ADMIN_UI": "True",
        }
        # One after the other: on two cores a worker that starts too slowly is restarted by
        # uvicorn's supervisor.
        for name in names:
            port = self.litellm_ports[name] = free_port()
            workers = name.rsplit("-", 1)[1]
            command = [str(executable), "--config", str(path), "--host", "127.0.0.1"]
            command += ["--port", str(port), "--num_workers", workers]
            self.spawn(name, command, env, cwd=self.workdir)
            started = time.monotonic()
            self.wait(f"http://127.0.0.1:{port}/health/readiness", timeout_s=300.0)
            print(f"{name}: ready after {time.monotonic() - started:.1f} s", file=sys.stderr)

    def endpoint(self, target: str, connections: int) -> Endpoint:
        headers = {"content-type": "application/json"}
        if target == "direct":
            url = f"http://127.0.0.1:{self.mock_port}/v1/chat/completions"
        elif target in ("passthrough", "auto"):
            url = f"http://127.0.0.1:{self.ingress_port}/v1/chat/completions"
        else:
            url = f"http://127.0.0.1:{self.litellm_ports[target]}/v1/chat/completions"
            headers["authorization"] = f"Bearer {self.master_key}"
        model = "MoM" if target == "auto" else ADAPTER
        return Endpoint(url, chat_bodies(model, system=SYSTEM), headers, connections)

    def cpu(self) -> dict[str, dict[int, float]]:
        """Per named process, the CPU seconds of each process in its tree."""
        return {name: tree_cpu(pid) for name, pid in self.pids().items()}

    def stop(self) -> None:
        workers = {
            pid: _start_time(pid)
            for name, root in self.pids().items()
            if name in self.litellm_ports
            for pid in process_tree(root)[1:]
        }
        super().stop()
        for pid, started in workers.items():  # any a stopped master left behind, if still theirs
            if started is not None and _start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)


def cpu_ms_per_request(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], requests: int
) -> tuple[dict[str, float], list[str]]:
    """CPU ms per request of each named process tree, and the trees whose processes changed."""
    out, changed = {}, []
    for name, now in after.items():
        then = before.get(name, {})
        if set(now) != set(then):
            changed.append(name)
        spent = sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())
        out[name] = round(spent * 1000 / max(requests, 1), 4)
    return out, changed


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Runner:
    def __init__(self, args: argparse.Namespace, bench: SideBySide) -> None:
        self.args = args
        self.bench = bench
        self.rng = random.Random(args.seed)
        self.results: list[dict[str, Any]] = []

    async def settle(self, limit_s: float = 10.0) -> None:
        """Until our processes are idle (under a tenth of a core), e.g. after an overload."""
        deadline = time.monotonic() + limit_s
        last = self.bench.cpu()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            now = self.bench.cpu()
            busy = sum(
                cpu - last.get(name, {}).get(pid, cpu)
                for name, tree in now.items()
                for pid, cpu in tree.items()
            )
            last = now
            if busy < 0.025:
                return

    async def phase(
        self,
        rep: int,
        target: str,
        mode: str,
        connections: int,
        run: Callable[[Endpoint], Awaitable[Sample]],
        **extra: Any,
    ) -> dict[str, Any]:
        """Settle, warm up (on the connections the phase will use), measure `run`."""
        await self.settle()
        async with self.bench.endpoint(target, connections) as endpoint:
            warm = min(connections, self.args.concurrency)
            await closed_loop(
                endpoint,
                concurrency=warm,
                requests=max(self.args.warmup, warm),
                timeout=self.args.timeout,
            )
            before = self.bench.cpu()
            client_before = time.process_time()
            sample = await run(endpoint)
            client = (time.process_time() - client_before) * 1000
            after = self.bench.cpu()
        ok = len(sample.latencies_ms)
        cpu, changed = cpu_ms_per_request(before, after, ok)
        cpu["load generator"] = round(client / max(ok, 1), 4)
        result: dict[str, Any] = {
            "rep": rep,
            "target": target,
            "mode": mode,
            **extra,
            "requests": ok,
            "errors": sample.errors,
            "timeouts": sample.timeouts,
            "seconds": round(sample.seconds, 3),
            "req_per_s": round(ok / sample.seconds, 1) if sample.seconds else 0.0,
            "cpu_ms_per_request": cpu,
        }
        if changed:
            result["process_trees_changed"] = changed  # e.g. a LiteLLM worker restarted
        if sample.latencies_ms:
            ordered = sorted(sample.latencies_ms)
            result["p50_ms"] = round(statistics.median(ordered), 3)
            result["p99_ms"] = round(percentile(ordered, 0.99), 3)
        self.results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        return result

    async def rep(self, rep: int) -> None:
        args = self.args
        for mode, connections in (("latency", 1), ("saturation", args.concurrency)):
            run = functools.partial(
                closed_loop,
                concurrency=connections,
                requests=args.requests if mode == "latency" else None,
                duration=args.duration if mode == "saturation" else None,
                timeout=args.timeout,
            )
            for target in args.targets:
                await self.phase(rep, target, mode, connections, run, concurrency=connections)
        stopped: set[str] = set()
        for rate in args.rates:
            for target in args.targets:
                if target in stopped:
                    continue
                times = arrival_times(rate, args.point_duration, args.arrivals, self.rng)
                result = await self.phase(
                    rep,
                    target,
                    "open",
                    args.max_in_flight,
                    functools.partial(open_loop, times=times, timeout=args.timeout),
                    rate=rate,
                    arrivals=len(times),
                )
                failed = result["errors"] + result["timeouts"]
                if failed > 0.01 * len(times) or result.get("p99_ms", math.inf) > args.stop_p99_ms:
                    stopped.add(target)


# ---------------------------------------------------------------------- summary


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _by_rep(results: list[dict[str, Any]], mode: str, target: str) -> dict[int, dict[str, Any]]:
    return {r["rep"]: r for r in results if r["mode"] == mode and r["target"] == target}


def plumbing_ms(result: dict[str, Any]) -> float:
    return sum(float(result["cpu_ms_per_request"].get(name, 0.0)) for name in PLUMBING)


def summarize(results: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    """Medians over the repetitions; `added_*` are per repetition, target minus `direct`."""
    direct = _by_rep(results, "latency", "direct")
    closed = {}
    for target in targets:
        latency = _by_rep(results, "latency", target)
        saturation = _by_rep(results, "saturation", target)
        processes = {n for r in saturation.values() for n in r["cpu_ms_per_request"]}
        entry: dict[str, Any] = {
            "reps": len(saturation),
            "p50_ms": _median([r["p50_ms"] for r in latency.values() if "p50_ms" in r]),
            "p99_ms": _median([r["p99_ms"] for r in latency.values() if "p99_ms" in r]),
            "req_per_s": _median([r["req_per_s"] for r in saturation.values()]),
            "saturation_p50_ms": _median([r.get("p50_ms", 0.0) for r in saturation.values()]),
            "saturation_p99_ms": _median([r.get("p99_ms", 0.0) for r in saturation.values()]),
            "errors": sum(
                r["errors"] + r["timeouts"] for r in [*latency.values(), *saturation.values()]
            ),
            "cpu_ms_per_request": {
                n: _median([r["cpu_ms_per_request"][n] for r in saturation.values()])
                for n in sorted(processes)
            },
        }
        for q in ("p50", "p99"):
            entry[f"added_{q}_ms"] = _median(
                [
                    r[f"{q}_ms"] - direct[rep][f"{q}_ms"]
                    for rep, r in latency.items()
                    if rep in direct and f"{q}_ms" in r and f"{q}_ms" in direct[rep]
                ]
            )
        closed[target] = entry
    open_loop: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        points = [r for r in results if r["mode"] == "open" and r["target"] == target]
        rows = []
        for rate in sorted({r["rate"] for r in points}):
            at = [r for r in points if r["rate"] == rate]
            rows.append(
                {
                    "rate": rate,
                    "reps": len(at),
                    "req_per_s": _median([r["req_per_s"] for r in at]),
                    "p50_ms": _median([r["p50_ms"] for r in at if "p50_ms" in r]),
                    "p99_ms": _median([r["p99_ms"] for r in at if "p99_ms" in r]),
                    "arrivals": sum(r["arrivals"] for r in at),
                    "errors": sum(r["errors"] for r in at),
                    "timeouts": sum(r["timeouts"] for r in at),
                }
            )
        open_loop[target] = rows
    return {"closed": closed, "open": open_loop}


def ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Ratios within each repetition, then their median over the repetitions."""
    latency = {t: _by_rep(results, "latency", t) for t in TARGETS}
    saturation = {t: _by_rep(results, "saturation", t) for t in TARGETS}

    def added(rep: int, target: str) -> float | None:
        r, d = latency[target].get(rep), latency["direct"].get(rep)
        return r["p50_ms"] - d["p50_ms"] if r and d and "p50_ms" in r and "p50_ms" in d else None

    def per_rep(f: Callable[[int], float | None]) -> float | None:
        values = [v for rep in sorted({r["rep"] for r in results}) if (v := f(rep)) is not None]
        return _median(values)

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: dict[str, float | None] = {}
    for peer in ("litellm-1", "litellm-2"):

        def throughput(rep: int, peer: str = peer) -> float | None:
            a, b = saturation["auto"].get(rep), saturation[peer].get(rep)
            return over(a["req_per_s"], b["req_per_s"]) if a and b else None

        def cpu(rep: int, peer: str = peer) -> float | None:
            a, b = saturation["auto"].get(rep), saturation[peer].get(rep)
            return over(plumbing_ms(a), b["cpu_ms_per_request"][peer]) if a and b else None

        out[f"auto_over_{peer}_req_per_s"] = per_rep(throughput)

        def added_p50(rep: int, peer: str = peer) -> float | None:
            return over(added(rep, "auto"), added(rep, peer))

        out[f"auto_added_p50_over_{peer}_added_p50"] = per_rep(added_p50)
        out[f"auto_cpu_over_{peer}_cpu_per_request"] = per_rep(cpu)

    def lowest_peer(rep: int) -> float | None:
        peers = [a for p in ("litellm-1", "litellm-2") if (a := added(rep, p)) is not None]
        return over(added(rep, "auto"), min(peers)) if peers else None

    out["auto_added_p50_over_lowest_litellm_added_p50"] = per_rep(lowest_peer)
    out["plumbing_cpu_ms_per_request"] = per_rep(
        lambda rep: plumbing_ms(r) if (r := saturation["passthrough"].get(rep)) else None
    )
    out["passthrough_over_direct_req_per_s"] = per_rep(
        lambda rep: (
            over(r["req_per_s"], d["req_per_s"])
            if (r := saturation["passthrough"].get(rep)) and (d := saturation["direct"].get(rep))
            else None
        )
    )
    return out


def goals(r: dict[str, float | None]) -> list[dict[str, Any]]:
    """The targets loraroute is measured against, met or not, with their figures."""

    def goal(
        name: str, value: float | None, limit: float, at_least: bool, shown: str
    ) -> dict[str, Any]:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        return {"goal": name, "value": value, "limit": limit, "met": met, "shown": shown}

    t = r["auto_over_litellm-2_req_per_s"]
    a = r["auto_added_p50_over_lowest_litellm_added_p50"]
    p = r["plumbing_cpu_ms_per_request"]
    return [
        goal(
            "auto throughput >= 3x litellm-2 at saturation", t, 3.0, True, f"{t:.2f}x" if t else "-"
        ),
        goal(
            "auto added p50 at 1 connection <= 1/3 of LiteLLM's (the lower of 1 and 2 workers)",
            a,
            1 / 3,
            False,
            f"{a:.2f}x" if a is not None else "-",
        ),
        goal(
            "plumbing CPU per request at saturation <= 0.3 ms",
            p,
            0.3,
            False,
            f"{p:.3f} ms" if p is not None else "-",
        ),
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def tables(
    summary: dict[str, Any], r: dict[str, float | None], targets: list[dict[str, Any]]
) -> str:
    procs = ["ingress", "classifier", "dispatcher", "nats-server", "mock-vllm"]
    lines = [
        "| target | req/s at saturation | p50 ms (1 conn) | p99 ms | added p50 ms | added p99 ms "
        "| p50 / p99 ms at saturation | errors | CPU ms/req at saturation: "
        + " | ".join([*procs, "litellm", "client"])
        + " |",
        "|" + "---|" * (8 + len(procs) + 2),
    ]
    for target, c in summary["closed"].items():
        cpu = c["cpu_ms_per_request"]
        own = [
            cpu.get(n) if target in ("passthrough", "auto") or n == "mock-vllm" else None
            for n in procs
        ]
        lines.append(
            f"| {target} | {_fmt(c['req_per_s'], 0)} | {_fmt(c['p50_ms'])} | {_fmt(c['p99_ms'])} | "
            f"{_fmt(c['added_p50_ms'])} | {_fmt(c['added_p99_ms'])} | "
            f"{_fmt(c['saturation_p50_ms'], 1)} / {_fmt(c['saturation_p99_ms'], 1)} | {c['errors']} | "
            + " | ".join(_fmt(v, 3) for v in [*own, cpu.get(target), cpu.get("load generator")])
            + " |"
        )
    lines += [
        "",
        "| target | offered req/s | reps | answered req/s | p50 ms | p99 ms | requests | errors | timeouts |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for target, rows in summary["open"].items():
        for p in rows:
            lines.append(
                f"| {target} | {p['rate']:g} | {p['reps']} | {_fmt(p['req_per_s'], 0)} | {_fmt(p['p50_ms'])} | "
                f"{_fmt(p['p99_ms'])} | {p['arrivals']} | {p['errors']} | {p['timeouts']} |"
            )
    lines += ["", "| ratio (within each repetition, median) | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value, 3)} |" for name, value in r.items()]
    lines += ["", "targets:"]
    for g in targets:
        state = "not measured" if g["met"] is None else "met" if g["met"] else "not met"
        lines.append(f"- {g['goal']}: {g['shown']}: {state}")
    return "\n".join(lines)


def plot(summary: dict[str, Any], folder: Path, arrivals: str) -> list[str]:
    """p50 and p99 latency against offered load, one line per target, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for q in ("p50", "p99"):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for target, rows in summary["open"].items():
            points = [(p["rate"], p[f"{q}_ms"]) for p in rows if p[f"{q}_ms"] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=target)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        rates = sorted({p["rate"] for rows in summary["open"].values() for p in rows})
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(f"offered load, requests/s ({arrivals} arrivals)")
        ax.set_ylabel(f"{q} latency, ms")
        ax.set_title(f"{q} latency against offered load (open loop)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = folder / f"latency-{q}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))
    return written


# ---------------------------------------------------------------------- main


async def _main(args: argparse.Namespace) -> int:
    peers = [t for t in args.targets if t.startswith("litellm-")]
    executable = ensure_litellm(Path(args.litellm_venv)) if peers else None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="loraroute-vs-litellm-") as folder:
        bench = SideBySide(args, Path(folder))
        try:
            bench.start()
            if executable is not None:
                bench.start_litellm(executable, peers)
            runner = Runner(args, bench)
            for target in peers:  # LiteLLM's first requests are slow
                async with bench.endpoint(target, 8) as endpoint:
                    warm = await closed_loop(
                        endpoint, concurrency=8, requests=200, timeout=args.timeout
                    )
                if not warm.latencies_ms:
                    raise RuntimeError(f"{target} answered none of its warm-up requests")
            for rep in range(args.reps):
                await runner.rep(rep)
        finally:
            bench.stop()
    summary = summarize(runner.results, args.targets)
    r = ratios(runner.results)
    targets = goals(r)
    plots = plot(summary, Path(args.plots), args.arrivals) if args.plots else []
    body = {
        "loadavg_before": load_before,
        "litellm": {"version": LITELLM_VERSION, "venv": args.litellm_venv} if peers else None,
        "summary": summary,
        "ratios": r,
        "targets": targets,
        "plots": plots,
        "results": runner.results,
    }
    write_report(args, body)
    print(tables(summary, r, targets))
    print(f"load average before {load_before}, after {os.getloadavg()}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved")
    parser.add_argument("--requests", type=int, default=200, help="sequential, at 1 connection")
    parser.add_argument("--concurrency", type=int, default=64, help="connections at saturation")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds at saturation")
    parser.add_argument(
        "--rates",
        nargs="+",
        type=float,
        default=[50.0, 100.0, 200.0, 400.0, 800.0, 1600.0],
        help="open loop: offered requests per second",
    )
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--point-duration", type=float, default=3.0, help="seconds per rate")
    parser.add_argument("--max-in-flight", type=int, default=256, help="open loop connections")
    parser.add_argument(
        "--stop-p99-ms",
        type=float,
        default=1000.0,
        help="skip a target's higher rates once its p99 passed this",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--warmup", type=int, default=20, help="requests before each phase")
    parser.add_argument("--seed", type=int, default=1, help="of the Poisson arrivals")
    parser.add_argument("--litellm-venv", default=str(default_venv()))
    parser.add_argument("--json", dest="out", help="write the JSON report here")
    parser.add_argument("--plots", help="write latency-p50.png and latency-p99.png here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if (
        args.concurrency > 256
        or args.max_in_flight > 1024
        or args.duration > 60
        or args.point_duration > 60
        or args.requests > 5000
        or max(args.rates) > 5000
        or args.timeout > 60
    ):
        parser.error(
            "bounded load only: concurrency <= 256, max-in-flight <= 1024, durations <= 60 s, "
            "requests <= 5000, rates <= 5000/s, timeout <= 60 s"
        )
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
