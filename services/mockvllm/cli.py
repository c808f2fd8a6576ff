"""``loraroute mock-vllm``: run the vLLM stand-in. Flags are named like vLLM's where vLLM has one."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from services.mockvllm.faults import parse_fault
from services.mockvllm.settings import (
    DEFAULT_FINGERPRINT,
    DEFAULT_OUTPUT_TOKENS,
    LoraModule,
    MockSettings,
)

__all__ = ["build_parser", "main", "settings_from_args"]


def _lora_module(text: str) -> LoraModule:
    """vLLM's two forms: ``name=path``, or JSON ``{"name", "path", "base_model_name"}``."""
    if "=" in text and "," not in text and not text.lstrip().startswith("{"):
        name, path = text.split("=", 1)
        return LoraModule(name, path)
    try:
        data = json.loads(text)
        return LoraModule(data["name"], data["path"], data.get("base_model_name"))
    except (ValueError, KeyError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"bad --lora-modules item {text!r}: {exc}") from None


def _fault(text: str) -> str:
    try:
        parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    try:
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI, got {text!r}") from None
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return pair


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraroute mock-vllm",
        description="An OpenAI-compatible server that behaves like vLLM 0.32 serving a base model "
        "with LoRA adapters, without a model. Runtime adapter loading is enabled, as in vLLM, "
        "by the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 (or true); "
        "VLLM_MAX_N_SEQUENCES (default 16384) caps n, as in vLLM. See docs/mock-vllm.md.",
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    g.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    g.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 paths (default: $VLLM_API_KEY, else off)",
    )
    g.add_argument(
        "--log-level", default="warning", help="uvicorn log level (default: %(default)s)"
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        default="base-model",
        help="base model: the root of its card, and its served name unless --served-model-name is "
        "given (default: %(default)s)",
    )
    g.add_argument(
        "--served-model-name",
        nargs="+",
        default=[],
        metavar="NAME",
        help="aliases of the base model; responses report the first",
    )
    g.add_argument(
        "--lora-modules",
        nargs="+",
        type=_lora_module,
        default=[],
        metavar="NAME=PATH",
        help='static adapters, \'name=path\' or JSON \'{"name":..,"path":..,"base_model_name":..}\'. '
        "Paths are not read (unlike vLLM), so demos need no adapter files",
    )
    g.add_argument(
        "--enable-lora",
        action="store_true",
        help="accepted for vLLM compatibility; LoRA is always on",
    )
    g.add_argument(
        "--max-model-len",
        type=int,
        default=4096,
        help="context length: max_tokens above it is a 400, the default max_tokens fills it "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--max-lora-rank",
        type=int,
        default=16,
        help="a runtime load of an adapter whose adapter_config.json has a larger 'r' fails with "
        "vLLM's 500 (default: %(default)s)",
    )
    g.add_argument(
        "--lora-path-check",
        choices=["adapter", "any"],
        default="adapter",
        help="runtime loads: 'adapter' needs a directory with adapter_config.json, as vLLM does "
        "(404 otherwise); 'any' accepts any path, for demos without files (default: %(default)s)",
    )
    g = p.add_argument_group("wire format")
    g.add_argument(
        "--legacy-errors",
        action="store_true",
        help="flat error bodies of vLLM <= 0.10.0 ({'object':'error',...}) instead of {'error':{...}}",
    )
    g.add_argument(
        "--no-valid-aliases-suffix",
        dest="valid_aliases_suffix",
        action="store_false",
        help="leave ' Valid aliases: ...' off the unknown-model message (vLLM 0.10.1 to ~0.28)",
    )
    g.add_argument(
        "--enable-force-include-usage",
        action="store_true",
        help="send the usage chunk on every stream, as if stream_options.include_usage were set",
    )
    g.add_argument(
        "--system-fingerprint",
        default=DEFAULT_FINGERPRINT,
        help="system_fingerprint in responses (default: %(default)s)",
    )
    g = p.add_argument_group("generation")
    g.add_argument(
        "--echo",
        action="store_true",
        help="reply with the request body as received (JSON text), so tests can assert what vLLM "
        "would see; max_tokens is then ignored and finish_reason is 'stop'",
    )
    g.add_argument(
        "--output-tokens",
        type=_range,
        default=DEFAULT_OUTPUT_TOKENS,
        metavar="LO:HI",
        help="natural reply length, drawn per prompt (max_tokens cuts it, ignore_eos replaces it) "
        "(default: 8:24)",
    )
    g = p.add_argument_group("latency model (0 = as fast as possible)")
    g.add_argument(
        "--ttft-ms",
        type=float,
        default=0.0,
        help="time to first token after a request is scheduled; real CPU vLLM with a tiny model: ~12",
    )
    g.add_argument(
        "--itl-ms",
        type=float,
        default=0.0,
        help="time per further token; larger values make streams and capacity effects visible, "
        "but slow every test that uses them (real tiny model: ~4)",
    )
    g.add_argument(
        "--lora-load-ms",
        type=float,
        default=0.0,
        help="reading an adapter from disk into the CPU cache (--max-cpu-loras): paid by a runtime "
        "load, and by a request whose adapter was evicted from that cache",
    )
    g.add_argument(
        "--lora-swap-ms",
        type=float,
        default=0.0,
        help="bringing an adapter that is not in a --max-loras GPU slot into one (a swap); the "
        "requests for it wait. The cost that routing by adapter affinity saves",
    )
    g = p.add_argument_group("capacity")
    g.add_argument(
        "--max-num-seqs",
        type=int,
        default=256,
        help="requests running at once; more wait in an unbounded FIFO queue, as in vLLM (no 429). "
        "Small values make queueing easy to provoke (default: %(default)s)",
    )
    g.add_argument(
        "--max-num-queued-reqs",
        type=int,
        default=None,
        help="admission control: a request that would wait behind this many is refused with "
        "503 'Service Unavailable' (default: unbounded, vLLM's default)",
    )
    g.add_argument(
        "--max-loras",
        type=int,
        default=1,
        help="GPU slots: distinct adapters running at once; requests for another adapter wait for "
        "a slot. An adapter keeps its slot when idle until another one evicts it (least recently "
        "used first). vLLM's default 1 serialises mixed-adapter traffic (default: %(default)s)",
    )
    g.add_argument(
        "--max-cpu-loras",
        type=int,
        default=None,
        help="adapters kept in the CPU cache (least recently used evicted); at least --max-loras "
        "(default: --max-loras, as vLLM)",
    )
    g = p.add_argument_group("faults")
    g.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="KIND@WHEN[,after=K]",
        help="inject a failure (repeatable). KIND: 500, 503 (JSON error before the answer), "
        "stream-500, stream-503 (in-band error frame after K chunks), drop (connection cut after "
        "K chunks), hang (no answer). WHEN: N (the N-th inference request), %%N (every N-th), * "
        '(all). Also settable at run time: POST /mock/faults {"faults": [...]}',
    )
    return p


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    runtime = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in {
        "1",
        "true",
    }
    return MockSettings(
        model=args.model,
        served_model_names=tuple(args.served_model_name),
        lora_modules=tuple(args.lora_modules),
        max_model_len=args.max_model_len,
        max_lora_rank=args.max_lora_rank,
        api_key=args.api_key or None,
        runtime_lora_updating=runtime,
        lora_path_check=args.lora_path_check,
        legacy_errors=args.legacy_errors,
        valid_aliases_suffix=args.valid_aliases_suffix,
        system_fingerprint=args.system_fingerprint,
        enable_force_include_usage=args.enable_force_include_usage,
        echo=args.echo,
        default_output_tokens=args.output_tokens,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        lora_load_ms=args.lora_load_ms,
        lora_swap_ms=args.lora_swap_ms,
        max_num_seqs=args.max_num_seqs,
        max_n_sequences=int(os.environ.get("VLLM_MAX_N_SEQUENCES", "16384")),
        max_num_queued_reqs=args.max_num_queued_reqs,
        max_loras=args.max_loras,
        max_cpu_loras=args.max_cpu_loras,
        faults=tuple(args.fault),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, build the app and serve it until SIGINT/SIGTERM; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.max_cpu_loras is not None and args.max_cpu_loras < args.max_loras:
        parser.error(
            f"max_cpu_loras ({args.max_cpu_loras}) must be >= max_loras ({args.max_loras})"
        )
    settings = settings_from_args(args)

    import uvicorn

    from services.mockvllm.app import build_app

    uvicorn.run(
        build_app(settings),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=5,  # vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE default
        timeout_graceful_shutdown=3,  # SIGTERM does not wait for long streams or hangs
    )
    return 0
