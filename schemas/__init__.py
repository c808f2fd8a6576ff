"""The contracts of loraroute: the config schema, NATS wire messages and OpenAI types.

This package imports only msgspec, PyYAML and the standard library, so every service
(and every tool that validates a config) can depend on it without pulling in the rest.
"""
