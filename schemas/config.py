"""The configuration schema: the upstream LoRA-routing guide's keys verbatim, plus our own sections.

Loading is three steps: YAML -> plain data (PyYAML), plain data -> typed `Config` (msgspec, which
rejects unknown keys and out-of-range values), then `check` for the rules that span several fields
(a `lora_name` must be declared under its model, endpoints must exist, ...). `load_config` runs all
three and raises `ConfigError` carrying *every* problem found, each with its path and, where the
YAML has it, its line; a bad config therefore never starts a service.

Relative paths in the config (model directories, mapping files) are resolved against the current
working directory, as upstream does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from schemas import upstream_compat

__all__ = [
    "DEFAULT_AUTO_MODEL_NAMES",
    "DEFAULT_REASONING_FAMILIES",
    "Batching",
    "Category",
    "CategoryModel",
    "Classifier",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Dispatcher",
    "Inference",
    "Ingress",
    "IngressAdmin",
    "IngressAuth",
    "IngressHttp",
    "Jobs",
    "Limits",
    "Liveness",
    "Lora",
    "LoraAffinity",
    "ModelConfig",
    "ModelScore",
    "ModelTarget",
    "Nats",
    "ReasoningFamily",
    "Routing",
    "Tracing",
    "VllmEndpoint",
    "check",
    "decode_config",
    "load_config",
    "parse_config",
]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every config table.

    `forbid_unknown_fields`: a misspelt key (`treshold`) is an error, not a setting silently left
    at its default. `kw_only`: fields are named in YAML, never positional.
    """


# --------------------------------------------------------------------------- the guide's keys


class CategoryModel(_Strict):
    """`classifier.category_model`: the domain classifier."""

    model_id: str
    """Model directory (upstream layout: `model.onnx` or `onnx/*.onnx`, `tokenizer.json`,
    `config.json`, `category_mapping.json`)."""
    use_modernbert: bool = False
    """Accepted for compatibility; the architecture is read from the model directory."""
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.6
    """Below this confidence a request has no category and goes to `default_model`. Too low routes
    doubtful requests to a specialist adapter; too high sends most traffic to the default."""
    use_cpu: bool = True
    """Run on the CPU even where a CUDA provider is available."""
    category_mapping_path: str | None = None
    """`category_mapping.json`; defaults to the one inside `model_id`."""


class Classifier(_Strict):
    """`classifier`: the guide's classifier section."""

    category_model: CategoryModel


class VllmEndpoint(_Strict):
    """`vllm_endpoints[]`: one vLLM server."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    address: Annotated[str, msgspec.Meta(min_length=1)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    weight: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    """Share of this model's traffic among its `preferred_endpoints`; 0 keeps it as a standby."""
    scheme: Literal["http", "https"] = "http"
    """Addition: `https` for a TLS-terminated vLLM."""

    @property
    def base_url(self) -> str:
        """`scheme://address:port`, without a trailing slash."""
        return f"{self.scheme}://{self.address}:{self.port}"


class Lora(_Strict):
    """`model_config.<model>.loras[]`: an adapter served on top of the base model."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    description: str = ""
    path: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """Addition: the adapter's directory as the vLLM servers see it (vLLM resolves a relative
    path against its own working directory). With a path, the dispatcher loads the adapter at
    run time (`POST /v1/load_lora_adapter`) on one endpoint when none of the base model's
    endpoints lists it, and unloads it when it leaves the config (`dispatcher.lora_affinity`)."""


class ModelConfig(_Strict):
    """`model_config.<model>`: a base model, its endpoints and its adapters."""

    reasoning_family: str | None = None
    """Key into `reasoning_families`; how reasoning is switched on and off for this model."""
    preferred_endpoints: list[str] = msgspec.field(default_factory=list)
    """Names from `vllm_endpoints`; empty means every endpoint."""
    loras: list[Lora] = msgspec.field(default_factory=list)


ReasoningEffort = Literal["minimal", "low", "medium", "high"]


class ModelScore(_Strict):
    """`categories[].model_scores[]`: one candidate for a category; the highest score wins."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    lora_name: str | None = None
    """The adapter to send as `model`; unset means the base model itself."""
    score: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    use_reasoning: bool | None = None
    """True/False sends an explicit on/off through the model's reasoning family; unset sends nothing."""
    reasoning_effort: ReasoningEffort | None = None
    """This candidate's effort; falls back to `routing.default_reasoning_effort`."""
    weight: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    """Addition (A/B between adapter versions): this entry's share of its category's traffic
    among the entries that share the top score (unset counts as 1, so ties split evenly; 0
    takes none while another tied entry has weight). Ignored below the top score."""


