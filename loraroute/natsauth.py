"""Who may do what on NATS: one user per service kind, and the subjects each kind needs.

`loraroute up` runs its nats-server with authentication on: `Credentials.generate()` makes a
fresh random password per kind for every run, `server_config` writes the server's
`authorization` block with the permissions of `permissions(kind, ...)`, each child gets only its
own kind's user and password through its environment (`env`), and the whole set lands in a 0600
file of the data directory (`write_credentials`) for the operator (`admin`) and for tests. The
passwords are never printed or logged.

The table, for subject prefix `P` (`B`: `P` with dots as underscores, for JetStream names):

- ingress: publishes requests (`P.classify`), cancels (`P.cancel.*`) and probes
  (`P.ping.>`), reads only its own inboxes (`_INBOX.P.ingress.>`); the Batch API's JetStream:
  `$JS.API.>`, the KV and Object Store buckets, the control stream.
- classifier: reads `P.classify`, `P.classify.jobs`, `P.cancel.*` and its bounce subjects
  (`P.bounce.>`); publishes dispatches (`P.dispatch.*`) and answers only through NATS response
  permissions: to the reply subject of a request it received, within `responses_expire_s`.
- dispatcher: reads `P.dispatch.*`, `P.ping.dispatch.*` and `P.cancel.*`; publishes into the
  requesters' inboxes (`_INBOX.P.ingress.>`, `_INBOX.P.jobs.>`). Not through response
  permissions: the request reaches it with the classifier's bounce subject as NATS reply (which
  is how a missing dispatcher becomes an immediate 503) and the inbox in `Lr-Reply-To`.
- jobs: publishes lines to the job lane (`P.classify.jobs`) and its streams' subjects
  (`P.jobs.>`), uses JetStream (`$JS.API.>`, acks, the buckets), reads its own inboxes and the
  max-deliveries advisory of the lines consumer.
- admin: everything (operators, the `nats` command-line tool).

Nobody else may publish into an inbox, on a dispatch subject or on a cancel subject, and nobody
but admin may subscribe to `>`.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.subjects import Subjects

__all__ = [
    "KINDS",
    "SERVICE_KINDS",
    "Credentials",
    "ServerTls",
    "env",
    "permissions",
    "read_credentials",
    "route_config",
    "server_config",
    "write_credentials",
]

#: The users `loraroute up` creates: one per service kind, and `admin` for operators.
KINDS = ("ingress", "classifier", "dispatcher", "jobs", "admin")
#: What each running service connects as; `loraroute up` passes it to the children of that kind.
SERVICE_KINDS = ("ingress", "classifier", "dispatcher", "jobs")
#: Answers a classifier may send to one request's reply subject (an answer or an error, and room
#: for progress messages); a count is all NATS can bound.
RESPONSE_MAX_MSGS = 1000


@dataclass(frozen=True, slots=True)
class Credentials:
    """One NATS user and its password. The password is left out of `repr`."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=...)"

    @classmethod
    def generate(cls, kinds: tuple[str, ...] = KINDS) -> dict[str, Credentials]:
        """A fresh user per kind (named after it) with a random 192-bit password."""
        return {kind: cls(kind, secrets.token_urlsafe(24)) for kind in kinds}


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS for nats-server's client port: its certificate and key (PEM), and optionally the CA
    that client certificates must be signed by (`ca_file`; with `verify` clients must present
    one)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify: bool = False

    def block(self) -> dict[str, Any]:
        tls: dict[str, Any] = {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}
        if self.ca_file is not None:
            tls["ca_file"] = str(self.ca_file)
        if self.verify:
            tls["verify"] = True
        return tls


