"""Writing and reading the live config: `loraroute config push FILE` and `loraroute config get`.

`push` stores a validated file's text as a new revision of the KV bucket `<prefix>_config`
(`services.common.live_config`), where every service picks it up between requests. The text is
stored verbatim (comments kept), so `get` gives back the file that was pushed. A push whose
text equals the stored revision's stores nothing and reports that revision. Settings that the
services read only at start-up (`live_config.RESTART_ONLY`) are named when a push changes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError

from schemas.config import Config, parse_config
from services.common import bus
from services.common.live_config import CONFIG_KEY, config_bucket, restart_needed
from services.common.subjects import Subjects

__all__ = ["Pushed", "get_text", "push_text"]


@dataclass(frozen=True)
class Pushed:
    """What a push did: the revision now stored, whether it was already stored (`unchanged`),
    and the start-up-only settings it changes (`restart_keys`)."""

    revision: int
    unchanged: bool
    restart_keys: list[str]


async def push_text(
    nats_url: str, text: str, config: Config, credentials: dict[str, str]
) -> Pushed:
    """Store `text` (already checked: it is `config`) as the next live config revision of
    `config.nats.subject_prefix`'s deployment; the bucket is created when missing."""
    options: dict[str, Any] = dict(credentials)
    nc = await bus.connect(nats_url, name="loraroute-config-push", **options)
    try:
        kv = await config_bucket(
            nc.jetstream(), Subjects(config.nats.subject_prefix), config.jobs.replicas
        )
        restart: list[str] = []
        try:
            current = await kv.get(CONFIG_KEY)
        except KeyNotFoundError:
            current = None
        if current is not None and current.value and current.revision is not None:
            stored = current.value.decode("utf-8", errors="replace")
            if stored == text:
                return Pushed(current.revision, True, [])
            try:
                restart = restart_needed(parse_config(stored)[0], config)
            except ValueError:  # the stored revision no longer parses: nothing to compare
                restart = []
        revision = await kv.put(CONFIG_KEY, text.encode("utf-8"))
        return Pushed(revision, False, restart)
    finally:
        await bus.close(nc)


async def get_text(
    nats_url: str, prefix: str, credentials: dict[str, str], revision: int | None = None
) -> tuple[str, int] | None:
    """The stored live config's text and revision (`revision`: that one, if still kept), or
    None when there is none."""
    options: dict[str, Any] = dict(credentials)
    nc = await bus.connect(nats_url, name="loraroute-config-get", **options)
    try:
        kv = await config_bucket(nc.jetstream(), Subjects(prefix))
        try:
            entry = await kv.get(CONFIG_KEY, revision=revision)
        except KeyNotFoundError:
            return None
        if not entry.value or entry.revision is None:
            return None
        return entry.value.decode("utf-8", errors="replace"), entry.revision
    finally:
        await bus.close(nc)
