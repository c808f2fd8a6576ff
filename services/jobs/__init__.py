"""The jobs worker: runs batch job lines from JetStream through the pipeline, finalizes batches.

`run_line` (one line through the classifier's job lane), `start` (an input file into lines),
`finalize` (the final state and the output and error files), `dead_letters` (lines that will
not run), `store` (batches in KV, files in the Object Store), `consumers` (the durable
consumers' settings) and `pull` (fetching with bounded concurrency) are plain modules;
`handlers` and `app` are the NATS side; `cli` runs it. Nothing is re-exported here.
"""

__all__: list[str] = []
