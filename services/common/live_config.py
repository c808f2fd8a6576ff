"""The live config: one YAML document in a JetStream KV bucket that every service watches.

`loraroute config push FILE` validates a file (the checks of `loraroute config check`) and puts
its text in the bucket `<prefix>_config` under the key `config`; the bucket's revision number
is the config revision. Every service starts on the stored revision when there is one
(`fetch_stored`, read before the service is built), else on its local file (revision 0), and
then watches the key (`LiveConfig`): each new revision is decoded and checked again, handed to
the service's `apply` (which builds its derived state off the hot path and swaps one
reference), and reported (log `config_applied`, gauge `loraroute_config_revision`). A revision
that does not decode, fails a check, or that `apply` refuses (`ConfigError`) is logged as
`config_refused` with its errors; the running one stays.

Settings a service reads only at start-up (`RESTART_ONLY`) are applied with the rest of a
revision's content ignored for them: the service logs `config_restart_needed` naming them.

Requests carry the revision they were routed under (`Lr-Config-Revision`); a later stage that
has not yet seen it waits up to `WAIT_FOR_REVISION_S` for its watch to deliver it
(`wait_for`), so no request meets a stage that does not know the adapter, model or endpoint
an earlier stage chose.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from prometheus_client import CollectorRegistry, Gauge

from schemas.config import Config, ConfigError, parse_config
from services.common import bus
from services.common.subjects import Subjects

__all__ = [
    "BUCKET_HISTORY",
    "CONFIG_KEY",
    "RESTART_ONLY",
    "WAIT_FOR_REVISION_S",
    "Apply",
    "LiveConfig",
    "Stored",
    "config_bucket",
    "fetch_stored",
    "restart_needed",
    "startup_config",
]

_log = structlog.get_logger("loraroute.config")

#: The key of the live config in its bucket.
CONFIG_KEY = "config"
#: Revisions the bucket keeps (`loraroute config get --revision N`; a rollback re-pushes one).
BUCKET_HISTORY = 16
#: How long a stage waits for a revision a request was routed under before it goes on with
#: its own (a revision it refused counts as seen at once).
WAIT_FOR_REVISION_S = 2.0

#: Settings read once at start-up, and the services that read them: a pushed change takes
#: effect in those services at their next start.
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "nats.subject_prefix": ("ingress", "classifier", "dispatcher", "jobs"),
    "classifier.category_model.model_id": ("classifier",),
    "classifier.category_model.use_cpu": ("classifier",),
    "classifier.category_model.category_mapping_path": ("classifier",),
    "inference": ("classifier",),
    "batching": ("classifier",),
    "ingress.host": ("ingress",),
    "ingress.port": ("ingress",),
    "ingress.max_body_bytes": ("ingress",),
    "dispatcher.max_connections_per_endpoint": ("dispatcher",),
    "dispatcher.connect_timeout_s": ("dispatcher",),
    "dispatcher.first_byte_timeout_s": ("dispatcher",),
    "dispatcher.between_chunks_timeout_s": ("dispatcher",),
    "ingress.auth": ("ingress",),
    "ingress.admin": ("ingress",),
    "ingress.http": ("ingress",),
    "liveness": ("ingress", "classifier", "dispatcher", "jobs"),
    "limits": ("jobs",),
    "tracing": ("ingress", "classifier", "dispatcher", "jobs"),
    "jobs": ("ingress", "jobs"),
}

#: `apply(config, revision)`: the service's swap. Raises `ConfigError` to refuse the revision.
Apply = Callable[[Config, int], Awaitable[None]]


def _at(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return msgspec.to_builtins(value)


def restart_needed(old: Config, new: Config, service: str | None = None) -> list[str]:
    """The `RESTART_ONLY` settings that differ between `old` and `new` (for `service` only,
    when given)."""
    return [
        path
        for path, services in RESTART_ONLY.items()
        if (service is None or service in services) and _at(old, path) != _at(new, path)
    ]


async def config_bucket(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> KeyValue:
    """The live config's bucket, created (keeping `BUCKET_HISTORY` revisions) when missing."""
    try:
        return await js.key_value(subjects.config_bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=subjects.config_bucket,
                history=BUCKET_HISTORY,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )


class Stored(msgspec.Struct, frozen=True):
    """One revision of the live config as stored: its YAML text and its number."""

    text: str
    revision: int


