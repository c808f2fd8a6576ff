"""Classifier throughput and latency per batch size, variant, thread count and batch ordering.

Measures the engine the worker runs, end to end per batch: `Tokenizer.encode` of the
batch's texts (spelling correction included unless `--no-correct-spelling`) plus
`Backend.predict`. What the correction adds is printed first: CPU per text classified alone
with and without it, on the texts and on a typo'd copy (see `spelling_cost`). Every session
is created first; each trial then runs every configuration for at least `--min-time`
seconds, in an order rotated per trial, so that machine noise spreads over all of them; a
run is one or more whole passes over the texts. Reported: the median over trials of texts per second, the median and 90th
percentile of batch latency, and process CPU time per text (a steadier figure than wall
time on a shared machine).

Batch ordering: `unsorted` cuts the shuffled texts into consecutive batches; `sorted`
sorts each window of four batches' worth of texts by token length first, as a batcher
that sorts its queue does, so batches carry less padding.

Before timing, `--agreement` (on by default) compares each variant's decisions with fp32
on the same texts: top-1 agreement, accuracy against the data's labels, and whether a
text's result changes when it is classified alone rather than in a batch of 32.

Texts come from the labelled data folder (`$LORAROUTE_DATA_DIR`, else `../shared/data`
beside the repository), or from a small built-in set of chat-like queries without it.

    python loadtest/bench_classifier.py --trials 5 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from modelkit.augment import typo_copy
from services.classifier.engine import Engine

REPO = Path(__file__).resolve().parent.parent
SOURCES = {
    "queries": ("domain_queries_train.jsonl",),
    "exam": ("domain_train.jsonl",),
    "mixed": ("domain_queries_train.jsonl", "domain_train.jsonl"),
    "mmlu-pro": ("mmlu_pro_train.jsonl",),
}

_TEMPLATES = {
    "technical": [
        "How do I {v} a {n} in {l}?",
        "Why does my {l} {n} throw an error when I {v} it?",
        "What is the fastest way to {v} a large {n} in {l}?",
    ],
    "medical": [
        "What are the side effects of {d}?",
        "Is it safe to take {d} while {c}?",
        "I have {s} for three days, should I see a doctor?",
    ],
    "legal": [
        "Can my {p} {a} without telling me?",
        "Is it legal for a {p} to {a}?",
        "What are my rights if my {p} tries to {a}?",
    ],
    "general": [
        "What's the weather like in {city} {when}?",
        "Recommend a {thing} for {when}.",
        "How long does it take to drive to {city}?",
    ],
}
_FILL = {
    "v": ["sort", "parse", "serialize", "reverse", "merge"],
    "n": ["list", "JSON file", "hash map", "dataframe", "linked list"],
    "l": ["Python", "Rust", "Go", "Java", "SQL"],
    "d": ["ibuprofen", "metformin", "amoxicillin", "statins"],
    "c": ["pregnant", "on blood thinners", "breastfeeding"],
    "s": ["a fever", "a sore throat", "back pain", "a rash"],
    "p": ["landlord", "employer", "neighbour", "ex-partner"],
    "a": ["keep my deposit", "cut my wages", "record my calls", "evict me"],
    "city": ["Paris", "Tokyo", "Lisbon", "Toronto"],
    "when": ["tomorrow", "this weekend", "tonight"],
    "thing": ["movie", "board game", "book", "podcast"],
}


def _generated(n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        label = rng.choice(list(_TEMPLATES))
        template = rng.choice(_TEMPLATES[label])
        out.append((template.format(**{k: rng.choice(v) for k, v in _FILL.items()}), label))
    return out


def load_texts(
    data_dir: Path | None, source: str, n: int, seed: int
) -> tuple[list[tuple[str, str]], str]:
    """`n` (text, label) pairs sampled from the data folder, or generated without one."""
    rng = random.Random(seed)
    if data_dir is None or not all((data_dir / f).is_file() for f in SOURCES[source]):
        return _generated(n, rng), "generated chat-like queries (no data folder found)"
    rows: list[tuple[str, str]] = []
    for name in SOURCES[source]:
        with (data_dir / name).open(encoding="utf-8") as fh:
            rows += [(r["text"], r["label"]) for r in map(json.loads, fh)]
    return rng.sample(
        rows, min(n, len(rows))
    ), f"{n} texts sampled from {', '.join(SOURCES[source])}"


def _default_data_dir() -> Path | None:
    env = os.environ.get("LORAROUTE_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def make_batches(engine: Engine, texts: list[str], bs: int, order: str) -> list[list[str]]:
    """Cut `texts` into batches of `bs`; `sorted` sorts each window of 4 batches by length."""
    if order == "unsorted" or bs == 1:
        return [texts[i : i + bs] for i in range(0, len(texts), bs)]
    lengths = engine.tokenizer.encode(texts).lengths
    batches: list[list[str]] = []
    window = 4 * bs
    for start in range(0, len(texts), window):
        idx = sorted(range(start, min(start + window, len(texts))), key=lambda i: int(lengths[i]))
        batches += [[texts[i] for i in idx[j : j + bs]] for j in range(0, len(idx), bs)]
    return batches


@dataclass
class Result:
    variant: str
    threads: int
    bs: int
    order: str
    throughput: list[float] = field(default_factory=list)
    cpu_us_per_text: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    padding: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "variant": self.variant,
            "threads": self.threads,
            "batch_size": self.bs,
            "order": self.order,
            "texts_per_s": statistics.median(self.throughput),
            "texts_per_s_range": [min(self.throughput), max(self.throughput)],
            "batch_ms_p50": lat[len(lat) // 2],
            "batch_ms_p90": lat[int(len(lat) * 0.9)],
            "cpu_us_per_text": statistics.median(self.cpu_us_per_text),
            "padded_over_real_tokens": self.padding,
        }


def run_config(engine: Engine, batches: list[list[str]], min_time: float, result: Result) -> None:
    """Run whole passes over `batches` (tokenize + predict each) until `min_time` has passed.

    Whole passes matter: sorted batch lists run from short to long texts, so stopping
    mid-list would time only the cheap batches.
    """
    done = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        for batch in batches:
            t0 = time.perf_counter()
            engine.backend.predict(engine.tokenizer.encode(batch))
            result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            done += len(batch)
        wall = time.perf_counter() - wall0
        if wall >= min_time:
            break
    result.throughput.append(done / wall)
    result.cpu_us_per_text.append((time.process_time() - cpu0) / done * 1e6)


def agreement(
    engines: dict[str, Engine], pairs: list[tuple[str, str]], threshold: float
) -> dict[str, dict[str, float]]:
    """Per variant: agreement with fp32, label accuracy, and batch-vs-alone stability."""
    texts = [t for t, _ in pairs]
    labels = [lab for _, lab in pairs]

    def decide(results: Sequence[Any]) -> list[str | None]:
        return [r.category if r.confidence >= threshold else None for r in results]

    out: dict[str, dict[str, float]] = {}
    reference = None
    alone_n = min(len(texts), 256)
    for name, engine in engines.items():
        batched = []
        for i in range(0, len(texts), 32):
            batched += engine.classify_encoded(engine.tokenizer.encode(texts[i : i + 32]))
        alone = [engine.classify([t])[0] for t in texts[:alone_n]]
        top = [r.label for r in batched]
        if reference is None:
            reference = batched
        probs = np.stack([r.label_probabilities for r in batched])
        ref_probs = np.stack([r.label_probabilities for r in reference])
        alone_probs = np.stack([r.label_probabilities for r in alone])
        out[name] = {
            "top1_agreement_with_fp32": float(
                np.mean([a == b.label for a, b in zip(top, reference, strict=True)])
            ),
            "routing_agreement_with_fp32": float(
                np.mean([a == b for a, b in zip(decide(batched), decide(reference), strict=True)])
            ),
            "max_abs_prob_delta_vs_fp32": float(np.abs(probs - ref_probs).max()),
            "accuracy_vs_data_labels": float(
                np.mean([a == b for a, b in zip(top, labels, strict=True)])
            ),
            "top1_changed_alone_vs_batch32": float(
                np.mean([a.label != b.label for a, b in zip(alone, batched, strict=False)])
            ),
            "routing_changed_alone_vs_batch32": float(
                np.mean(
                    [a != b for a, b in zip(decide(alone), decide(batched[:alone_n]), strict=True)]
                )
            ),
            "max_abs_prob_delta_alone_vs_batch32": float(
                np.abs(alone_probs - probs[:alone_n]).max()
            ),
        }
    return out


def spelling_cost(
    model: Path, variant: str, texts: list[str], seed: int, trials: int = 3
) -> dict[str, float]:
    """What spelling correction adds to a lone text's classification, measured in one run.

    Two engines on `variant`, one thread, one corrects and one reads the texts as written;
    each classifies `texts` and a typo'd copy one text at a time, the two alternating over
    `trials` passes, the corrector's remembered verdicts cleared before each of its passes
    (the cost for a stream of texts like these, not for the same texts sent again); the
    corrector alone is timed in the same passes. Returns process CPU µs per text (median over
    passes) for each engine, the corrector alone and text set, and the engines' ratio.
    """
    engines = {
        name: Engine.from_model_dir(
            model, onnx_file=f"onnx/model_{variant}.onnx", intra_op_threads=1, correct_spelling=on
        )
        for name, on in (("corrected", True), ("as_written", False))
    }
    corrector = engines["corrected"].tokenizer.corrector
    assert corrector is not None
    out: dict[str, float] = {}
    for kind, batch in (("clean", texts), ("typod", typo_copy(texts, seed))):
        runs: dict[str, list[float]] = {name: [] for name in [*engines, "corrector_alone"]}
        for _ in range(trials):
            for name, engine in engines.items():
                corrector.cache_clear()
                cpu0 = time.process_time()
                for text in batch:
                    engine.classify([text])
                runs[name].append((time.process_time() - cpu0) / len(batch) * 1e6)
            corrector.cache_clear()
            cpu0 = time.process_time()
            for text in batch:
                corrector(text)
            runs["corrector_alone"].append((time.process_time() - cpu0) / len(batch) * 1e6)
        for name in runs:
            out[f"{kind}_{name}_us_per_text"] = round(statistics.median(runs[name]), 1)
        out[f"{kind}_ratio"] = round(
            out[f"{kind}_corrected_us_per_text"] / out[f"{kind}_as_written_us_per_text"], 3
        )
    return out


def _table(
    results: list[dict[str, Any]], key: str, fmt: str, bss: list[int], orders: list[str]
) -> str:
    cols = [(bs, o) for bs in bss for o in orders if not (bs == 1 and o == "sorted")]
    head = "| variant | threads | " + " | ".join(f"bs{bs} {o}" for bs, o in cols) + " |"
    lines = [head, "|" + "---|" * (2 + len(cols))]
    rows: dict[tuple[str, int], dict[tuple[int, str], dict[str, Any]]] = {}
    for r in results:
        rows.setdefault((r["variant"], r["threads"]), {})[(r["batch_size"], r["order"])] = r
    for (variant, threads), cells in rows.items():
        vals = [fmt.format(**cells[c]) if c in cells else "" for c in cols]
        lines.append(f"| {variant} | {threads} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (
        f"{os.cpu_count()} vCPU {cpu}; Python {platform.python_version()}; "
        f"onnxruntime {onnxruntime.__version__}; load average before the run "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "loraroute-domain")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "int8"],
        help="variants, run from onnx/model_<variant>.onnx (fp32 first)",
    )
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64])
    p.add_argument(
        "--orders", nargs="+", choices=["unsorted", "sorted"], default=["unsorted", "sorted"]
    )
    p.add_argument("--source", choices=sorted(SOURCES), default="queries")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: see above)")
    p.add_argument("--texts", type=int, default=256, help="texts per pass")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument(
        "--min-time", type=float, default=0.0, help="repeat passes until this many seconds"
    )
    p.add_argument("--threshold", type=float, default=0.6, help="for routing agreement")
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument(
        "--no-correct-spelling",
        dest="correct_spelling",
        action="store_false",
        help="tokenize the texts as written (the default config corrects spelling first)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)

    pairs, provenance = load_texts(
        args.data or _default_data_dir(), args.source, args.texts, args.seed
    )
    texts = [t for t, _ in pairs]
    engines = {
        (v, t): Engine.from_model_dir(
            args.model,
            onnx_file=f"onnx/model_{v}.onnx",
            intra_op_threads=t,
            inter_op_threads=1,
            max_batch_size=max(args.batch_sizes),
            correct_spelling=args.correct_spelling,
        )
        for v in args.variants
        for t in args.threads
    }
    first = next(iter(engines.values()))
    lengths = first.tokenizer.encode(texts).lengths
    print(f"machine: {_machine()}", file=sys.stderr)
    print(
        f"texts: {provenance}; tokens per text median {int(np.median(lengths))}, "
        f"p90 {int(np.percentile(lengths, 90))}, max {int(lengths.max())} "
        f"(window {first.tokenizer.max_length})",
        file=sys.stderr,
    )

    report: dict[str, Any] = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": _machine(),
        "texts": provenance,
        "token_lengths": {"median": float(np.median(lengths)), "max": int(lengths.max())},
    }
    if args.correct_spelling:
        report["spelling_correction"] = spelling_cost(
            args.model, args.variants[0], texts, args.seed
        )
        print(f"spelling correction: {report['spelling_correction']}", file=sys.stderr)
    if not args.no_agreement:
        by_variant = {v: engines[(v, max(args.threads))] for v in args.variants}
        report["agreement"] = agreement(by_variant, pairs, args.threshold)
        print(json.dumps(report["agreement"], indent=1), file=sys.stderr)

    if args.trials < 1:
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return 0
    configs: list[tuple[str, int, int, str]] = [
        (v, t, bs, o)
        for v in args.variants
        for t in args.threads
        for bs in args.batch_sizes
        for o in args.orders
        if not (bs == 1 and o == "sorted")
    ]
    batches = {
        (bs, o): make_batches(first, texts, bs, o) for bs in args.batch_sizes for o in args.orders
    }
    results = {c: Result(*c) for c in configs}
    for (bs, o), bl in batches.items():
        encs = [first.tokenizer.encode(b) for b in bl]
        ratio = sum(e.padded_tokens for e in encs) / sum(e.real_tokens for e in encs)
        for c in configs:
            if c[2:] == (bs, o):
                results[c].padding = round(ratio, 3)
    for v, t, bs, o in configs:  # warm-up: first runs allocate arenas
        engines[(v, t)].backend.predict(engines[(v, t)].tokenizer.encode(batches[(bs, o)][0]))
    for trial in range(args.trials):
        shift = trial * len(configs) // max(args.trials, 1)
        for c in configs[shift:] + configs[:shift]:
            run_config(engines[c[:2]], batches[c[2:]], args.min_time, results[c])
        print(f"trial {trial + 1}/{args.trials} done", file=sys.stderr)

    summaries = [results[c].summary() for c in configs]
    report["results"] = summaries
    bss, orders = args.batch_sizes, args.orders
    print("\nTexts per second, median over trials (batch latency p50 ms):\n")
    print(_table(summaries, "", "{texts_per_s:.0f} ({batch_ms_p50:.1f})", bss, orders))
    print("\nProcess CPU time per text, µs (median over trials):\n")
    print(_table(summaries, "", "{cpu_us_per_text:.0f}", bss, orders))
    print(
        "\nPadded / real tokens: "
        + ", ".join(
            f"bs{bs} {o} {results[next(c for c in configs if c[2:] == (bs, o))].padding:.2f}"
            for bs in bss
            for o in orders
            if (bs, o) in {c[2:] for c in configs}
        )
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
