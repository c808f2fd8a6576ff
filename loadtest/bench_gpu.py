"""The classifier on an execution provider: fp32 and fp16 graphs, IO binding, batch sizes and
token budgets; texts per second and batch latency, as JSON.

For a machine with an NVIDIA GPU (`--provider cuda`, run by `loadtest/gpu_bench.sh`, which
installs onnxruntime-gpu first). The session's providers are read back and the run stops
when CUDA was asked for and not obtained (onnxruntime falls back to the CPU silently).
`--provider cpu` with tiny sizes is the dry run the test suite does.

- fp16: the fp32 graph converted with onnxruntime's own `float16` tool (inputs and outputs
  kept as they are), written next to the output JSON.
- IO binding: inputs copied to the device once per batch and the output left there until
  read, instead of `session.run`'s host round trip.
- Batches: fixed sizes (`--batch-sizes`, texts sorted by length within each window of four
  batches, as the batcher does) and token budgets (`--token-budgets`: as many length-sorted
  texts as fit `longest x count <= budget`, as `batching.max_batch_tokens` cuts them).

    python loadtest/bench_gpu.py --provider cuda --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_classifier import _default_data_dir, load_texts  # noqa: E402
from services.classifier.onnx_backend import softmax  # noqa: E402
from services.classifier.tokens import Encoded, Tokenizer  # noqa: E402

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def fp16_graph(fp32: Path, out: Path) -> Path:
    """Write the fp16 conversion of `fp32` to `out` (inputs and outputs keep their types)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def session(path: Path, provider: str, threads: int) -> ort.InferenceSession:
    """A session on `provider`; raises when it fell back to another provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = [provider] if provider == PROVIDERS["cpu"] else [provider, PROVIDERS["cpu"]]
    sess = ort.InferenceSession(str(path), options, providers=providers)
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"asked for {provider}, got {sess.get_providers()} (see stderr)")
    return sess


def batches_by_size(enc: list[Encoded], size: int) -> list[list[int]]:
    """Index batches of `size`, sorted by length within windows of four batches."""
    order = list(range(len(enc)))
    out = []
    for start in range(0, len(order), size * 4):
        window = sorted(order[start : start + size * 4], key=lambda i: int(enc[i].lengths[0]))
        out += [window[j : j + size] for j in range(0, len(window), size)]
    return out


def batches_by_budget(enc: list[Encoded], budget: int) -> list[list[int]]:
    """Length-sorted index batches with longest x count <= `budget` (at least one text)."""
    order = sorted(range(len(enc)), key=lambda i: int(enc[i].lengths[0]))
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = int(enc[i].lengths[0])  # sorted: the newcomer is the longest
        if current and longest * (len(current) + 1) > budget:
            out.append(current)
            current = []
        current.append(i)
    return out + ([current] if current else [])


def run(
    sess: ort.InferenceSession,
    batches: list[Encoded],
    iobinding: bool,
    device: str,
    trials: int,
) -> dict[str, Any]:
    """Texts per second (median over trials) and batch latency p50/p90 in ms."""
    names = [i.name for i in sess.get_inputs()]
    output = sess.get_outputs()[0].name
    latencies: list[float] = []
    rates = []
    for trial in range(trials + 1):  # the first pass warms up (kernels, allocations)
        texts = 0
        started = time.perf_counter()
        for b in batches:
            feeds = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
            if "token_type_ids" in names:
                feeds["token_type_ids"] = np.zeros_like(b.input_ids)
            t0 = time.perf_counter()
            if iobinding:
                binding = sess.io_binding()
                for name, value in feeds.items():
                    binding.bind_ortvalue_input(
                        name, ort.OrtValue.ortvalue_from_numpy(value, device, 0)
                    )
                binding.bind_output(output, device)
                sess.run_with_iobinding(binding)
                binding.copy_outputs_to_cpu()
            else:
                sess.run([output], feeds)
            if trial:
                latencies.append((time.perf_counter() - t0) * 1000)
            texts += len(b)
        if trial:
            rates.append(texts / (time.perf_counter() - started))
    ordered = sorted(latencies)
    return {
        "texts_per_s": round(statistics.median(rates), 1),
        "batch_p50_ms": round(statistics.median(ordered), 3),
        "batch_p90_ms": round(ordered[int(len(ordered) * 0.9)], 3),
        "batches": len(batches),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "loraroute-domain")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    p.add_argument("--variants", nargs="+", choices=["fp32", "fp16"], default=["fp32", "fp16"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64, 128, 256])
    p.add_argument("--token-budgets", nargs="+", type=int, default=[2048, 8192, 32768])
    p.add_argument("--texts", type=int, default=2048, help="texts per pass")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    p.add_argument("--source", default="mixed", help="see bench_classifier.py --source")
    p.add_argument("--out", type=Path, required=True, help="JSON figures (fp16 graph beside it)")
    args = p.parse_args(argv)

    provider = PROVIDERS[args.provider]
    device = "cuda" if args.provider == "cuda" else "cpu"
    config = json.loads((args.model / "config.json").read_text())
    tokenizer = Tokenizer.from_file(args.model / "tokenizer.json", config["max_seq_length"])
    pairs, provenance = load_texts(_default_data_dir(), args.source, args.texts, 0)
    encoded = [tokenizer.encode([text]) for text, _ in pairs]
    graphs = {"fp32": args.model / "onnx" / "model_fp32.onnx"}
    if "fp16" in args.variants:
        graphs["fp16"] = fp16_graph(graphs["fp32"], args.out.with_suffix(".fp16.onnx"))
    results = []
    probs: dict[str, Any] = {}
    for variant in args.variants:
        sess = session(graphs[variant], provider, args.threads)
        cuts = [("batch_size", bs, batches_by_size(encoded, bs)) for bs in args.batch_sizes]
        cuts += [("token_budget", t, batches_by_budget(encoded, t)) for t in args.token_budgets]
        for kind, value, index_batches in cuts:
            batches = [
                Encoded.collate([encoded[i] for i in idx], tokenizer.pad_id)
                for idx in index_batches
            ]
            for iobinding in (False, True):
                figures = run(sess, batches, iobinding, device, args.trials)
                results.append({"variant": variant, kind: value, "iobinding": iobinding, **figures})
                print(json.dumps(results[-1]), flush=True)
        # Each variant's decisions on the same texts, to compare fp16 with fp32.
        probs[variant] = np.concatenate(
            [
                softmax(
                    sess.run(
                        [sess.get_outputs()[0].name],
                        {"input_ids": b.input_ids, "attention_mask": b.attention_mask},
                    )[0]
                )
                for b in (
                    Encoded.collate(encoded[i : i + 64], tokenizer.pad_id)
                    for i in range(0, len(encoded), 64)
                )
            ]
        )
    agreement = {
        v: {
            "top1_agreement_vs_fp32": float((p.argmax(1) == probs["fp32"].argmax(1)).mean()),
            "max_abs_prob_delta_vs_fp32": float(np.abs(p - probs["fp32"]).max()),
        }
        for v, p in probs.items()
        if v != "fp32" and "fp32" in probs
    }
    report = {
        "machine": {
            "provider": provider,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
        "model": str(args.model),
        "texts": provenance,
        "results": results,
        "agreement": agreement,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
