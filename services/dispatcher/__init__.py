"""The dispatcher service: applies a route to the body and calls vLLM.

`apply` (route -> body), `endpoints` (which vLLM to try), `upstream` (the HTTP client),
`dispatch` (retries, deadline, replies) and `cancels` (which requests a cancellation stops) are
plain modules; `handlers` and `app` are the NATS side; `cli` runs it. Nothing is re-exported here.
"""

__all__: list[str] = []