async def fetch_stored(
    nats_url: str,
    subjects: Subjects,
    credentials: dict[str, str],
    timeout_s: float = 5.0,
    kind: str = "admin",
) -> Stored | None:
    """The stored live config, or None when there is none (or no JetStream to keep one).
    `kind` is the service kind reading it (its replies come to that kind's inbox prefix).

    Raises what `bus.connect` raises when NATS cannot be reached (tried twice, at once).
    """
    options: dict[str, Any] = dict(credentials)
    options.setdefault("inbox_prefix", subjects.inbox(kind))
    nc = await bus.connect(nats_url, name="loraroute-config-read", startup_attempts=2, **options)
    try:
        js = nc.jetstream(timeout=timeout_s)
        try:
            kv = await js.key_value(subjects.config_bucket)
            entry = await kv.get(CONFIG_KEY)
        except (BucketNotFoundError, KeyNotFoundError):
            return None
        except nats.errors.Error as error:  # e.g. a server without JetStream
            _log.warning("live_config_unavailable", error=repr(error))
            return None
        if not entry.value or entry.revision is None:
            return None
        return Stored(entry.value.decode("utf-8", errors="replace"), entry.revision)
    finally:
        await bus.close(nc)


async def startup_config(
    nats_url: str, local: Config, credentials: dict[str, str], service: str
) -> tuple[Config, int, list[str]]:
    """The config a service starts on: the stored revision when there is a valid one, else
    `local` (revision 0). Returns it, its revision and its warnings' texts (none for `local`,
    whose warnings the caller already has). NATS out of reach is not an error here: the
    service starts on `local`, and its watch brings the stored revision once it connects."""
    try:
        stored = await fetch_stored(
            nats_url, Subjects(local.nats.subject_prefix), credentials, kind=service
        )
    except (OSError, TimeoutError, nats.errors.Error) as error:
        _log.warning("live_config_unread", service=service, error=repr(error))
        return local, 0, []
    if stored is None:
        return local, 0, []
    try:
        config, warnings = parse_config(stored.text, f"live config revision {stored.revision}")
    except ConfigError as error:
        _log.error(
            "config_refused",
            service=service,
            revision=stored.revision,
            running=0,
            errors=[str(issue) for issue in error.issues],
        )
        return local, 0, []
    _log.info("config_from_bucket", service=service, revision=stored.revision)
    return config, stored.revision, [str(w) for w in warnings]


class LiveConfig:
    """One service's view of the live config: the running `config`, its `revision` (0: the
    local file), the newest revision it has `seen` (applied or refused) and the watch."""

    def __init__(
        self,
        config: Config,
        *,
        service: str,
        apply: Apply,
        registry: CollectorRegistry | None = None,
        revision: int = 0,
    ) -> None:
        self.config = config
        self.revision = revision
        self.seen = revision
        self.service = service
        self._apply = apply
        self._seen_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self.gauge = Gauge(
            "loraroute_config_revision",
            "The live config revision this process runs (0: its local file)",
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self.gauge.set(revision)

    async def start(self, nc: Client) -> None:
        """Watch the bucket (created when missing). Without JetStream the service runs on
        with its current config and says so (`live_config_unavailable`)."""
        subjects = Subjects(self.config.nats.subject_prefix)
        try:
            kv = await config_bucket(nc.jetstream(), subjects, self.config.jobs.replicas)
            self._watcher = await kv.watch(CONFIG_KEY)
        except (nats.errors.Error, OSError) as error:
            _log.warning("live_config_unavailable", service=self.service, error=repr(error))
            return
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching; never raises."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    async def wait_for(self, revision: int | None, timeout_s: float = WAIT_FOR_REVISION_S) -> None:
        """Return once this process has seen `revision` (applied or refused), or after
        `timeout_s`; at once for None or a revision already seen."""
        if revision is None or revision <= self.seen:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while revision > self.seen:
            left = deadline - loop.time()
            if left <= 0:
                _log.warning(
                    "config_revision_late", service=self.service, wanted=revision, seen=self.seen
                )
                return
            event = self._seen_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)

    async def _watch(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:  # the end of the stored values
                continue
            try:
                await self.take(entry.value, entry.revision, entry.operation)
            except Exception:  # a bug in a service's apply must not end the watch
                _log.exception("config_apply_failed", service=self.service)

    async def take(self, value: bytes | None, revision: int, operation: str | None = None) -> None:
        """Handle one stored revision: decode, check, apply, report (see the module docstring)."""
        if revision <= self.seen:
            return
        try:
            if operation in (KV_DEL, KV_PURGE) or not value:
                _log.warning(
                    "config_deleted", service=self.service, revision=revision, running=self.revision
                )
                return
            source = f"live config revision {revision}"
            try:
                config, _warnings = parse_config(value.decode("utf-8", errors="replace"), source)
                restart = restart_needed(self.config, config, self.service)
                await self._apply(config, revision)
            except ConfigError as error:
                _log.error(
                    "config_refused",
                    service=self.service,
                    revision=revision,
                    running=self.revision,
                    errors=[str(issue) for issue in error.issues],
                )
                return
            self.config, self.revision = config, revision
            self.gauge.set(revision)
            _log.info("config_applied", service=self.service, revision=revision)
            if restart:
                _log.warning(
                    "config_restart_needed", service=self.service, revision=revision, keys=restart
                )
        finally:
            self.seen = max(self.seen, revision)
            event, self._seen_changed = self._seen_changed, asyncio.Event()
            event.set()