def permissions(kind: str, subjects: Subjects, responses_expire_s: float) -> dict[str, Any]:
    """The nats-server `permissions` of `kind` (see the module docstring for the table).

    `responses_expire_s` bounds how long after receiving a request a classifier may answer it:
    the longest deadline a request can carry. Raises `KeyError` for an unknown kind.
    """
    p = subjects.prefix
    inbox = {k: f"{subjects.inbox(k)}.>" for k in ("ingress", "jobs")}
    jetstream = ["$JS.API.>", f"$KV.{subjects.batches_bucket}.>", f"$O.{subjects.files_bucket}.>"]
    live_config = _live_config_reads(subjects)
    table: dict[str, dict[str, Any]] = {
        "ingress": {
            "publish": [
                subjects.classify,
                f"{p}.cancel.*",
                f"{p}.ping.>",
                subjects.jobs_control,
                *jetstream,
                "$JS.FC.>",
            ],
            "subscribe": [inbox["ingress"]],
        },
        "classifier": {
            "publish": [subjects.dispatch_all, *live_config],
            "subscribe": [
                subjects.inbox("classifier") + ".>",
                subjects.classify,
                subjects.classify_jobs,
                subjects.cancel_all,
                f"{p}.bounce.>",
            ],
            "allow_responses": {
                "max": RESPONSE_MAX_MSGS,
                "expires": f"{max(1, round(responses_expire_s * 1000))}ms",
            },
        },
        "dispatcher": {
            "publish": [inbox["ingress"], inbox["jobs"], *live_config],
            "subscribe": [
                subjects.inbox("dispatcher") + ".>",
                subjects.dispatch_all,
                subjects.ping_dispatch_all,
                subjects.cancel_all,
            ],
        },
        "jobs": {
            "publish": [
                subjects.classify_jobs,
                f"{p}.jobs.>",
                *jetstream,
                "$JS.ACK.>",
                "$JS.FC.>",
            ],
            "subscribe": [inbox["jobs"], subjects.lines_exhausted],
        },
        "admin": {"publish": [">"], "subscribe": [">"]},
    }
    entry = table[kind]
    result: dict[str, Any] = {
        "publish": {"allow": entry["publish"]},
        "subscribe": {"allow": entry["subscribe"]},
    }
    if "allow_responses" in entry:
        result["allow_responses"] = entry["allow_responses"]
    return result


def _live_config_reads(subjects: Subjects) -> list[str]:
    """What a worker without the whole JetStream API needs to read and watch the live config's
    KV bucket (`services.common.live_config`): create it when missing, get a key, and run the
    ordered consumer of a watch (its replies and deliveries come to the worker's own inbox)."""
    stream = f"KV_{subjects.config_bucket}"
    api = "$JS.API"
    return [
        f"{api}.INFO",
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.CREATE.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def server_config(
    users: Mapping[str, Credentials],
    subjects: Subjects,
    *,
    responses_expire_s: float,
    tls: ServerTls | None = None,
) -> str:
    """The nats-server config lines for `users` (each with its kind's `permissions`) and `tls`.

    nats-server reads JSON values, so the blocks are written as JSON: no quoting surprises
    with `$JS...` or `>` subjects, or with any character of a password.
    """
    entries = [
        {
            "user": credentials.user,
            "password": credentials.password,
            "permissions": permissions(kind, subjects, responses_expire_s),
        }
        for kind, credentials in users.items()
    ]
    text = f"authorization: {json.dumps({'users': entries})}\n"
    if tls is not None:
        text += f"tls: {json.dumps(tls.block())}\n"
    return text


def route_config(credentials: Credentials) -> dict[str, Any]:
    """The `authorization` of a cluster's route port: only nodes knowing `credentials` join."""
    return {"user": credentials.user, "password": credentials.password}


def env(credentials: Credentials | None) -> dict[str, str]:
    """The environment variables giving a service `credentials` (none: no variables)."""
    if credentials is None:
        return {}
    return {
        "LORAROUTE_NATS_USER": credentials.user,
        "LORAROUTE_NATS_PASSWORD": credentials.password,
    }


def write_credentials(path: Path, url: str, users: Mapping[str, Credentials]) -> Path:
    """Write `{"url": ..., "users": {kind: {"user", "password"}}}` to `path`, readable by its
    owner only (0600 from the moment it exists: never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "url": url,
        "users": {k: {"user": c.user, "password": c.password} for k, c in users.items()},
    }
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
    return path


def read_credentials(path: Path) -> tuple[str, dict[str, Credentials]]:
    """The URL and users `write_credentials` wrote to `path`."""
    data = json.loads(path.read_text(encoding="utf-8"))
    users = {k: Credentials(v["user"], v["password"]) for k, v in data["users"].items()}
    return str(data["url"]), users
