"""Fuzz the ingress with requests generated from its own OpenAPI document.

Starts a real stack (`realstack.py`: nats-server, mock vLLM, classifier, dispatcher, jobs
worker, ingress), reads `GET /openapi.json` (generated from `schemas/` by `schemas/openapi.py`),
and sends `--requests` generated requests through schemathesis: for every operation, cases that
fit the schema (positive) and cases that break it (negative: wrong types, missing fields,
extra fields), round after round until the count is reached. Each request has `--timeout`
seconds to answer.

It reports: requests sent, answers by status, every 5xx (operation, status, body), hangs (no
answer within the timeout), connection errors, processes that exited (crashes), and the
resident memory of every process before and after. Exit status 1 when any 5xx, hang, connection
error or crash was seen. Not a test: the figures go to docs/reliability.md.

    python loadtest/fuzz_api.py --requests 10000 --json fuzz.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis.errors import HypothesisException
from realstack import RealStack, stop_on_sigterm
from schemathesis import GenerationMode


class Tally:
    """What the generated requests got back."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.sent = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.by_operation: collections.Counter[str] = collections.Counter()
        self.server_errors: list[dict[str, Any]] = []
        self.hangs: list[dict[str, Any]] = []
        self.connection_errors: list[dict[str, Any]] = []
        self.slowest_s = 0.0
        #: The request in flight when a process was found dead (the client sends one at a time).
        self.crash_suspects: list[dict[str, Any]] = []
        self.dead: set[str] = set()

    def call(self, case: Any, base_url: str, session: requests.Session, stack: RealStack) -> None:
        label = f"{case.operation.method.upper()} {case.operation.path}"
        try:
            self._call(case, label, base_url, session)
        finally:
            dead = set(stack.exited()) - self.dead
            if dead:
                self.dead |= dead
                self.crash_suspects.append(
                    {"exited": sorted(dead), "operation": label, "body": _body(case)}
                )

    def _call(self, case: Any, label: str, base_url: str, session: requests.Session) -> None:
        self.sent += 1
        self.by_operation[label] += 1
        started = time.monotonic()
        try:
            response = case.call(base_url=base_url, session=session, timeout=self.timeout_s)
        except requests.Timeout:
            self.hangs.append({"operation": label, "body": _body(case)})
            return
        except requests.ConnectionError as error:
            self.connection_errors.append(
                {"operation": label, "error": repr(error)[:300], "body": _body(case)}
            )
            return
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(
                {
                    "operation": label,
                    "status": response.status_code,
                    "answer": response.content[:300].decode(errors="replace"),
                    "body": _body(case),
                }
            )


def _body(case: Any) -> str:
    try:
        text = json.dumps(case.body, default=repr)
    except (TypeError, ValueError):
        text = repr(case.body)
    return text[:300]


def fuzz(
    stack: RealStack, base_url: str, total: int, tally: Tally, per_round: int, first_seed: int
) -> None:
    """Send generated requests until `total` were sent; each (round, operation, mode) draws
    from its own seed, counted up from `first_seed`, so a run can be repeated."""
    seeds = itertools.count(first_seed)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    session = requests.Session()
    rounds = 0
    barren: set[tuple[str, str, str]] = set()  # nothing to generate (e.g. negative, no inputs)
    while tally.sent < total:
        rounds += 1
        before = tally.sent
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if tally.sent >= total:
                    return
                key = (operation.method, operation.path, str(mode))
                if key in barren:
                    continue
                budget = min(per_round, total - tally.sent)

                @seed(next(seeds))
                @settings(
                    max_examples=budget,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                    verbosity=Verbosity.quiet,
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    tally.call(case, base_url, session, stack)

                try:
                    run()
                except HypothesisException as error:  # e.g. nothing negative to generate
                    barren.add(key)
                    print(f"  skipped from now on: {' '.join(key)}: {type(error).__name__}")
        print(f"round {rounds}: {tally.sent} requests, statuses {dict(tally.statuses)}", flush=True)
        if tally.sent == before:
            raise RuntimeError("no requests generated in a whole round")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--per-round", type=int, default=100, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=0, help="first random seed (see `fuzz`)")
    parser.add_argument(
        "--max-rss-mib",
        type=float,
        default=2048.0,
        help="kill -9 (and count as crashed) a process whose resident memory passes this",
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--workdir", type=Path, help="logs and config (default: a temp folder)")
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loraroute-fuzz-"))
    stack = RealStack(workdir, jobs=1)
    tally = Tally(args.timeout)
    try:
        stack.start()
        base = stack.ingress_urls[0]
        rss_before = stack.rss()
        watchdog = stack.watch(args.max_rss_mib)
        started = time.monotonic()
        fuzz(stack, base, args.requests, tally, args.per_round, args.seed)
        seconds = time.monotonic() - started
        time.sleep(1.0)
        rss_after = stack.rss()
        exited = stack.exited()
        watchdog.set()
        ready = requests.get(f"{base}/ready", timeout=5).status_code
    finally:
        stack.stop()
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "command": " ".join(["python", *sys.argv]),
        "requests": tally.sent,
        "seconds": round(seconds, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "by_operation": dict(sorted(tally.by_operation.items())),
        "server_errors": len(tally.server_errors),
        "hangs": len(tally.hangs),
        "connection_errors": len(tally.connection_errors),
        "crashed": exited,
        "killed_for_memory": [
            {"process": name, "rss_mib": rss, "at_s": round(at, 1)}
            for name, rss, at in stack.runaways
        ],
        "crash_suspects": tally.crash_suspects,
        "ready_after": ready,
        "slowest_answer_s": round(tally.slowest_s, 2),
        "rss_mib_before": rss_before,
        "rss_mib_after": rss_after,
        "server_error_samples": tally.server_errors[:20],
        "hang_samples": tally.hangs[:20],
        "connection_error_samples": tally.connection_errors[:20],
        "logs": str(workdir),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    bad = tally.server_errors or tally.hangs or tally.connection_errors or exited
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
