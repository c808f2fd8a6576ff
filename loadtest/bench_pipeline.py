"""The pipeline's cost in one run: the same load straight to the mock vLLM and through loraroute.

Starts its own nats-server, mock vLLM (no latency model, fixed 16 output tokens), classifier,
dispatcher and ingress, all on 127.0.0.1 free ports, then for each target:

- `direct`       client -> mock vLLM (`model: technical-lora`)
- `passthrough`  client -> ingress -> classifier (no forward pass) -> dispatcher -> mock vLLM
- `auto`         the same with `model: MoM`: the classifier's forward pass runs
- `stream`       passthrough with `stream: true`: each piece of the streamed answer crosses
                 NATS as a message of its own (the reply path of streamed answers)

`--classifiers N`, `--dispatchers N` and `--nats-cluster N` run several processes of those
kinds and an N-node NATS cluster instead of one server. It measures latency at 1 request in
flight (p50/p99), throughput at `--concurrency` in flight, and the CPU time per request of
every process (from /proc/<pid>/stat, before and after each phase).
`passthrough` minus `direct` is the plumbing; `auto` minus `passthrough` is the classifier's
forward pass. With `auto` among the targets, each repetition ends with the classifier alone
on the same texts (`standalone`: the engine the worker builds from the same config, in this
process while the stack idles, at 1 and 2 onnxruntime threads and batch sizes 1, 2, 4, ... up
to `batching.max_batch_size`, each for `--standalone-s` seconds), and the script prints
"auto / classifier standalone best": the auto rate at saturation over the best of those
rates, from the same repetition. Loopback only, bounded in requests and time. Not a test: it
prints a table and writes JSON for docs/benchmarks.md.

    nice python loadtest/bench_pipeline.py --requests 400 --duration 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import msgspec
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loraroute import natsauth  # noqa: E402
from loraroute.natsserver import NatsCluster, NatsServer  # noqa: E402
from services.common.subjects import Subjects  # noqa: E402

if TYPE_CHECKING:
    from services.classifier.engine import Engine

QUERIES = [
    "Explain async/await in JavaScript",
    "What causes high blood pressure?",
    "What are the elements of a valid contract?",
    "What is the capital of France?",
    "How do I reverse a linked list in Python?",
    "What are the symptoms of type 2 diabetes?",
    "Can my landlord keep my deposit for normal wear and tear?",
    "Suggest a name for a pet goldfish",
]
TARGETS = ("direct", "passthrough", "auto", "stream")
_TICK = os.sysconf("SC_CLK_TCK")


def chat_bodies(model: str, *, stream: bool = False, system: str | None = None) -> list[bytes]:
    """One encoded chat request per query in `QUERIES` (16 tokens), after a `system` message if
    given."""
    head = [{"role": "system", "content": system}] if system else []
    extra = {"stream": True} if stream else {}
    return [
        json.dumps(
            {
                "model": model,
                "max_tokens": 16,
                "messages": [*head, {"role": "user", "content": q}],
                **extra,
            }
        ).encode()
        for q in QUERIES
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime of `pid` in seconds (of its thread `thread` only, when given)."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Phase:
    target: str
    kind: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    loop_ms_per_request: dict[str, float] = field(default_factory=dict)
    """Of the classifiers' CPU, their main thread's (the event loop; the rest is the model's
    threads)."""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "kind": self.kind,
            "requests": self.requests,
            "errors": self.errors,
            "req_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "cpu_ms_per_request": {k: round(v, 4) for k, v in self.cpu_ms_per_request.items()},
            "classifier_loop_ms_per_request": {
                k: round(v, 4) for k, v in self.loop_ms_per_request.items()
            },
        }
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            out["p50_ms"] = round(statistics.median(ordered), 3)
            out["p99_ms"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)
        return out


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.nats: NatsServer | NatsCluster | None = None
        self.mock_port = free_port()
        self.ingress_port = free_port()
        self.config_path = workdir / "config.yaml"

    # ------------------------------------------------------------------ processes

    def _config(self) -> Path:
        data = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        model = data["classifier"]["category_model"]
        model["model_id"] = str(REPO / model["model_id"])
        model["category_mapping_path"] = str(REPO / model["category_mapping_path"])
        data["vllm_endpoints"][0]["port"] = self.mock_port
        data["ingress"]["port"] = self.ingress_port
        if getattr(self.args, "classifier_gpu", False):  # loadtest/gpu_bench.sh
            model["use_cpu"] = False
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.config_path

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "loraroute", *args], env)

    def spawn(self, name: str, command: list[str], env: dict[str, str], cwd: Path = REPO) -> Proc:
        """Start `command`, logging to `<workdir>/<name>.log`; `stop()` stops it."""
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        proc = Proc(name, process)
        self.procs.append(proc)
        return proc

    def wait(self, url: str, timeout_s: float = 120.0) -> None:
        """Until `url` answers 200; fails when a started process exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.process.poll() is not None:
                    log = (self.workdir / f"{proc.name}.log").read_text()[-2000:]
                    raise RuntimeError(f"{proc.name} exited:\n{log}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} not ready after {timeout_s} s")

    def start(self) -> None:
        config = self._config()
        nodes = getattr(self.args, "nats_cluster", None)
        # With --nats-auth, the users and permissions of `loraroute up` (loraroute.natsauth).
        users = natsauth.Credentials.generate() if getattr(self.args, "nats_auth", False) else {}
        security = (
            natsauth.server_config(users, Subjects("loraroute"), responses_expire_s=610.0)
            if users
            else ""
        )
        if nodes:
            self.nats = NatsCluster(self.workdir / "nats", nodes=nodes, extra_config=security)
            self.nats.start()
            url = self.nats.url
        else:
            self.nats = NatsServer(store_dir=self.workdir / "nats", extra_config=security)
            url = self.nats.start()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}

        def kind_env(kind: str) -> dict[str, str]:
            return env | natsauth.env(users.get(kind))

        self._spawn(
            "mock-vllm",
            [
                "mock-vllm",
                "--port",
                str(self.mock_port),
                "--model",
                "llama2-7b",
                "--lora-modules",
                "technical-lora=technical-lora",
                "medical-lora=medical-lora",
                "legal-lora=legal-lora",
                "--output-tokens",
                "16:16",
                # Another script's latency model or capacity (bench_batch.py), if it sets one.
                *getattr(self.args, "mock_args", []),
            ],
            env,
        )
        self.wait(f"http://127.0.0.1:{self.mock_port}/health")
        common = ["--nats", url, "--config", str(config)]
        for kind in ("classifier", "dispatcher"):
            count = getattr(self.args, f"{kind}s", 1)
            for i in range(count):
                name = kind if count == 1 else f"{kind}-{i + 1}"
                self._spawn(name, [kind, *common], kind_env(kind))
        ingress = ["ingress", *common, "--port", str(self.ingress_port)]
        self._spawn("ingress", ingress, kind_env("ingress"))
        self.wait(f"http://127.0.0.1:{self.ingress_port}/ready")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
                try:
                    proc.process.wait(15)
                except subprocess.TimeoutExpired:
                    proc.process.kill()
                    proc.process.wait(5)
        if self.nats is not None:
            self.nats.stop()

    def pids(self) -> dict[str, int]:
        pids = {p.name: p.pid for p in self.procs}
        servers = self.nats.servers if isinstance(self.nats, NatsCluster) else [self.nats]
        for i, server in enumerate(servers):
            if server is not None and server.pid is not None:
                pids["nats-server" if len(servers) == 1 else f"nats-server-{i + 1}"] = server.pid
        return pids

    # ------------------------------------------------------------------ load

    def _target(self, target: str) -> tuple[str, str]:
        if target == "direct":
            return f"http://127.0.0.1:{self.mock_port}/v1/chat/completions", "technical-lora"
        model = "MoM" if target == "auto" else "technical-lora"
        return f"http://127.0.0.1:{self.ingress_port}/v1/chat/completions", model

    async def run_phase(self, target: str, kind: str) -> Phase:
        url, model = self._target(target)
        concurrency = 1 if kind == "latency" else self.args.concurrency
        phase = Phase(target, kind)
        bodies = chat_bodies(model, stream=target == "stream")
        headers = {"content-type": "application/json"}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int, record: bool) -> None:
                start = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                if record:
                    phase.requests += 1
                    phase.errors += 0 if ok else 1
                    if kind == "latency":
                        phase.latencies_ms.append((time.perf_counter() - start) * 1000)

            for i in range(self.args.warmup):  # connections, caches, JIT-free warm paths
                await one(i, record=False)
            pids = self.pids()
            loops = {name: pid for name, pid in pids.items() if name.startswith("classifier")}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            before["load generator"] = time.process_time()
            loops_before = {name: cpu_seconds(pid, pid) for name, pid in loops.items()}
            started = time.perf_counter()
            if kind == "latency":
                for i in range(self.args.requests):
                    await one(i, record=True)
            else:
                stop_at = started + self.args.duration

                async def worker(w: int) -> None:
                    i = w
                    while time.perf_counter() < stop_at:
                        await one(i, record=True)
                        i += concurrency

                await asyncio.gather(*(worker(w) for w in range(concurrency)))
            phase.seconds = time.perf_counter() - started
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            after["load generator"] = time.process_time()
            loops_after = {name: cpu_seconds(pid, pid) for name, pid in loops.items()}
        n = max(phase.requests, 1)
        phase.cpu_ms_per_request = {
            name: (after[name] - before[name]) * 1000 / n for name in before
        }
        phase.loop_ms_per_request = {
            name: (loops_after[name] - loops_before[name]) * 1000 / n for name in loops
        }
        return phase


