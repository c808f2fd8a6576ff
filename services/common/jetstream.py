"""The JetStream streams, consumers and buckets of the jobs, created at start-up when missing.

Every service that touches jobs (the ingress for the Batch API, the jobs workers) calls
`ensure_job_resources` when it starts. Creating is idempotent; an existing stream or bucket whose
settings differ from what the config asks for is an error naming each difference
(`JetStreamSetupError`), never a silent change: changing a live stream's retention or replicas
is an operator's decision.

| name (`Subjects`)   | subjects                        | kept                                  |
|---------------------|---------------------------------|---------------------------------------|
| `lines_stream`      | `<prefix>.jobs.lines.<job>`     | work queue: until a worker acks       |
| `results_stream`    | `<prefix>.jobs.results.<job>.*` | `jobs.retention_s`, deduplicated      |
| `dead_stream`       | `<prefix>.jobs.dead.<job>`      | `jobs.retention_s`                    |
| `control_stream`    | `<prefix>.jobs.control`         | work queue: until a worker acks       |
| `batches_bucket`    | KV: batch id -> `Batch`         | `jobs.retention_s`                    |
| `files_bucket`      | Object Store: file id -> bytes  | `jobs.retention_s`                    |
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BucketNotFoundError,
    NoKeysError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas.config import Jobs
from schemas.jobs import RequestCounts
from services.common.log import get_logger
from services.common.subjects import Subjects

__all__ = [
    "DUPLICATE_WINDOW_S",
    "JetStreamSetupError",
    "JobResources",
    "bucket_keys",
    "ensure_job_resources",
    "ensure_stream",
    "job_streams",
    "result_counts",
]

#: How long a `Nats-Msg-Id` is remembered: a line or result published again within it is
#: dropped as a duplicate. It covers the longest completion window, so a retried submission or
#: a redelivered line never runs or counts twice (capped by the retention).
DUPLICATE_WINDOW_S = 24 * 3600.0

#: The settings compared with an existing stream; a difference is a `JetStreamSetupError`.
_COMPARED = ("subjects", "retention", "storage", "num_replicas", "max_age", "duplicate_window")

#: The most subjects one stream-info reply lists (nats-server's `JSMaxSubjectDetails`).
_SUBJECTS_PER_REPLY = 100_000

_log = get_logger()


class JetStreamSetupError(Exception):
    """A stream or bucket exists with other settings than the config asks for, or cannot be
    created (e.g. more replicas than servers); the message names the stream and each setting."""


@dataclass(frozen=True)
class JobResources:
    """Handles on the jobs' buckets (the streams are reached by subject)."""

    batches: KeyValue
    files: ObjectStore


def job_streams(subjects: Subjects, jobs: Jobs) -> list[StreamConfig]:
    """The four job streams as the config asks for them (see the module's table)."""
    window = min(DUPLICATE_WINDOW_S, jobs.retention_s)

    def stream(name: str, subject: str, retention: RetentionPolicy) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=retention,
            storage=StorageType.FILE,
            num_replicas=jobs.replicas,
            max_age=jobs.retention_s,
            duplicate_window=window,
        )

    return [
        stream(subjects.lines_stream, subjects.job_lines_all, RetentionPolicy.WORK_QUEUE),
        stream(subjects.results_stream, subjects.job_results_all, RetentionPolicy.LIMITS),
        stream(subjects.dead_stream, subjects.job_dead_all, RetentionPolicy.LIMITS),
        stream(subjects.control_stream, subjects.jobs_control, RetentionPolicy.WORK_QUEUE),
    ]


def _differences(want: StreamConfig, have: StreamConfig) -> list[str]:
    found = []
    for field in _COMPARED:
        wanted, existing = getattr(want, field), getattr(have, field)
        if field in {"max_age", "duplicate_window"}:
            same = abs(float(wanted or 0) - float(existing or 0)) < 1e-3
        elif field == "subjects":
            same = sorted(wanted or []) == sorted(existing or [])
        else:
            same = wanted == existing
        if not same:
            found.append(f"{field}: the config asks for {wanted!r}, the stream has {existing!r}")
    return found


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream `config.name` if missing; raise `JetStreamSetupError` if it exists
    with other settings, or cannot be created."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except Exception as error:  # the server says why (replicas, limits, ...)
            raise JetStreamSetupError(f"stream {config.name}: cannot create it: {error}") from error
        return
    differences = _differences(config, info.config)
    if differences:
        raise JetStreamSetupError(
            f"stream {config.name} exists with other settings ("
            + "; ".join(differences)
            + "); change the config to match, or remove the stream to recreate it"
        )


