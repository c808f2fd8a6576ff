"""The dispatcher service: applies a route to the body and calls vLLM.

`apply` (route -> body), `endpoints` (which vLLM to try), `upstream` (the HTTP client) and
`dispatch` (retries, deadline, replies) are plain modules; `handlers` and `app` are the NATS
side; `cli` runs it. Nothing is re-exported here.
"""

__all__: list[str] = []
