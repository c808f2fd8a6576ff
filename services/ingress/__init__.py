"""The HTTP ingress: OpenAI-compatible front door that hands requests to NATS and relays replies.

`app.build_app` wires it; `cli.main` runs it (`loraroute ingress`). Submodules are imported where
used, so the plain ones (`validation`, `models`, `headers`, ...) load without NATS or Starlette.
"""

__all__: list[str] = []
