"""A batch job through the whole system: lines per second, and interactive latency meanwhile.

Starts the pipeline the way `bench_pipeline.py` does (its own nats-server on file storage, mock
vLLM, classifier, dispatcher and ingress on 127.0.0.1 free ports) plus one jobs worker, and:

1. measures the classifier alone on the same texts first (the built model in this process,
   batches of `batching.max_batch_size`, the config's threads): its best texts per second;
2. runs `--rate` interactive `model: MoM` requests per second for `--duration` s on the quiet
   system (p50/p99);
3. submits a `--lines`-line batch (`model: MoM` lines) with the official `openai` client,
   waits `--ramp` s, runs the same interactive load while the batch runs, then waits for the
   batch to end; lines per second = total lines / (end - start of the run), as the batch
   object's `in_progress_at` and `completed_at` say, and its share of the classifier's best.

`--ttft-ms`, `--itl-ms` and `--max-loras` give the mock a latency model (16 output tokens per
line). Loopback only, bounded in lines and time. Not a test: it prints a table and writes JSON.

    nice python loadtest/bench_batch.py --lines 10000
    nice python loadtest/bench_batch.py --lines 10000 --ttft-ms 100 --itl-ms 10 --max-loras 4
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_jobs_lane import _interactive  # noqa: E402
from bench_pipeline import QUERIES, Bench, write_report  # noqa: E402

FINAL = {"completed", "failed", "expired", "cancelled"}


def classifier_alone(seconds: float) -> float:
    """The built default model's best texts per second on `QUERIES`, as the classifier runs it."""
    from schemas.config import load_config
    from services.classifier.engine import Engine

    config, _ = load_config(REPO / "config" / "config.yaml")
    model = config.classifier.category_model
    engine = Engine.from_model_dir(
        REPO / model.model_id,
        category_mapping_path=REPO / model.category_mapping_path
        if model.category_mapping_path
        else None,
        intra_op_threads=config.inference.intra_op_threads,
        inter_op_threads=config.inference.inter_op_threads,
        correct_spelling=config.inference.correct_spelling,
        max_batch_size=config.batching.max_batch_size,
    )
    texts = [f"{QUERIES[i % len(QUERIES)]} (#{i})" for i in range(config.batching.max_batch_size)]
    engine.classify(texts)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine.classify(texts)
        done += len(texts)
    return done / (time.perf_counter() - started)


def batch_file(lines: int) -> bytes:
    rows = []
    for i in range(lines):
        body = {
            "model": "MoM",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"{QUERIES[i % len(QUERIES)]} (#{i})"}],
        }
        rows.append(
            {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class BatchBench(Bench):
    """`Bench` with a jobs worker, the mock's latency model, and room for a large batch file."""

    def _config(self) -> Path:
        path = super()._config()
        data = yaml.safe_load(path.read_text())
        data.setdefault("jobs", {})["max_lines"] = max(self.args.lines, 50_000)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self) -> None:
        super().start()
        assert self.nats is not None
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        common = ["--nats", self.nats.url, "--config", str(self.workdir / "config.yaml")]
        self._spawn("jobs", ["jobs", *common], env)
        time.sleep(2.0)  # the worker creates its consumers


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    best = classifier_alone(args.classifier_seconds)
    with tempfile.TemporaryDirectory(prefix="loraroute-bench-") as folder:
        bench = BatchBench(args, Path(folder))
        try:
            bench.start()
            quiet = await _interactive(bench.ingress_port, args.rate, args.duration, args.warmup)
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{bench.ingress_port}/v1", api_key="unused", timeout=60
            )
            uploaded = client.files.create(
                file=("bench.jsonl", io.BytesIO(batch_file(args.lines))), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            await asyncio.sleep(args.ramp)
            during = await _interactive(bench.ingress_port, args.rate, args.duration, 0)
            deadline = time.monotonic() + args.timeout
            while batch.status not in FINAL and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                batch = client.batches.retrieve(batch.id)
        finally:
            bench.stop()
    counts = batch.request_counts
    seconds = (
        (batch.completed_at - batch.in_progress_at)
        if batch.completed_at and batch.in_progress_at
        else None
    )
    rate = args.lines / seconds if seconds else None
    return {
        "status": batch.status,
        "lines": args.lines,
        "completed": counts.completed if counts else None,
        "failed": counts.failed if counts else None,
        "seconds": seconds,
        "lines_per_s": round(rate, 1) if rate else None,
        "classifier_alone_texts_per_s": round(best, 1),
        "share_of_classifier": round(rate / best, 3) if rate else None,
        "interactive_quiet": quiet,
        "interactive_during_batch": during,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="mock vLLM time to first token")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="mock vLLM time per token")
    parser.add_argument("--max-loras", type=int, default=1, help="mock vLLM adapters at once")
    parser.add_argument("--rate", type=float, default=10.0, help="interactive requests per s")
    parser.add_argument("--duration", type=float, default=10.0, help="s of interactive load")
    parser.add_argument("--ramp", type=float, default=3.0, help="s of batch before measuring")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--classifier-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="s to wait for the batch")
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args()
    if args.lines > 50_000 or args.rate > 200 or args.duration > 60 or args.timeout > 1800:
        parser.error("bounded load only: lines <= 50,000, rate <= 200, duration <= 60 s")
    args.mock_args = [
        "--ttft-ms",
        str(args.ttft_ms),
        "--itl-ms",
        str(args.itl_ms),
        "--max-loras",
        str(args.max_loras),
    ]
    result = asyncio.run(_run(args))
    write_report(args, {"result": result})
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
