"""`loraroute model build`: the command line of `modelkit.build`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modelkit.build import DEFAULT_VARIANT, MODEL_PREFIX, VARIANTS, build, build_hash
from modelkit.cli.flags import add_threads, add_weights
from modelkit.heads import head_names

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model build`."""
    p = argparse.ArgumentParser(
        prog="loraroute model build",
        description="Build the classifier model directories from the committed weights "
        "(cached by content hash; a no-op when current).",
    )
    p.add_argument(
        "--head",
        action="append",
        dest="heads",
        metavar="NAME",
        help="head to build (repeatable; default: every head under --weights)",
    )
    add_weights(p, "folder holding one sub-folder per head")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        help=f"folder the model directories ({MODEL_PREFIX}<head>) go to (default: models)",
    )
    p.add_argument("--default-variant", choices=VARIANTS, default=DEFAULT_VARIANT)
    p.add_argument("--no-cache", action="store_true", help="neither read nor fill the cache")
    p.add_argument("--force", action="store_true", help="rebuild even when current or cached")
    p.add_argument(
        "--print-hash",
        action="store_true",
        help="print each head's content hash (for CI cache keys) and exit",
    )
    add_threads(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model build`; return 0 on success, 1 on a failed build (the `build`
    extra missing included), 2 on bad input."""
    args = build_parser().parse_args(argv)
    names = args.heads or head_names(args.weights)
    if not names:
        print(
            f"loraroute model build: no heads under {args.weights} (each needs labels.json, "
            "head.npz, meta.json); train them with `loraroute model train`",
            file=sys.stderr,
        )
        return 2
    if args.print_hash:
        for name in names:
            print(f"{name} {build_hash(args.weights / name, args.default_variant)}")
        return 0
    for name in names:
        target = args.out / f"{MODEL_PREFIX}{name}"

        def say(msg: str, name: str = name) -> None:
            print(f"[{name}] {msg}", file=sys.stderr, flush=True)

        try:
            result = build(
                args.weights / name,
                target,
                default_variant=args.default_variant,
                use_cache=not args.no_cache,
                force=args.force,
                threads=args.threads,
                progress=say,
            )
        except (FileNotFoundError, ValueError) as exc:
            print(f"loraroute model build: {exc}", file=sys.stderr)
            return 2
        except (ImportError, RuntimeError) as exc:
            print(f"loraroute model build: {name}: {exc}", file=sys.stderr)
            return 1
        verb = {"current": "is current", "restored": "restored from cache", "built": "built"}
        print(f"{result.path} {verb[result.status]} (hash {result.hash})")
    return 0
