"""`loraroute batch submit|status|results|cancel`: the OpenAI Batch API from the command line.

It talks to an ingress over HTTP exactly as any client does (`POST /v1/files`,
`POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/files/{id}/content`,
`POST /v1/batches/{id}/cancel`). `submit --wait` follows the batch until it ends, with a progress
line on stderr (redrawn in place on a terminal, one line per change otherwise), and exits 1 when
the batch ends `failed`, `expired` or `cancelled`.

    loraroute batch submit requests.jsonl --wait
    loraroute batch status batch_...
    loraroute batch results batch_... -o out.jsonl --errors err.jsonl
    loraroute batch cancel batch_...
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx
import msgspec

from schemas.errors import parse_error_body
from schemas.jobs import Batch, FileObject

__all__ = ["BatchClient", "BatchCommandError", "Progress", "main", "progress_line"]

DEFAULT_URL = "http://127.0.0.1:8080"
#: States after which a batch changes no more.
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Final states that `submit --wait` reports with exit status 1.
UNSUCCESSFUL = frozenset({"failed", "expired", "cancelled"})

_PROG = "loraroute batch"


class BatchCommandError(Exception):
    """The ingress could not be reached, or answered an error; the message says which."""


class BatchClient:
    """The Batch API of the ingress at `url`, over `httpx` (inject `transport` in tests)."""

    def __init__(
        self, url: str, *, timeout_s: float = 60.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise BatchCommandError(f"cannot reach the ingress at {self.url}: {error}") from error
        if response.status_code >= 400:
            info = parse_error_body(response.content, response.status_code)
            raise BatchCommandError(f"the ingress answered {response.status_code}: {info.message}")
        return response

    def upload(self, path: Path) -> FileObject:
        with path.open("rb") as data:
            response = self._call(
                "POST",
                "/v1/files",
                files={"file": (path.name, data, "application/jsonl")},
                data={"purpose": "batch"},
            )
        return msgspec.json.decode(response.content, type=FileObject)

    def create(self, file_id: str, window: str, metadata: dict[str, str] | None) -> Batch:
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": window,
        }
        if metadata:
            body["metadata"] = metadata
        response = self._call("POST", "/v1/batches", json=body)
        return msgspec.json.decode(response.content, type=Batch)

    def retrieve(self, batch_id: str) -> Batch:
        response = self._call("GET", f"/v1/batches/{batch_id}")
        return msgspec.json.decode(response.content, type=Batch)

    def cancel(self, batch_id: str) -> Batch:
        response = self._call("POST", f"/v1/batches/{batch_id}/cancel")
        return msgspec.json.decode(response.content, type=Batch)

    def download(self, file_id: str, target: Path) -> int:
        """Write the file's content to `target`; return its size in bytes."""
        content = self._call("GET", f"/v1/files/{file_id}/content").content
        target.write_bytes(content)
        return len(content)


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(batch: Batch, rate: float | None, width: int = 24) -> str:
    """One line on a batch: a bar, lines done and failed of the total, lines per second and the
    time left at that rate (unknown until the rate is)."""
    counts = batch.request_counts
    finished = counts.completed + counts.failed
    total = counts.total
    filled = int(width * finished / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    of = f"/{total}" if total else ""
    line = f"{batch.status:<11} [{bar}] {counts.completed}{of} done, {counts.failed} failed"
    if rate is not None and rate > 0:
        line += f", {rate:.1f} lines/s"
        if total and batch.status not in FINAL:
            line += f", ETA {_duration(max(total - finished, 0) / rate)}"
    return line


class Progress:
    """Shows a batch's progress on `stream`: redrawn in place on a terminal, a new line per
    change otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._clock = clock
        self._first: tuple[float, int] | None = None
        self._last = ""

    def show(self, batch: Batch) -> None:
        counts = batch.request_counts
        finished = counts.completed + counts.failed
        now = self._clock()
        rate = None
        if self._first is None or finished < self._first[1]:
            self._first = (now, finished)
        elif now > self._first[0] and finished > self._first[1]:
            rate = (finished - self._first[1]) / (now - self._first[0])
        line = progress_line(batch, rate)
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        elif line.split(",")[:2] != self._last.split(",")[:2]:
            self.stream.write(f"{line}\n")
        self.stream.flush()
        self._last = line

    def end(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def _summary(batch: Batch) -> str:
    counts = batch.request_counts
    lines = [
        f"id:       {batch.id}",
        f"status:   {batch.status}",
        f"lines:    {counts.total} total, {counts.completed} done, {counts.failed} failed",
        f"input:    {batch.input_file_id}",
    ]
    if batch.output_file_id:
        lines.append(f"output:   {batch.output_file_id}")
    if batch.error_file_id:
        lines.append(f"errors:   {batch.error_file_id}")
    if batch.errors and batch.errors.data:
        lines += [f"error:    {e.code}: {e.message}" for e in batch.errors.data]
    return "\n".join(lines)


def _wait(client: BatchClient, batch: Batch, interval_s: float, stream: TextIO) -> Batch:
    progress = Progress(stream)
    try:
        while True:
            progress.show(batch)
            if batch.status in FINAL:
                return batch
            time.sleep(interval_s)
            batch = client.retrieve(batch.id)
    finally:
        progress.end()


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BatchCommandError(f"--metadata {pair!r}: expected KEY=VALUE")
        metadata[key] = value
    return metadata


def _submit(client: BatchClient, args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise BatchCommandError(f"{path}: no such file")
    file = client.upload(path)
    batch = client.create(file.id, args.window, _metadata(args.metadata))
    print(batch.id)
    if not args.wait:
        return 0
    try:
        batch = _wait(client, batch, args.interval, sys.stderr)
    except KeyboardInterrupt:
        print(
            f"{_PROG}: stopped waiting; {batch.id} goes on "
            f"(`loraroute batch cancel {batch.id}` stops it)",
            file=sys.stderr,
        )
        return 130
    if batch.status in UNSUCCESSFUL:
        print(f"{_PROG}: {batch.id} ended {batch.status}", file=sys.stderr)
        if batch.errors and batch.errors.data:
            for error in batch.errors.data:
                print(f"  {error.code}: {error.message}", file=sys.stderr)
        return 1
    return 0


def _save(client: BatchClient, file_id: str | None, path: Path, lines: int, empty: str) -> None:
    """Download `file_id` to `path` (an empty file when there is none, saying `empty`)."""
    if file_id:
        size = client.download(file_id, path)
        print(f"{path}: {lines} lines, {size} bytes", file=sys.stderr)
    else:
        path.write_bytes(b"")
        print(f"{path}: empty ({empty})", file=sys.stderr)


def _results(client: BatchClient, args: argparse.Namespace) -> int:
    batch = client.retrieve(args.id)
    if batch.status not in FINAL:
        raise BatchCommandError(f"{batch.id} is {batch.status}; its results come when it ends")
    counts = batch.request_counts
    _save(
        client,
        batch.output_file_id,
        Path(args.output),
        counts.completed,
        f"no line of {batch.id} was answered",
    )
    if args.errors:
        _save(client, batch.error_file_id, Path(args.errors), counts.failed, "no line failed")
    elif batch.error_file_id:
        print(f"{counts.failed} lines failed; --errors FILE downloads them", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the ingress's base URL (default {DEFAULT_URL})"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    submit = verbs.add_parser("submit", help="upload a JSONL file and start a batch on it")
    submit.add_argument("file", help="the batch input file (JSONL, one request per line)")
    submit.add_argument("--window", default="24h", help="completion window (default 24h)")
    submit.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the batch until it ends, with progress"
    )
    submit.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (default 1)"
    )
    status = verbs.add_parser("status", help="show a batch's state and counts")
    status.add_argument("id")
    status.add_argument("--json", action="store_true", help="print the batch object as JSON")
    results = verbs.add_parser("results", help="download an ended batch's output")
    results.add_argument("id")
    results.add_argument("-o", "--output", required=True, help="where the output lines go")
    results.add_argument("--errors", help="where the error lines go (default: not downloaded)")
    cancel = verbs.add_parser("cancel", help="cancel a batch that has not ended")
    cancel.add_argument("id")
    for verb in (submit, status, results, cancel):
        verb.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str]) -> int:
    """Run one verb; 0 on success, 1 on an error (or a batch that ended unsuccessfully)."""
    args = _parser().parse_args(argv)
    client = BatchClient(args.url)
    try:
        if args.verb == "submit":
            return _submit(client, args)
        if args.verb == "status":
            batch = client.retrieve(args.id)
            if args.json:
                print(msgspec.json.format(msgspec.json.encode(batch)).decode())
            else:
                print(_summary(batch))
            return 0
        if args.verb == "results":
            return _results(client, args)
        batch = client.cancel(args.id)
        print(f"{batch.id}: {batch.status}")
        return 0
    except BatchCommandError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
