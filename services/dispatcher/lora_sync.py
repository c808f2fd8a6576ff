"""Keeps `LoraState` in step with the vLLM endpoints, and the endpoints' adapters in step with the
config: reads every endpoint, loads adapters nobody serves, unloads adapters the config dropped.

`LoraSync.apply(config)` is the one entry point for a config: the dispatcher calls it at start
and with every new revision of the config. It reads every endpoint now (`/v1/models`,
`/metrics`), then reconciles, and returns what it did. Between calls, `run()` repeats the same
every `dispatcher.lora_affinity.poll_interval_s`, off the request path; a failed read only makes
that endpoint's adapters unknown until the next.

Reconciling, with `lora_affinity.load_adapters` on:

- An adapter with a `path` that none of its base model's endpoints lists (among those read) is
  loaded on one of them (`POST /v1/load_lora_adapter`), picked by rendezvous hashing of the
  adapter's name over the weighted endpoints, so dispatcher replicas pick the same one. vLLM's
  400 "has already been loaded" (another replica was first) counts as success. Endpoints that
  were not read are left alone: a server that was down is dealt with when it answers again,
  and an adapter that a restarted server lost is loaded again.
- An adapter that an earlier config gave a `path` and the new config no longer declares is
  unloaded (`POST /v1/unload_lora_adapter`) from every endpoint that lists it; 404 (not there)
  counts as success. An unload that fails is retried at every read until it succeeds. Adapters
  the dispatcher never managed (vLLM's own `--lora-modules`) are never unloaded.

Failures are logged with vLLM's message and retried at the next read; a 404 `{"detail": "Not
Found"}` means the server runs without `VLLM_ALLOW_RUNTIME_LORA_UPDATING`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field

import aiohttp
import structlog

from schemas.config import Config, VllmEndpoint
from schemas.errors import parse_error_body
from services.dispatcher.lora_state import (
    LoraState,
    Polled,
    adapters_of,
    parse_metrics,
    parse_models,
)

__all__ = ["LoraSync", "Reconciled"]

_log = structlog.get_logger("loraroute.dispatcher.lora")

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
#: Longest wait for a load or unload (vLLM reads the adapter from disk before answering).
CONTROL_TIMEOUT_S = 60.0


@dataclass(slots=True)
class Reconciled:
    """What one `apply` (or one periodic round) did: `(adapter, endpoint)` pairs loaded and
    unloaded, and the failures as `(adapter, endpoint, message)`."""

    loaded: list[tuple[str, str]] = field(default_factory=list)
    unloaded: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)


class _CallError(Exception):
    """A control call to vLLM failed (no answer, or an answer that is not success)."""


def _score(adapter: str, endpoint: str) -> bytes:
    return hashlib.blake2b(f"{adapter}\0{endpoint}".encode(), digest_size=8).digest()


class LoraSync:
    """The reads and the loads for one dispatcher. Create inside a running loop; `close()`."""

    def __init__(self, state: LoraState, config: Config, *, api_key: str | None = None) -> None:
        self.state = state
        self.config = config
        self._managed: dict[str, str] = {}  # adapter -> base model, for adapters with a path
        self._unload: set[str] = set()  # adapters to unload wherever they are listed
        self._lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._logged: set[tuple[str, str]] = set()  # failures already logged, to log each once
        state.configure(config)

    async def apply(self, config: Config) -> Reconciled:
        """Follow `config` from now on: read every endpoint, then load and unload adapters.
        Never raises for vLLM's failures (they are in the result and the log)."""
        async with self._lock:
            self.config = config
            self.state.configure(config)
            managed = {name: base for base, name, path in adapters_of(config) if path}
            self._unload |= set(self._managed) - set(managed) - self.state.adapters
            self._unload -= self.state.adapters
            self._managed = managed
            return await self._round()

    async def run(self) -> None:
        """Read and reconcile every `poll_interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self.config.dispatcher.lora_affinity.poll_interval_s)
            async with self._lock:
                with contextlib.suppress(Exception):
                    await self._round()

    async def close(self) -> None:
        await self._session.close()

    # ------------------------------------------------------------------------ one round
    async def _round(self) -> Reconciled:
        done = Reconciled()
        if not self.config.dispatcher.lora_affinity.enabled:
            return done
        endpoints = self.config.vllm_endpoints
        await asyncio.gather(*(self._read(e) for e in endpoints))
        if self.config.dispatcher.lora_affinity.load_adapters:
            await self._unload_dropped(done)
            await self._load_missing(done)
        return done

    async def _read(self, endpoint: VllmEndpoint) -> None:
        timeout = self.config.dispatcher.lora_affinity.poll_timeout_s
        try:
            models = parse_models(await self._call("GET", endpoint, "/v1/models", timeout))
            metrics = parse_metrics(
                (await self._call("GET", endpoint, "/metrics", timeout)).decode("utf-8", "replace")
            )
        except (_CallError, ValueError) as error:
            self.state.failed(endpoint.name)
            self._once("read", endpoint.name, "lora_poll_failed", str(error))
            return
        self._logged.discard(("read", endpoint.name))
        self.state.observe(
            endpoint.name,
            Polled(
                listed=models,
                running=metrics.running,
                waiting=metrics.waiting,
                max_lora=metrics.max_lora,
                queued=metrics.queued,
            ),
        )

    def _endpoints_of(self, base: str) -> list[VllmEndpoint]:
        model = self.config.model_config.get(base)
        names = model.preferred_endpoints if model is not None else []
        return [e for e in self.config.vllm_endpoints if not names or e.name in names]

    async def _load_missing(self, done: Reconciled) -> None:
        paths = {name: path for _, name, path in adapters_of(self.config) if path}
        for name, base in self._managed.items():
            read = [
                e for e in self._endpoints_of(base) if self.state.view(e.name).listed is not None
            ]
            if not read or any(name in (self.state.view(e.name).listed or ()) for e in read):
                continue
            weighted = [e for e in read if e.weight > 0] or read
            target = max(weighted, key=lambda e: _score(name, e.name))
            body = {"lora_name": name, "lora_path": paths[name]}
            try:
                await self._call("POST", target, LOAD_PATH, None, body, ok_if="already been loaded")
            except _CallError as error:
                done.failed.append((name, target.name, str(error)))
                self._once(name, target.name, "adapter_load_failed", str(error))
                continue
            self._logged.discard((name, target.name))
            self.state.listed(target.name, name, present=True)
            done.loaded.append((name, target.name))
            _log.info("adapter_loaded", adapter=name, endpoint=target.name, path=paths[name])

    async def _unload_dropped(self, done: Reconciled) -> None:
        for name in sorted(self._unload):
            holders = [
                e
                for e in self.config.vllm_endpoints
                if name in (self.state.view(e.name).listed or ())
            ]
            left = False
            for endpoint in holders:
                try:
                    await self._call(
                        "POST", endpoint, UNLOAD_PATH, None, {"lora_name": name}, ok_status=404
                    )
                except _CallError as error:
                    left = True
                    done.failed.append((name, endpoint.name, str(error)))
                    self._once(name, endpoint.name, "adapter_unload_failed", str(error))
                    continue
                self.state.listed(endpoint.name, name, present=False)
                done.unloaded.append((name, endpoint.name))
                _log.info("adapter_unloaded", adapter=name, endpoint=endpoint.name)
            # Endpoints not read this round may still hold it: keep it until all were read.
            unread = any(self.state.view(e.name).listed is None for e in self.config.vllm_endpoints)
            if not left and not unread:
                self._unload.discard(name)

    # ------------------------------------------------------------------------ HTTP
    async def _call(
        self,
        method: str,
        endpoint: VllmEndpoint,
        path: str,
        timeout_s: float | None,
        body: dict[str, str] | None = None,
        *,
        ok_if: str | None = None,
        ok_status: int | None = None,
    ) -> bytes:
        """One control call; returns the body of a 200 (or of an error accepted as success:
        `ok_status`, or a 400 whose message contains `ok_if`). Raises `_CallError`."""
        url = endpoint.base_url + path
        timeout = aiohttp.ClientTimeout(
            total=timeout_s or CONTROL_TIMEOUT_S,
            sock_connect=self.config.dispatcher.connect_timeout_s,
        )
        try:
            async with self._session.request(
                method, url, json=body, headers=self._auth, timeout=timeout
            ) as response:
                data = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _CallError(f"{method} {url}: {error!r}") from error
        if status == 200:
            return data
        info = parse_error_body(data, status)
        if status == 404 and data.startswith(b'{"detail"'):  # FastAPI's: no such route
            raise _CallError(
                f"{method} {url}: 404 {info.message} (is runtime LoRA updating off? vLLM needs "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)"
            )
        if status == ok_status or (status == 400 and ok_if is not None and ok_if in info.message):
            return data
        raise _CallError(f"{method} {url}: {status} {info.message}")

    def _once(self, key: str, endpoint: str, event: str, message: str) -> None:
        """Log a failure the first time it happens (it is retried every round)."""
        if (key, endpoint) in self._logged:
            return
        self._logged.add((key, endpoint))
        _log.warning(
            event, adapter=None if key == "read" else key, endpoint=endpoint, error=message
        )