def standalone_engines(config_path: Path, threads: tuple[int, ...] = (1, 2)) -> dict[int, Engine]:
    """The engine the classifier worker builds from the config at `config_path`
    (`load_engine`), once per onnxruntime thread count in `threads`."""
    from schemas.config import load_config
    from services.classifier.app import load_engine

    config, _warnings = load_config(config_path)
    return {
        t: load_engine(
            msgspec.structs.replace(
                config, inference=msgspec.structs.replace(config.inference, intra_op_threads=t)
            )
        )
        for t in threads
    }


def standalone(
    engines: Mapping[int, Engine], max_batch_size: int, seconds: float
) -> list[dict[str, Any]]:
    """The classifier alone on `QUERIES` (in rotation): texts per second and process CPU ms per
    text for each engine (by thread count) and batch size 1, 2, 4, ... up to `max_batch_size`,
    each for `seconds`. A batch is tokenized and classified as the worker does it
    (`Tokenizer.encode`, then `Engine.classify_encoded`)."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size]
    out = []
    for threads, engine in engines.items():
        for size in sizes:
            batches = [
                [QUERIES[(start + i) % len(QUERIES)] for i in range(size)]
                for start in range(len(QUERIES))
            ]
            engine.classify_encoded(engine.tokenizer.encode(batches[0]))  # warm-up
            done = 0
            cpu0, start = time.process_time(), time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds or not done:
                engine.classify_encoded(engine.tokenizer.encode(batches[done % len(batches)]))
                done += size
            out.append(
                {
                    "threads": threads,
                    "batch_size": size,
                    "texts_per_s": round(done / elapsed, 1),
                    "cpu_ms_per_text": round((time.process_time() - cpu0) * 1000 / done, 4),
                }
            )
    return out


def standalone_ratio(
    rep: int, results: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Repetition `rep`'s auto rate at saturation against the best standalone rate."""
    best = max(runs, key=lambda r: r["texts_per_s"])
    auto = next(
        r
        for r in results
        if r["rep"] == rep and r["target"] == "auto" and r["kind"] == "saturation"
    )
    return {
        "rep": rep,
        "auto_req_per_s": auto["req_per_s"],
        "best": best,
        "auto_over_standalone_best": round(auto["req_per_s"] / best["texts_per_s"], 3),
        "auto_classifier_cpu_ms_per_request": auto["cpu_ms_per_request"].get("classifier"),
        "runs": runs,
    }


