"""`loraroute model build | train | average | memory | ranges | eval`: the model toolkit's verbs.

Each verb is a command-line module of the toolkit (`modelkit.cli.<module>`, exposing
`main(argv) -> int`), imported only when used, so `build` on a current model directory
never loads torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from loraroute.commands import dispatch

__all__ = ["VERBS", "main"]

#: verb -> (module with `main(argv) -> int`, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "build": (
        "modelkit.cli.build",
        "build models/loraroute-<head>/ from the committed weights (cached by content hash)",
    ),
    "train": ("modelkit.cli.train", "train the classifier heads (needs the data)"),
    "average": (
        "modelkit.cli.average",
        "average the weights of several training runs into one set of heads",
    ),
    "memory": (
        "modelkit.cli.memory",
        "give trained heads a nearest-neighbour memory of their training rows",
    ),
    "ranges": (
        "modelkit.cli.ranges",
        "measure the activation ranges the int8 build quantizes with",
    ),
    "eval": ("modelkit.cli.evaluate", "measure a head or a built model on labelled data"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb named by the first argument with the rest; return its exit status."""
    return dispatch("loraroute model", VERBS, sys.argv[1:] if argv is None else argv)
