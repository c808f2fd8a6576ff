"""The command lines of the toolkit's verbs: `loraroute model build|train|average|memory|eval`.

One module per verb, each with only its argument parser and `main(argv) -> int`, which parses
and calls the library module of the same name; the flags several verbs share are defined once
in `flags`.
"""

__all__ = ["average", "build", "evaluate", "flags", "memory", "train"]
