"""`loraroute model build | train | eval`: dispatch to the module that owns each verb.

Each verb's module is imported only when used, so `build` on a current model directory
never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["VERBS", "main"]

#: verb -> (module with `main(argv) -> int`, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "build": (
        "services.classifier.model.build",
        "build models/loraroute-<head>/ from the committed weights (cached by content hash)",
    ),
    "train": ("services.classifier.model.train", "train the classifier heads (needs the data)"),
    "eval": (
        "services.classifier.model.evaluate",
        "measure a head or a built model on labelled data",
    ),
}


def _usage() -> str:
    lines = ["usage: loraroute model VERB [ARGS...]", "", "verbs:"]
    lines += [f"  {verb:<6} {doc}" for verb, (_, doc) in VERBS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb named by the first argument with the rest; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"loraroute model: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    entry: Callable[[list[str]], int] = importlib.import_module(VERBS[verb][0]).main
    return entry(rest)
