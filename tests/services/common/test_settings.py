from __future__ import annotations

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
