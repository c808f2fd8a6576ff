"""Addresses and secrets from the environment, read once at start-up.

Knobs live in the config file (`schemas.config`); the environment carries only where things are
(`LORAROUTE_NATS_URL`: one server, or a cluster's nodes as comma-separated URLs;
`LORAROUTE_CONFIG`) and secrets (NATS credentials, the vLLM API key, the ingress's API keys), so
that a config file can be shared and committed while secrets stay out of it and out of the logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_CONFIG_PATH", "DEFAULT_NATS_URL", "Settings"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_CONFIG_PATH = "config/config.yaml"


@dataclass(frozen=True, slots=True)
class Settings:
    """What the environment says. Secrets are excluded from `repr`, so logging this is safe."""

    nats_url: str = DEFAULT_NATS_URL
    """One NATS URL or several, comma-separated (see `services.common.bus.server_list`)."""
    config_path: str = DEFAULT_CONFIG_PATH
    nats_token: str | None = field(default=None, repr=False)
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_creds: str | None = None
    """Path of a NATS `.creds` file (the path is not secret; its content is)."""
    vllm_api_key: str | None = field(default=None, repr=False)
    api_keys: str | None = field(default=None, repr=False)
    """`LORAROUTE_API_KEYS`: the ingress's plain API keys (`schemas.apikeys.parse_env_keys`)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `LORAROUTE_*` variables; empty values count as unset."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        return cls(
            nats_url=get("LORAROUTE_NATS_URL") or DEFAULT_NATS_URL,
            config_path=get("LORAROUTE_CONFIG") or DEFAULT_CONFIG_PATH,
            nats_token=get("LORAROUTE_NATS_TOKEN"),
            nats_user=get("LORAROUTE_NATS_USER"),
            nats_password=get("LORAROUTE_NATS_PASSWORD"),
            nats_creds=get("LORAROUTE_NATS_CREDS"),
            vllm_api_key=get("LORAROUTE_VLLM_API_KEY"),
            api_keys=get("LORAROUTE_API_KEYS"),
        )

    def nats_options(self) -> dict[str, str]:
        """Keyword arguments for `nats.connect` carrying the credentials that are set."""
        options: dict[str, str] = {}
        if self.nats_token:
            options["token"] = self.nats_token
        if self.nats_user:
            options["user"] = self.nats_user
        if self.nats_password:
            options["password"] = self.nats_password
        if self.nats_creds:
            options["user_credentials"] = self.nats_creds
        return options