class Category(_Strict):
    """`categories[]`: a domain, its system prompt and its candidate models."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    description: str = ""
    system_prompt: str | None = None
    model_scores: list[ModelScore] = msgspec.field(default_factory=list)
    mmlu_categories: list[str] | None = None
    """Addition (upstream v0.3's name): the classifier labels that count as this category, so a
    14-label model can drive fewer categories; their probabilities are summed. Default: `[name]`."""

    @property
    def labels(self) -> list[str]:
        """The classifier labels that map to this category."""
        return [self.name] if self.mmlu_categories is None else list(self.mmlu_categories)


class ReasoningFamily(_Strict):
    """`reasoning_families.<name>`: how a model family expresses reasoning on/off and effort."""

    type: Literal["chat_template_kwargs", "reasoning_effort", "top_level_reasoning_effort"]
    parameter: Annotated[str, msgspec.Meta(min_length=1)]


# --------------------------------------------------------------------------- our own sections


class Nats(_Strict):
    """`nats`: the message bus. The server URL itself comes from `--nats` or `LORAROUTE_NATS_URL`."""

    subject_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")] = (
        "loraroute"
    )
    """Prefix of every subject, so several deployments can share one NATS cluster."""


class IngressAuth(_Strict):
    """`ingress.auth`: API keys at the door (`schemas.apikeys`). With no key configured here or
    in `LORAROUTE_API_KEYS`, every request is let in."""

    keys_file: str | None = None
    """YAML file of hashed keys (`loraroute keys add FILE` writes entries), read at start-up."""


class IngressAdmin(_Strict):
    """`ingress.admin`: a separate listener for `/metrics` and `/ready`."""

    host: str | None = None
    """Admin listen address; null: `ingress.host`."""
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    """With a port, `/metrics` and `/ready` are served there only (404 on the public port);
    null: on the public port, open to every client."""


class IngressHttp(_Strict):
    """`ingress.http`: limits on a connection before its request is read."""

    header_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 10.0
    """A connection must deliver a request's whole header within this long (from connecting, or
    from the first byte of a later request on a kept-alive one), else it is closed (408 when
    part of a header came). Too small cuts off clients on slow links; too large lets idle or
    slow-loris connections hold sockets."""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 32 * 1024
    """Request line plus headers; larger gets 431 and the connection closes."""
    backlog: Annotated[int, msgspec.Meta(ge=1)] = 4096
    """Connections the kernel queues before the ingress accepts them (capped by the kernel's
    `net.core.somaxconn`). Too small drops connection attempts in a burst, which clients retry
    only after 1, 3, 7 s; too large only holds kernel memory."""


class Ingress(_Strict):
    """`ingress`: the HTTP front door."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8080
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024
    """Larger bodies get 413. Too small rejects long conversations; too large lets one client
    make every stage copy megabytes."""
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 300.0
    """Deadline for a whole request; past it the client gets 504 and queued work is dropped."""
    classify_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 10.0
    """Deadline for the classification API (`/api/v1/classify/*`)."""
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 4096
    """Requests one ingress process holds open at once; beyond it new ones get 429 at once.
    Too small refuses bursts the pipeline could absorb; too large lets a stalled pipeline pile
    up open connections and memory in the ingress."""
    retry_after_s: Annotated[int, msgspec.Meta(ge=0)] = 1
    """`Retry-After` sent with 429 (overloaded). Too small makes clients hammer a saturated
    classifier; too large leaves capacity idle after a burst."""
    max_classify_texts: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 100
    """Texts one `/api/v1/classify/batch` call may carry (400 beyond). Too large lets one call
    occupy the classifier's batches and delay chat traffic."""
    ready_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    """How long `/ready` waits for each worker kind's ping answer."""
    auth: IngressAuth = msgspec.field(default_factory=IngressAuth)
    admin: IngressAdmin = msgspec.field(default_factory=IngressAdmin)
    http: IngressHttp = msgspec.field(default_factory=IngressHttp)


