"""The jobs worker: runs batch job lines from JetStream through the pipeline and finalizes batches."""

__all__: list[str] = []