def write_report(args: argparse.Namespace, body: dict[str, Any]) -> None:
    """Write `body`, with the machine and the arguments, as JSON to `--out` (if given)."""
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg": os.getloadavg(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "mock_args"},
        **body,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


def _table(results: list[dict[str, Any]]) -> str:
    names = ["nats-server", "ingress", "classifier", "dispatcher", "mock-vllm", "load generator"]
    head = "| target | phase | req/s | p50 ms | p99 ms | errors | " + " | ".join(
        f"CPU ms/req {n}" for n in names
    )
    lines = [head + " |", "|" + "---|" * (6 + len(names))]
    for r in results:
        cpu = r["cpu_ms_per_request"]
        lines.append(
            f"| {r['target']} | {r['kind']} | {r['req_per_s']} | {r.get('p50_ms', '')} | "
            f"{r.get('p99_ms', '')} | {r['errors']} | "
            # Replicas (classifier-1, classifier-2, nats-server-1, ...) count under their kind.
            + " | ".join(
                f"{sum(v for k, v in cpu.items() if k == n or k.startswith(n + '-')):.3f}"
                for n in names
            )
            + " |"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="loraroute-bench-") as folder:
        bench = Bench(args, Path(folder))
        try:
            bench.start()
            alone = "auto" in args.targets and args.standalone_s > 0
            engines = standalone_engines(bench.config_path) if alone else {}
            max_batch = int(
                yaml.safe_load(bench.config_path.read_text())["batching"]["max_batch_size"]
            )
            results: list[dict[str, Any]] = []
            ratios: list[dict[str, Any]] = []
            for rep in range(args.reps):
                for kind in ("latency", "saturation"):
                    for target in args.targets:
                        phase = await bench.run_phase(target, kind)
                        summary = {"rep": rep, **phase.summary()}
                        results.append(summary)
                        print(json.dumps(summary), file=sys.stderr, flush=True)
                if engines:  # the stack idles meanwhile
                    runs = standalone(engines, max_batch, args.standalone_s)
                    ratios.append(standalone_ratio(rep, results, runs))
                    print(
                        json.dumps({k: v for k, v in ratios[-1].items() if k != "runs"}),
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            bench.stop()
    write_report(args, {"results": results, "standalone": ratios})
    print(_table(results))
    for r in results:
        if r["target"] == "auto" and r["classifier_loop_ms_per_request"]:
            loop = sum(r["classifier_loop_ms_per_request"].values())
            total = sum(v for k, v in r["cpu_ms_per_request"].items() if k.startswith("classifier"))
            print(
                f"rep {r['rep']}, auto {r['kind']}: classifier CPU ms per request {total:.3f}, "
                f"of which the event loop {loop:.3f} and the model's threads {total - loop:.3f}"
            )
    for r in ratios:
        best = r["best"]
        print(
            f"rep {r['rep']}: auto / classifier standalone best = {r['auto_req_per_s']} / "
            f"{best['texts_per_s']} texts/s (batch {best['batch_size']}, {best['threads']} "
            f"thread(s), {best['cpu_ms_per_text']} CPU ms/text) = "
            f"{r['auto_over_standalone_best']:.2f}; classifier CPU ms per auto request at "
            f"saturation {r['auto_classifier_cpu_ms_per_request']}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential requests (latency)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per saturation phase")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight at saturation")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--standalone-s",
        type=float,
        default=1.0,
        help="seconds per configuration of the classifier alone after each repetition "
        "(with the auto target; 0: skip)",
    )
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--classifiers", type=int, default=1, help="classifier processes")
    parser.add_argument("--dispatchers", type=int, default=1, help="dispatcher processes")
    parser.add_argument(
        "--nats-cluster", type=int, metavar="N", help="an N-node NATS cluster, not one server"
    )
    parser.add_argument(
        "--nats-auth",
        action="store_true",
        help="NATS with the users and permissions of `loraroute up` (default: none)",
    )
    parser.add_argument(
        "--classifier-gpu",
        action="store_true",
        help="run the classifier with the CUDA provider (`category_model.use_cpu: false`)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=list(TARGETS),
        help="which targets to measure, in this order (default: all)",
    )
    args = parser.parse_args()
    if args.concurrency > 256 or args.duration > 60 or args.requests > 5000:
        parser.error("bounded load only: concurrency <= 256, duration <= 60 s, requests <= 5000")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