class Routing(_Strict):
    """`routing`: how a request becomes a route (DESIGN section 4)."""

    auto_model_names: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_AUTO_MODEL_NAMES)
    )
    """`model` values that ask for classification; any configured model or adapter passes through."""
    system_prompt_mode: Literal["insert", "replace"] = "insert"
    """`insert` puts the category's prompt before an existing system message's text; `replace`
    overwrites it. Without a system message, both add one first."""
    history_user_turns: Annotated[int, msgspec.Meta(ge=0, le=8)] = 1
    """Earlier user turns classified with the last one, each as a text of its own in the same
    queue (0: the last user message only). A follow-up without topic words ("and what if he
    refuses?") then inherits the conversation's topic; each turn costs one more text."""
    history_weight: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    """Weight of the turn before the last one relative to the last (1); the turn before that
    weighs its square, and so on. Lower follows a topic change in the last turn sooner; 0
    classifies the last turn only."""
    max_text_chars: Annotated[int, msgspec.Meta(ge=16)] = 2048
    """Text classified is cut to this many characters (head and tail kept) before tokenizing;
    the tokenizer then truncates at the model's max length. Both are counted, never silent."""
    default_reasoning_effort: ReasoningEffort = "medium"
    ab_key_header: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]+$")] | None = None
    """Request header whose value picks the A/B variant among a category's top-score entries
    (e.g. `x-user-id`: a user stays on one variant). Unset, or absent from a request: the
    request id decides, so a retried request with the same `x-request-id` lands alike."""