async def _kv(js: JetStreamContext, subjects: Subjects, jobs: Jobs) -> KeyValue:
    bucket = subjects.batches_bucket
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=jobs.retention_s,
            storage=StorageType.FILE,
            replicas=jobs.replicas,
        )
        try:
            return await js.create_key_value(config)
        except Exception as error:
            raise JetStreamSetupError(f"KV bucket {bucket}: cannot create it: {error}") from error
    info = await js.stream_info(f"KV_{bucket}")
    if info.config.num_replicas != jobs.replicas:
        raise JetStreamSetupError(
            f"KV bucket {bucket} exists with {info.config.num_replicas} replicas, the config "
            f"asks for {jobs.replicas}"
        )
    return kv


async def _object_store(js: JetStreamContext, subjects: Subjects, jobs: Jobs) -> ObjectStore:
    bucket = subjects.files_bucket
    try:
        store = await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError):
        config = ObjectStoreConfig(
            bucket=bucket,
            ttl=jobs.retention_s,
            storage=StorageType.FILE,
            replicas=jobs.replicas,
        )
        try:
            return await js.create_object_store(bucket, config)
        except Exception as error:
            raise JetStreamSetupError(
                f"Object Store bucket {bucket}: cannot create it: {error}"
            ) from error
    info = await js.stream_info(f"OBJ_{bucket}")
    if info.config.num_replicas != jobs.replicas:
        raise JetStreamSetupError(
            f"Object Store bucket {bucket} exists with {info.config.num_replicas} replicas, "
            f"the config asks for {jobs.replicas}"
        )
    return store


async def ensure_job_resources(
    js: JetStreamContext, subjects: Subjects, jobs: Jobs, *, ready_timeout_s: float = 30.0
) -> JobResources:
    """Create every job stream and bucket that is missing; return the buckets' handles.

    Idempotent, so every process calls it at start-up. Raises `JetStreamSetupError`. A
    JetStream that does not answer yet (a cluster still electing its leader: a timeout or a
    503) is asked again, with backoff, for up to `ready_timeout_s`; then its error is raised.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_timeout_s
    delay = 0.25
    while True:
        try:
            for config in job_streams(subjects, jobs):
                await ensure_stream(js, config)
            return JobResources(
                batches=await _kv(js, subjects, jobs),
                files=await _object_store(js, subjects, jobs),
            )
        except (nats.errors.TimeoutError, ServiceUnavailableError) as error:
            if loop.time() + delay > deadline:
                raise
            _log.warning("jetstream_not_ready", error=repr(error), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def result_counts(js: JetStreamContext, subjects: Subjects, job_id: str) -> RequestCounts:
    """How many lines of `job_id` have a result: `completed` (status 200) and `failed`, read
    from the results stream's per-subject counts (deduplicated, so each line counts once).
    `total` is left 0: only the batch knows it."""
    ok, err = subjects.job_results(job_id, True), subjects.job_results(job_id, False)
    info = await js.stream_info(
        subjects.results_stream, subjects_filter=subjects.job_results(job_id)
    )
    counts = info.state.subjects or {}
    return RequestCounts(completed=counts.get(ok, 0), failed=counts.get(err, 0))


async def bucket_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """Every key of the KV `bucket`, read from its stream's per-subject counts: one request,
    and nothing left behind on the server.

    `KeyValue.keys()` reads them through an ordered consumer, which the server keeps for five
    minutes after the client has let it go: a jobs worker sweeping every 2 s kept dozens alive
    and the server's memory grew with them (docs/benchmarks.md, "Soak"). A deleted or purged key
    is listed until its marker expires, so callers skip keys they cannot read. A bucket with more
    keys than one reply lists falls back to `keys()`.
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    subjects = info.state.subjects or {}
    if len(subjects) < _SUBJECTS_PER_REPLY:
        return [subject[len(prefix) :] for subject in subjects]
    try:
        return list(await (await js.key_value(bucket)).keys())
    except NoKeysError:
        return []
