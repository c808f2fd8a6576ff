"""The `loraroute` command: one package for every sub-command a user types.

`commands` maps each sub-command to the module that runs it and imports that module only when
it runs; `python -m loraroute` and the installed `loraroute` script both call `commands.main`.
The service runners (`loraroute ingress`, `classifier`, `dispatcher`, `mock-vllm`) are each
service's own `cli` module; the rest lives here: `launcher` (`loraroute up`, with `natsserver`,
its embedded nats-server), `config_check` (`loraroute config check`), `classify`
(`loraroute classify`) and `model_verbs` (`loraroute model ...`, the model toolkit's verbs).
This is the one package that may import several services; no service imports it.
Nothing is re-exported here so that running one sub-command loads only what it needs.
"""

__all__: list[str] = []