class Batching(_Strict):
    """`batching`: the classifier's micro-batcher (DESIGN section 6)."""

    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    """Larger batches raise throughput on 2+ cores but each request waits for the whole batch."""
    max_batch_tokens: Annotated[int, msgspec.Meta(ge=16)] = 8192
    """Padded cost budget (longest x count); stops one long text from inflating a whole batch."""
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0.0)] = 2.0
    """How long a batch may wait to fill while another batch runs (with `run_when_idle`; else
    always). 0: classify whatever is queued at once."""
    run_when_idle: bool = True
    """When no batch is running or ready to run, classify what is queued at once instead of
    waiting `max_wait_ms` for batch mates: nothing would run meanwhile, so the wait only adds
    latency. Batches still grow under load, from what arrives while one runs. false: every
    batch waits up to `max_wait_ms` (holds requests in the queue on purpose)."""
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Requests waiting beyond this are refused at once (overloaded) rather than queued forever."""
    max_job_queue: Annotated[int, msgspec.Meta(ge=1)] = 256
    """Job lines (the `classify_jobs` lane) waiting beyond this are refused at once (overloaded;
    the jobs worker retries the line later). Job lines never take an interactive slot and run
    only when no interactive request waits, so a larger bound costs interactive requests
    nothing but memory; it should cover the jobs workers' `jobs.concurrency` together, or
    lines bounce between refusal and retry while the model sits idle. Too large only lets
    lines wait past their deadline behind sustained interactive load."""
    max_job_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    """Most job lines in one batch (at most `max_batch_size`). An interactive request that
    arrives while a job batch runs waits for it to finish, so this bounds what a running batch
    job adds to interactive latency; smaller costs job throughput (less work per forward pass)."""
    job_quiet_s: Annotated[float, msgspec.Meta(ge=0.0)] | None = 2.0
    """After this long without an interactive request, job batches grow to `max_batch_size`, so
    a batch job alone runs at the model's full throughput; the first interactive request after
    such a quiet spell may then wait behind one full-size job batch. `null`: job batches always
    stay at `max_job_batch_size`. Too small lets short gaps in interactive traffic admit large
    job batches; too large keeps a lone batch job at small batches longer."""


class Inference(_Strict):
    """`inference`: how the classifier reads a text: spelling correction, the ONNX Runtime session."""

    correct_spelling: bool = True
    """Mend misspelt words (an English dictionary, one or two edits away) in the classifier's
    copy of the text before tokenizing; what vLLM answers is never changed. It wins back most of
    what typos cost in accuracy for a fraction of a millisecond per text; it can mistake a rare
    name at the start of a sentence for a typo. Turn it off for languages other than English."""

    intra_op_threads: Annotated[int, msgspec.Meta(ge=0)] = 1
    """Threads for one batch. 1 costs the least CPU per request: a second thread wakes for every
    operator, and a short text's forward pass gains nothing from it. Set the cores the classifier
    has to itself (2 on its own two cores) to speed up large batches. 0 lets ONNX Runtime take
    one thread per physical core, each pinned to its core, where it waits whenever that core
    is busy with other work."""
    inter_op_threads: Annotated[int, msgspec.Meta(ge=1)] = 1
    spin_wait: bool = False
    """Let idle ONNX Runtime threads busy-wait for the next batch. Saves a little latency under
    sustained load; costs CPU between requests that the other services on the machine need."""
    onnx_file: str | None = None
    """Graph to load, relative to the model directory, instead of the upstream search
    (`model.onnx`, then `onnx/*.onnx`). A built model's `model.onnx` is its static int8 graph;
    `onnx/model_fp32.onnx` is the unquantized one, about half as fast on CPUs."""


class LoraAffinity(_Strict):
    """`dispatcher.lora_affinity`: send a request to an endpoint that already holds its adapter.

    Every `poll_interval_s` the dispatcher reads each endpoint's `/v1/models` (the adapters it
    serves) and `/metrics` (`vllm:lora_requests_info`: running and waiting adapters, `max_lora`;
    `vllm:num_requests_running`/`waiting`), off the request path. An adapter request then goes,
    among the route's endpoints that are up and weighted, first to one where the adapter sits in
    a LoRA slot, then to one with a free slot, then to one whose slot holder is idle, and last to
    one that does not list the adapter; ties keep the weighted order."""

    enabled: bool = True
    """Off: endpoints are chosen by weight alone, and no adapter is loaded or unloaded."""
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0.0)] = 2.0
    """How often each endpoint is read. Shorter follows other dispatchers' traffic sooner;
    each poll costs every vLLM two small GETs."""
    poll_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 2.0
    """A poll slower than this fails; after a failed poll an endpoint's adapters count as
    unknown (neither preferred nor avoided)."""
    max_extra_load: Annotated[int, msgspec.Meta(ge=0)] = 8
    """An endpoint keeps its affinity preference only while its load (requests in flight from
    this dispatcher, or vLLM's running plus waiting, whichever is larger) exceeds the least
    loaded candidate's by at most this many requests; beyond, it is chosen by weight like the
    others, so one hot adapter does not pile onto one server. 0 prefers only among the least
    loaded."""
    load_adapters: bool = True
    """Load adapters that have a `path` where no endpoint lists them, and unload those removed
    from the config. Needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1` on the vLLM servers."""


class Dispatcher(_Strict):
    """`dispatcher`: calls to vLLM."""

    max_connections_per_endpoint: Annotated[int, msgspec.Meta(ge=1)] = 256
    """Requests in flight to one vLLM at once; more wait for a connection."""
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 5.0
    """A connect slower than this counts as a dead endpoint and is retried elsewhere."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Endpoints tried per request, only while nothing has been sent to the client."""
    check_response_model: bool = True
    """Fail a response whose `model` differs from the adapter asked for (a misconfigured vLLM)."""
    lora_affinity: LoraAffinity = msgspec.field(default_factory=LoraAffinity)
    first_byte_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 120.0
    """vLLM's first byte must come this soon after the call: a stream's first chunk, or a
    non-streamed answer's head, which vLLM sends only once the whole answer is generated (so
    this also bounds a non-streamed generation). Past it: 504, tried on another endpoint while
    nothing reached the client. Too small cuts long non-streamed answers and requests queued in
    a busy vLLM; too large lets a hung vLLM hold its clients that long."""
    between_chunks_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 30.0
    """Longest silence of vLLM between two chunks of an answer (a stream's events, the pieces
    of a body); past it the stream ends with an in-band 504 error. Too small cuts streams that
    vLLM pauses (preemption under memory pressure); too large holds a client on a stuck stream."""


DEFAULT_AUTO_MODEL_NAMES: tuple[str, ...] = ("MoM", "auto", "vllm-sr/auto")

DEFAULT_REASONING_FAMILIES: dict[str, ReasoningFamily] = {
    "qwen3": ReasoningFamily(type="chat_template_kwargs", parameter="enable_thinking"),
    "deepseek": ReasoningFamily(type="chat_template_kwargs", parameter="thinking"),
    "gpt-oss": ReasoningFamily(type="reasoning_effort", parameter="reasoning_effort"),
    "mistral": ReasoningFamily(type="top_level_reasoning_effort", parameter="reasoning_effort"),
}


class Liveness(_Strict):
    """`liveness`: how lost work is noticed. A worker that holds a request (a classifier's queue,
    a dispatcher waiting for vLLM) sends its requester a small keepalive when it has sent it
    nothing for `heartbeat_s`; a requester (the ingress, the jobs worker) that hears nothing for
    `stall_s` takes the request as lost (its worker died, or the bus dropped its reply) and
    answers an explicit error instead of waiting for the deadline. Every process must read the
    same values."""

    heartbeat_s: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    """How long a worker holds a request silently before sending a keepalive (a worker checks
    its requests every `heartbeat_s`, so the longest silence is under two). Smaller detects lost
    work sooner with `stall_s`, for more keepalives from slow requests."""
    stall_s: Annotated[float, msgspec.Meta(gt=0.0)] = 5.0
    """Silence after which a requester gives a request up as lost; at least three heartbeats
    (the longest silence of a live request is under two, plus room for a busy process). Too
    small fails live requests on a machine so loaded that keepalives come late; too large makes
    clients of a dead worker wait that long."""


class Jobs(_Strict):
    """`jobs`: asynchronous batch jobs on JetStream (the OpenAI Batch API and the raw queue).

    Lines wait in a work-queue stream until a jobs worker runs them through the classifier's job
    lane and a dispatcher; results, batches and files live in JetStream (a results stream, a KV
    bucket, an Object Store bucket). Streams and buckets are created at start-up when missing.
    """

    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Copies of every job stream and bucket: 1 on one server, 3 on a three-node cluster (a
    node may then fail without losing a line). More than the cluster's nodes cannot start."""
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 100 * 1024 * 1024
    """Largest file `POST /v1/files` accepts (413 beyond). Files are stored whole in the Object
    Store: too large lets one upload fill the server's disk."""
    max_lines: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    """Most lines in one batch input file; a larger file is refused at batch creation."""
    max_line_bytes: Annotated[int, msgspec.Meta(ge=256)] = 512 * 1024
    """Largest line of an input file; a longer line goes to the error file, the rest runs. Must
    stay below the NATS payload limit (1 MiB by default) with room for the envelope."""
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Lines one jobs worker runs at once. Too small leaves the pipeline idle between lines; too
    large crowds the classifier's job lane (which refuses beyond its queue) and vLLM."""
    max_deliver: Annotated[int, msgspec.Meta(ge=1)] = 5
    """Deliveries of one line before it goes to the dead-letter stream with its last error."""
    backoff_s: list[Annotated[float, msgspec.Meta(gt=0.0)]] = msgspec.field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0]
    )
    """Waits before each redelivery of a failed line (the last repeats)."""
    line_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 600.0
    """Deadline of one line's run through the pipeline; the line's ack wait is a little longer,
    so a worker that dies mid-line has the line redelivered after about this long."""
    retention_s: Annotated[float, msgspec.Meta(gt=0.0)] = 7 * 24 * 3600.0
    """How long lines, results, dead letters, batches and files are kept (stream `max_age`,
    bucket TTL). Too short drops a slow batch's results before anyone reads them."""
    completion_windows: list[Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]*[smh]$")]] = (
        msgspec.field(default_factory=lambda: ["24h"])
    )
    """`completion_window` values `POST /v1/batches` accepts (OpenAI accepts `24h`). A batch
    whose lines are not done within its window ends `expired`, finished lines kept. A number
    with `s`, `m` or `h`; short windows serve tests and demos."""


class Tracing(_Strict):
    """`tracing`: OpenTelemetry spans of each request, exported over OTLP/HTTP. Off by default;
    needs the `tracing` extra (`pip install 'loraroute[tracing]'`) when on.

    Every service makes its own spans (ingress, classifier, dispatcher with its call to vLLM,
    jobs worker) and links them through the W3C `traceparent` that travels with the request.
    """

    enabled: bool = False
    """Export spans. Off: the OpenTelemetry packages are not even imported."""
    endpoint: str = ""
    """OTLP/HTTP traces URL, e.g. `http://collector:4318/v1/traces`. Empty: the exporter's own
    environment (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`), else
    `http://localhost:4318/v1/traces`."""
    service_name_prefix: str = "loraroute-"
    """Each process reports as `<prefix><service>` (`loraroute-ingress`, ...)."""
    sample_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0
    """Share of new traces recorded; a request that arrives with a sampled `traceparent` is
    always recorded (parent-based sampling), so a trace is never cut in the middle."""


class Limits(_Strict):
    """`limits`: how much one chat request may ask of the system, checked before it is published
    (the ingress for `/v1/chat/completions`, the jobs worker for each Batch API line, the
    ingress for every JSON body's depth). A request beyond a cap gets 400 naming the field.

    vLLM bounds little of this itself (`n` up to 16384, `max_tokens` up to the model's context),
    and every choice and every token is GPU time and reply bytes the router has to carry, so
    the defaults are set for interactive traffic; raise them for deployments that need more.
    """

    max_n: Annotated[int, msgspec.Meta(ge=1)] = 16
    """Largest `n` (choices per request). Each choice is a full generation on vLLM, and a
    non-streamed answer holds them all; 16 covers best-of-n sampling."""
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 32_768
    """Largest `max_tokens` and `max_completion_tokens`. Above the output limit of most
    served models (vLLM refuses more than the context anyway), while bounding what one
    request may hold a GPU for."""
    max_min_tokens: Annotated[int, msgspec.Meta(ge=0)] = 32_768
    """Largest `min_tokens` (a vLLM extra that forces at least this many tokens, ignoring the
    end of the answer)."""
    max_messages: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Most entries in `messages`. Long agent conversations stay well below it; the body size
    (`ingress.max_body_bytes`) bounds the bytes, this bounds the per-message work."""
    max_json_depth: Annotated[int, msgspec.Meta(ge=8, le=512)] = 64
    """Deepest nesting of arrays and objects in a JSON body (chat, classification and batch
    requests). A chat request needs about 6 levels, a tool's JSON schema some 20 more; far
    deeper nesting only serves to exhaust a parser (Python's decoders give up near 1000)."""


class Config(_Strict):
    """The whole file. The first five keys are the upstream guide's; the rest are additions."""

    classifier: Classifier
    vllm_endpoints: list[VllmEndpoint]
    model_config: dict[str, ModelConfig]
    default_model: Annotated[str, msgspec.Meta(min_length=1)]
    categories: list[Category]
    nats: Nats = msgspec.field(default_factory=Nats)
    ingress: Ingress = msgspec.field(default_factory=Ingress)
    routing: Routing = msgspec.field(default_factory=Routing)
    batching: Batching = msgspec.field(default_factory=Batching)
    inference: Inference = msgspec.field(default_factory=Inference)
    dispatcher: Dispatcher = msgspec.field(default_factory=Dispatcher)
    jobs: Jobs = msgspec.field(default_factory=Jobs)
    limits: Limits = msgspec.field(default_factory=Limits)
    liveness: Liveness = msgspec.field(default_factory=Liveness)
    reasoning_families: dict[str, ReasoningFamily] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_REASONING_FAMILIES)
    )
    """Replaces the defaults (qwen3, deepseek, gpt-oss, mistral) as a whole when given."""
    tracing: Tracing = msgspec.field(default_factory=Tracing)

    def base_model_of(self, name: str) -> str | None:
        """The base model serving `name` (itself for a base model, the parent for an adapter)."""
        if name in self.model_config:
            return name
        for base, model in self.model_config.items():
            if any(lora.name == name for lora in model.loras):
                return base
        return None

    def target_of(self, model: str | None) -> ModelTarget | None:
        """What a request's `model` asks for, or None when the name is unknown (vLLM's 404).

        An auto name (`routing.auto_model_names`) asks for classification; a configured base
        model or adapter passes through unchanged. A missing or empty `model` means
        `default_model`, passed through, as vLLM takes it to mean its base model. The ingress
        (404 at the door) and the classifier (the passthrough route) both decide by this.
        """
        if model is not None and model in self.routing.auto_model_names:
            return _AUTO
        name = model or self.default_model
        base = self.base_model_of(name)
        if base is None:
            return None
        return ModelTarget(kind="passthrough", model=name, base_model=base)


class ModelTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where a request goes (`Config.target_of`): `auto` (classify; `model` and `base_model`
    empty), or `passthrough` to `model` (a base model or an adapter) served by `base_model`."""

    kind: Literal["auto", "passthrough"]
    model: str = ""
    base_model: str = ""


_AUTO = ModelTarget(kind="auto")


# --------------------------------------------------------------------------- errors


class ConfigIssue(msgspec.Struct, frozen=True):
    """One problem: where (`path`, `line` when the YAML has it) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigError(ValueError):
    """The config is invalid; `issues` lists every problem found (never empty)."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "") -> None:
        self.issues = list(issues)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(map(str, self.issues)))


# --------------------------------------------------------------------------- loading

_PATH_TOKEN = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[['\"]?([^\]'\"]+)['\"]?\]")


def _yaml_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path of a YAML document to its 1-based line (keys, not values)."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return lines


def _split_path(path: str) -> tuple[str | int, ...]:
    """`categories[1].model_scores[0]` or msgspec's `$.categories[1]...` -> key tuple."""
    text = path.removeprefix("$")
    if text and not text.startswith((".", "[")):
        text = "." + text
    parts: list[str | int] = []
    for name, index, key in _PATH_TOKEN.findall(text):
        parts.append(name or (int(index) if index else key))
    return tuple(parts)


def _line_for(path: str, lines: Mapping[tuple[str | int, ...], int]) -> int | None:
    keys = _split_path(path)
    while keys:
        if keys in lines:
            return lines[keys]
        keys = keys[:-1]
    return None


def _from_validation_error(error: msgspec.ValidationError) -> ConfigIssue:
    text = str(error)
    message, _, where = text.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        message = "unknown key (not part of the schema; check its spelling)"
    return ConfigIssue(path=path, message=message)


def decode_config(data: Any) -> Config:
    """Turn plain data (as parsed from YAML) into a typed `Config`, without cross-checks.

    Raises `ConfigError` with the first type or range problem msgspec finds.
    """
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "the config must be a mapping of keys to values")])
    try:
        return msgspec.convert(data, Config, str_keys=True)
    except msgspec.ValidationError as error:
        issue = _from_validation_error(error)
        resolved = _resolve_elided(data, issue.path)
        raise ConfigError([ConfigIssue(resolved, issue.message)]) from error


