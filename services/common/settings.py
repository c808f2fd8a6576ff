"""Addresses and secrets from the environment, read once at start-up.

Knobs live in the config file (`schemas.config`); the environment carries only where things are
(`LORAROUTE_NATS_URL`: one server, or a cluster's nodes as comma-separated URLs;
`LORAROUTE_CONFIG`) and secrets (NATS credentials, the vLLM API key, the ingress's API keys), so
that a config file can be shared and committed while secrets stay out of it and out of the logs.
TLS to NATS is set here too, as file paths (`LORAROUTE_NATS_TLS_CA`, `_CERT`, `_KEY`): they
differ per deployment and per service, like the credentials they often sit beside.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    nats_nkey: str | None = None
    """Path of a file holding a NATS user's NKey seed (`SU...`)."""
    vllm_api_key: str | None = field(default=None, repr=False)
    api_keys: str | None = field(default=None, repr=False)
    """`LORAROUTE_API_KEYS`: the ingress's plain API keys (`schemas.apikeys.parse_env_keys`)."""
    nats_tls_ca: str | None = None
    """CA bundle (PEM) that verifies the NATS server's certificate; setting it turns TLS on."""
    nats_tls_cert: str | None = None
    """Client certificate (PEM) for servers that verify clients (`verify: true`); needs the key."""
    nats_tls_key: str | None = None

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
            nats_nkey=get("LORAROUTE_NATS_NKEY"),
            vllm_api_key=get("LORAROUTE_VLLM_API_KEY"),
            api_keys=get("LORAROUTE_API_KEYS"),
            nats_tls_ca=get("LORAROUTE_NATS_TLS_CA"),
            nats_tls_cert=get("LORAROUTE_NATS_TLS_CERT"),
            nats_tls_key=get("LORAROUTE_NATS_TLS_KEY"),
        )

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` carrying the credentials that are set, and
        `tls` (an `ssl.SSLContext`) when a TLS file is set.

        Raises `ValueError` for a client certificate without its key (or the reverse), and
        `OSError` / `ssl.SSLError` when a TLS file cannot be read.
        """
        options: dict[str, Any] = {}
        if self.nats_token:
            options["token"] = self.nats_token
        if self.nats_user:
            options["user"] = self.nats_user
        if self.nats_password:
            options["password"] = self.nats_password
        if self.nats_creds:
            options["user_credentials"] = self.nats_creds
        if self.nats_nkey:
            options["nkeys_seed"] = self.nats_nkey
        tls = self.nats_tls_context()
        if tls is not None:
            options["tls"] = tls
        return options

    def nats_tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for NATS (server verified against `nats_tls_ca`, or the system's CAs
        when only a client certificate is set); None when no TLS file is set."""
        if not (self.nats_tls_ca or self.nats_tls_cert or self.nats_tls_key):
            return None
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ValueError(
                "LORAROUTE_NATS_TLS_CERT and LORAROUTE_NATS_TLS_KEY go together: set both or neither"
            )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.nats_tls_ca)
        if self.nats_tls_cert and self.nats_tls_key:
            context.load_cert_chain(self.nats_tls_cert, self.nats_tls_key)
        return context
