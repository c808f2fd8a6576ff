"""The `loraroute` command: one sub-command per service or tool.

Each sub-command lives in the module that owns it and exposes `main(argv) -> int`;
this file only maps names to those modules, importing one lazily so that, for example,
`loraroute config check` never loads onnxruntime and `loraroute mock-vllm` never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]

#: sub-command -> (module, one-line help). The module's `main(argv)` gets the remaining arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "services.launcher",
        "run the whole system: nats-server, mock vLLM, classifier, dispatcher, ingress",
    ),
    "ingress": ("services.ingress.cli", "run the HTTP ingress alone"),
    "classifier": ("services.classifier.worker_cli", "run a classifier worker alone"),
    "dispatcher": ("services.dispatcher.cli", "run a dispatcher alone"),
    "mock-vllm": ("services.mockvllm.cli", "run the vLLM stand-in"),
    "config": ("services.config_cli", "check a config file: `loraroute config check FILE`"),
    "model": ("services.classifier.model.cli", "build, train or evaluate the default classifier"),
    "classify": ("services.classifier.cli", "classify one text with the configured model"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: loraroute COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sub-command named by the first argument; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"loraroute: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(rest)


if __name__ == "__main__":
    raise SystemExit(main())