def _resolve_elided(data: Any, path: str) -> str:
    """`path` with msgspec's `[...]` (a mapping key it does not name) replaced by the first key
    whose value holds the rest of the path, e.g. `model_config[...].pii_polcy` ->
    `model_config['llama2-7b'].pii_polcy`; unchanged when nothing matches."""
    head, sep, tail = path.partition("[...]")
    if not sep:
        return path
    node: Any = data
    for part in _split_path(head):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return path
    if not isinstance(node, dict):
        return path
    rest = _split_path(tail)
    for key, value in node.items():
        found: Any = value
        for part in rest[:-1]:
            try:
                found = found[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            if not rest or (isinstance(found, dict) and rest[-1] in found):
                return _resolve_elided(data, f"{head}[{str(key)!r}]{tail}")
    return path


def load_config(
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
) -> tuple[Config, list[ConfigIssue]]:
    """Read, type and cross-check the YAML file at `path` (see `parse_config`).

    Raises `ConfigError` listing every error, each with the YAML line where available, and
    `OSError` when the file cannot be read.
    """
    return parse_config(Path(path).read_text(encoding="utf-8"), str(path), labels=labels)


def parse_config(
    text: str,
    source: str = "",
    *,
    labels: Sequence[str] | None = None,
) -> tuple[Config, list[ConfigIssue]]:
    """Type and cross-check the YAML document `text` (a file, or a revision of the live config).

    `labels` are the classifier's labels when known (from the model directory); with them, every
    category must be reachable. Returns the config and its warnings (problems that do not stop
    routing, e.g. an undefined reasoning family, or keys of the upstream schema that loraroute
    does not implement: one warning naming each). Raises `ConfigError` listing every error,
    each with the YAML line where available; `source` names the document in its message.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue("", f"not valid YAML: {error}", line)], source) from error
    lines = _yaml_lines(text)
    decisions = upstream_compat.decisions_format_key(data)
    if decisions is not None:
        message = upstream_compat.decisions_format_message()
        raise ConfigError([ConfigIssue(decisions, message, _line_for(decisions, lines))], source)
    ignored = upstream_compat.strip_upstream_keys(data)
    try:
        config = decode_config(data)
    except ConfigError as error:
        raise ConfigError(
            [ConfigIssue(i.path, i.message, _line_for(i.path, lines)) for i in error.issues], source
        ) from error
    errors, warnings = check(config, labels=labels)
    errors = [ConfigIssue(i.path, i.message, _line_for(i.path, lines)) for i in errors]
    warnings = [ConfigIssue(i.path, i.message, _line_for(i.path, lines)) for i in warnings]
    if errors:
        raise ConfigError(errors, source)
    if ignored:
        named = "; ".join(
            f"{path} (line {_line_for(path, lines)}: {meaning})" for path, meaning in ignored
        )
        warnings.append(
            ConfigIssue(
                "",
                f"{len(ignored)} key(s) of the upstream semantic-router schema that loraroute "
                f"does not implement are ignored: {named}",
            )
        )
    return config, warnings


# --------------------------------------------------------------------------- cross-checks


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def check(
    config: Config, *, labels: Sequence[str] | None = None
) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """The rules that span several fields. Returns `(errors, warnings)`; never raises.

    Errors: undeclared adapters, unknown models or endpoints, duplicate names, a `default_model`
    that is neither a base model nor an adapter, auto names that shadow a model, and (when
    `labels` is given) categories no classifier label reaches or labels claimed twice.
    Warnings: reasoning families the config does not define (no reasoning field is sent).
    """
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []

    endpoint_names = [e.name for e in config.vllm_endpoints]
    for name in _duplicates(endpoint_names):
        index = endpoint_names.index(name, endpoint_names.index(name) + 1)
        errors.append(ConfigIssue(f"vllm_endpoints[{index}].name", f"duplicate endpoint {name!r}"))
    if not config.vllm_endpoints:
        errors.append(ConfigIssue("vllm_endpoints", "at least one endpoint is required"))

    if not config.model_config:
        errors.append(ConfigIssue("model_config", "at least one base model is required"))
    adapter_owner: dict[str, str] = {}
    for model_name, model in config.model_config.items():
        where = f"model_config[{model_name!r}]"
        for i, endpoint in enumerate(model.preferred_endpoints):
            if endpoint not in endpoint_names:
                errors.append(
                    ConfigIssue(
                        f"{where}.preferred_endpoints[{i}]",
                        f"{endpoint!r} is not an endpoint in vllm_endpoints "
                        f"(known: {', '.join(endpoint_names) or 'none'})",
                    )
                )
        for i, lora in enumerate(model.loras):
            if lora.name in config.model_config:
                errors.append(
                    ConfigIssue(
                        f"{where}.loras[{i}].name",
                        f"{lora.name!r} is also a base model name; vLLM could not tell them apart",
                    )
                )
            elif lora.name in adapter_owner:
                owner = adapter_owner[lora.name]
                other = "this model" if owner == model_name else f"model_config[{owner!r}]"
                errors.append(
                    ConfigIssue(
                        f"{where}.loras[{i}].name",
                        f"duplicate adapter {lora.name!r} (already declared under {other})",
                    )
                )
            else:
                adapter_owner[lora.name] = model_name
        family = model.reasoning_family
        if family is not None and family not in config.reasoning_families:
            warnings.append(
                ConfigIssue(
                    f"{where}.reasoning_family",
                    f"{family!r} is not defined in reasoning_families; no reasoning field will be "
                    f"sent for this model (defined: {', '.join(config.reasoning_families)})",
                )
            )

    known_models = set(config.model_config) | set(adapter_owner)
    if config.default_model not in known_models:
        errors.append(
            ConfigIssue(
                "default_model",
                f"{config.default_model!r} is neither a base model in model_config nor a "
                "declared adapter",
            )
        )

    category_names = [c.name for c in config.categories]
    for name in _duplicates(category_names):
        index = category_names.index(name, category_names.index(name) + 1)
        errors.append(ConfigIssue(f"categories[{index}].name", f"duplicate category {name!r}"))
    for ci, category in enumerate(config.categories):
        top = max((s.score for s in category.model_scores), default=None)
        tied = [s for s in category.model_scores if s.score == top]
        if len(tied) > 1 and all(s.weight == 0 for s in tied):
            errors.append(
                ConfigIssue(
                    f"categories[{ci}].model_scores",
                    "every entry sharing the top score has weight 0; give one a weight",
                )
            )
        for si, score in enumerate(category.model_scores):
            where = f"categories[{ci}].model_scores[{si}]"
            base = config.model_config.get(score.model)
            if base is None:
                errors.append(
                    ConfigIssue(
                        f"{where}.model",
                        f"{score.model!r} is not a base model in model_config "
                        f"(known: {', '.join(config.model_config) or 'none'})",
                    )
                )
                continue
            if score.lora_name is not None and all(
                lora.name != score.lora_name for lora in base.loras
            ):
                errors.append(
                    ConfigIssue(
                        f"{where}.lora_name",
                        f"{score.lora_name!r} is not declared in "
                        f"model_config[{score.model!r}].loras",
                    )
                )

    for i, name in enumerate(config.routing.auto_model_names):
        if name in known_models:
            errors.append(
                ConfigIssue(
                    f"routing.auto_model_names[{i}]",
                    f"{name!r} is also a model name; requests for it could not pass through",
                )
            )

    liveness = config.liveness
    if liveness.stall_s < 3 * liveness.heartbeat_s:
        errors.append(
            ConfigIssue(
                "liveness.stall_s",
                f"{liveness.stall_s:g} s is less than three heartbeats "
                f"(liveness.heartbeat_s {liveness.heartbeat_s:g} s): live requests would be "
                "given up as lost",
            )
        )

    if labels is not None:
        label_set = set(labels)
        claimed: dict[str, str] = {}
        for ci, category in enumerate(config.categories):
            where = f"categories[{ci}]"
            mapped = [label for label in category.labels if label in label_set]
            if not mapped:
                key = "mmlu_categories" if category.mmlu_categories is not None else "name"
                errors.append(
                    ConfigIssue(
                        f"{where}.{key}",
                        f"category {category.name!r} is reached by no classifier label "
                        f"(model labels: {', '.join(labels)}); list the labels that mean it "
                        "under mmlu_categories",
                    )
                )
            for li, label in enumerate(category.labels):
                if label not in label_set:
                    if category.mmlu_categories is not None:
                        errors.append(
                            ConfigIssue(
                                f"{where}.mmlu_categories[{li}]",
                                f"{label!r} is not a label of the classifier",
                            )
                        )
                elif label in claimed:
                    errors.append(
                        ConfigIssue(
                            f"{where}.mmlu_categories[{li}]" if category.mmlu_categories else where,
                            f"label {label!r} already maps to category {claimed[label]!r}",
                        )
                    )
                else:
                    claimed[label] = category.name
    return errors, warnings
