"""`python -m loraroute ...`: the same as the installed `loraroute` command."""

from loraroute.commands import main

__all__: list[str] = []

raise SystemExit(main())
