"""The live config's watch on a real nats-server: applied, refused, deleted, waited for."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from prometheus_client import CollectorRegistry

from schemas.config import Config, ConfigError, ConfigIssue, Nats, load_config, parse_config
from services.common.live_config import (
    CONFIG_KEY,
    LiveConfig,
    config_bucket,
    fetch_stored,
    restart_needed,
    startup_config,
)
from services.common.subjects import Subjects


def _text(repo_root: Path, prefix: str, **changes: Any) -> str:
    data = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    data["nats"] = {"subject_prefix": prefix}
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


def test_revisions_are_applied_refused_and_reported(nats_url: str, repo_root: Path) -> None:
    prefix = f"live{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        applied: list[tuple[int, str]] = []

        async def apply(config: Config, revision: int) -> None:
            if config.default_model == "legal-lora":
                raise ConfigError([ConfigIssue("default_model", "this service refuses it")])
            applied.append((revision, config.default_model))

        registry = CollectorRegistry()
        nc = await nats.connect(nats_url)
        try:
            live_local = _local(repo_root, prefix)
            live = LiveConfig(live_local, service="test", apply=apply, registry=registry)
            await live.start(nc)
            kv = await config_bucket(nc.jetstream(), Subjects(prefix))

            first = await kv.put(
                CONFIG_KEY, _text(repo_root, prefix, default_model="medical-lora").encode()
            )
            await _until(lambda: live.revision == first)
            assert applied == [(first, "medical-lora")]
            assert registry.get_sample_value("loraroute_config_revision") == first
            assert live.config.default_model == "medical-lora"

            # Not valid at all, and valid but refused by the service: both leave it as it was.
            broken = await kv.put(CONFIG_KEY, b"default_model: [")
            refused = await kv.put(
                CONFIG_KEY, _text(repo_root, prefix, default_model="legal-lora").encode()
            )
            await _until(lambda: live.seen == refused)
            assert broken < refused and live.revision == first
            assert registry.get_sample_value("loraroute_config_revision") == first
            await live.wait_for(refused)  # seen (refused) counts: no wait

            # A deleted key keeps the running config too.
            await kv.delete(CONFIG_KEY)
            await _until(lambda: live.seen > refused)
            assert live.revision == first

            # A request routed under a revision not seen yet waits for it.
            waiter = asyncio.create_task(live.wait_for(live.seen + 1, timeout_s=10.0))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            later = await kv.put(
                CONFIG_KEY, _text(repo_root, prefix, default_model="technical-lora").encode()
            )
            await asyncio.wait_for(waiter, 10.0)
            assert live.seen == later and applied[-1] == (later, "technical-lora")
            # One that never comes is waited for only up to the timeout.
            await live.wait_for(later + 100, timeout_s=0.2)
            await live.stop()

            stored = await fetch_stored(nats_url, Subjects(prefix), {})
            assert stored is not None and stored.revision == later
            config, revision, _ = await startup_config(nats_url, live_local, {}, "test")
            assert revision == later and config.default_model == "technical-lora"
        finally:
            await nc.close()

    asyncio.run(scenario())


def _local(repo_root: Path, prefix: str) -> Config:
    """The shipped config under a subject prefix (and so a bucket) of the test's own."""
    local = load_config(repo_root / "config" / "config.yaml")[0]
    return msgspec.structs.replace(local, nats=Nats(subject_prefix=prefix))


def test_without_a_stored_revision_the_local_file_runs(nats_url: str, repo_root: Path) -> None:
    mine = _local(repo_root, f"live{uuid.uuid4().hex[:8]}")
    config, revision, warnings = asyncio.run(startup_config(nats_url, mine, {}, "test"))
    assert (config, revision, warnings) == (mine, 0, [])


def test_restart_only_settings_are_named(repo_root: Path) -> None:
    old = load_config(repo_root / "config" / "config.yaml")[0]
    data = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    data["batching"]["max_batch_size"] = 8
    data["ingress"]["port"] = 9999
    data["categories"][0]["model_scores"][0]["score"] = 0.5  # live: not named
    new = parse_config(yaml.safe_dump(data))[0]
    assert restart_needed(old, new) == ["batching", "ingress.port"]
    assert restart_needed(old, new, "classifier") == ["batching"]
    assert restart_needed(old, new, "dispatcher") == []


def test_no_bucket_means_no_stored_revision(nats_url: str) -> None:
    stored = asyncio.run(fetch_stored(nats_url, Subjects(f"none{uuid.uuid4().hex[:8]}"), {}))
    assert stored is None
