"""The `loraroute` command: one sub-command per service or tool.

Each sub-command lives in the module that owns it and exposes `main(argv) -> int`: a service's
runner is that service's `cli` module, the tools are modules of this package. This module only
maps names to those modules, importing one lazily so that, for example, `loraroute config check`
never loads onnxruntime and `loraroute mock-vllm` never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "dispatch", "main"]

#: sub-command -> (module, one-line help). The module's `main(argv)` gets the remaining arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "loraroute.launcher",
        "run the whole system: nats-server, mock vLLM, classifier, dispatcher, jobs, ingress",
    ),
    "ingress": ("services.ingress.cli", "run the HTTP ingress alone"),
    "classifier": ("services.classifier.cli", "run a classifier worker alone"),
    "dispatcher": ("services.dispatcher.cli", "run a dispatcher alone"),
    "jobs": ("services.jobs.cli", "run a jobs worker alone"),
    "mock-vllm": ("services.mockvllm.cli", "run the vLLM stand-in"),
    "config": (
        "loraroute.config_check",
        "check a config file, push it as the live config, or read the live one",
    ),
    "model": ("loraroute.model_verbs", "build, train or evaluate the default classifier"),
    "classify": ("loraroute.classify", "classify one text with the configured model"),
    "batch": ("loraroute.batch", "submit, follow, download or cancel a batch (OpenAI Batch API)"),
    "keys": (
        "loraroute.keys",
        "add an API key for the ingress: `loraroute keys add FILE --name N`",
    ),
    "openapi": ("loraroute.openapi", "print the ingress's OpenAPI document (JSON)"),
}


def _usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    width = max(map(len, commands))
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in commands.items()]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: Sequence[str]) -> int:
    """Run `commands[argv[0]]`'s module's `main(argv[1:])` and return its exit status.

    `commands` maps a name to `(module, one-line help)`; the module is imported only when its
    command runs. No command, or `-h`, prints the usage (exit 0 for help, 2 for none); an
    unknown command prints the usage on stderr and returns 2.
    """
    args = list(argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage(prog, commands))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sub-command named by the first argument; return its exit status."""
    return dispatch("loraroute", COMMANDS, sys.argv[1:] if argv is None else argv)
