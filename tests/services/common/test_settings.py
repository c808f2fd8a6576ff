from __future__ import annotations

import os
import ssl
from pathlib import Path

import nkeys
import pytest
import trustme

from loraroute.natsserver import NatsServer
from services.common import bus
from services.common.settings import DEFAULT_CONFIG_PATH, DEFAULT_NATS_URL, Settings


def test_defaults_when_unset_or_empty() -> None:
    settings = Settings.from_env({"LORAROUTE_NATS_URL": "  "})
    assert settings.nats_url == DEFAULT_NATS_URL
    assert settings.config_path == DEFAULT_CONFIG_PATH
    assert settings.nats_options() == {}


def test_reads_addresses_and_secrets() -> None:
    settings = Settings.from_env(
        {
            "LORAROUTE_NATS_URL": "nats://bus:4222",
            "LORAROUTE_CONFIG": "prod.yaml",
            "LORAROUTE_NATS_TOKEN": "s3cret",
            "LORAROUTE_VLLM_API_KEY": "sk-abc",
        }
    )
    assert (settings.nats_url, settings.config_path) == ("nats://bus:4222", "prod.yaml")
    assert settings.nats_options() == {"token": "s3cret"}
    assert settings.vllm_api_key == "sk-abc"


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {"LORAROUTE_NATS_PASSWORD": "hunter2", "LORAROUTE_VLLM_API_KEY": "sk-abc"}
    )
    assert "hunter2" not in repr(settings) and "sk-abc" not in repr(settings)


def test_tls_files_make_a_context(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_pem, client_pem = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    ca.issue_cert("client").private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    settings = Settings.from_env(
        {
            "LORAROUTE_NATS_TLS_CA": str(ca_pem),
            "LORAROUTE_NATS_TLS_CERT": str(client_pem),
            "LORAROUTE_NATS_TLS_KEY": str(client_pem),
        }
    )
    context = settings.nats_options()["tls"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [
        c["subject"] for c in ssl.create_default_context(cafile=str(ca_pem)).get_ca_certs()
    ]


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings.from_env({"LORAROUTE_NATS_TLS_CERT": str(tmp_path / "c.pem")}).nats_options()
    with pytest.raises(OSError):
        Settings.from_env({"LORAROUTE_NATS_TLS_CA": str(tmp_path / "missing.pem")}).nats_options()


async def test_an_nkey_seed_logs_in(tmp_path: Path) -> None:
    """An NKey user (the server knows only its public key) connects through the settings."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "user.nk").write_bytes(seed)
    config = f'authorization: {{users: [{{nkey: "{public}"}}]}}\n'
    settings = Settings.from_env({"LORAROUTE_NATS_NKEY": str(tmp_path / "user.nk")})
    assert settings.nats_options() == {"nkeys_seed": str(tmp_path / "user.nk")}
    with NatsServer(store_dir=tmp_path / "nats", jetstream=False, extra_config=config) as server:
        nc = await bus.connect(server.url, name="nkey-user", **settings.nats_options())
        assert nc.is_connected
        await bus.close(nc)
