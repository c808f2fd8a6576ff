"""`loraroute batch`: the command against a real ingress over a real nats-server (the test plays
the jobs worker), its progress display, and its errors."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from loraroute.batch import Progress, main, progress_line
from schemas.config import Jobs
from schemas.jobs import Batch, RequestCounts
from tests.jobs_double import JobsDouble, batch_ingress, batch_input
from tests.processes import free_port

JOBS = {"max_file_bytes": 65536, "completion_windows": ["24h", "1h"]}


@pytest.fixture(scope="module")
def ingress(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    service = batch_ingress(nats_url, tmp_path_factory.mktemp("cli-ingress"), prefix, JOBS)
    service.start()
    assert service.health_url is not None
    try:
        yield service.health_url.removesuffix("/health"), prefix
    finally:
        service.stop()


@pytest.fixture
async def worker(ingress: tuple[str, str], nats_url: str) -> AsyncIterator[JobsDouble]:
    double = await JobsDouble.connect(nats_url, ingress[1], Jobs(**JOBS))  # type: ignore[arg-type]
    try:
        yield double
    finally:
        await double.close()


def _run(url: str, *argv: str) -> asyncio.Future[int]:
    """`loraroute batch --url URL ARGV...` in a thread, so the test can play the worker."""
    return asyncio.ensure_future(asyncio.to_thread(main, ["--url", url, *argv]))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _batch(status: str, total: int, completed: int, failed: int) -> Batch:
    counts = RequestCounts(total=total, completed=completed, failed=failed)
    return Batch(
        id="batch_x",
        input_file_id="file-x",
        completion_window="24h",
        created_at=0,
        status=status,  # type: ignore[arg-type]
        request_counts=counts,
    )


def test_the_progress_line_shows_counts_rate_and_eta() -> None:
    line = progress_line(_batch("in_progress", 100, 20, 5), rate=5.0, width=10)
    assert line == "in_progress [##........] 20/100 done, 5 failed, 5.0 lines/s, ETA 15s"
    assert progress_line(_batch("validating", 0, 0, 0), None, width=4).endswith(
        "[....] 0 done, 0 failed"
    )
    done = progress_line(_batch("completed", 10, 10, 0), rate=2.0, width=4)
    assert "ETA" not in done and "[####] 10/10 done" in done


def test_progress_is_redrawn_in_place_on_a_terminal_and_one_line_per_change_otherwise() -> None:
    ticks = iter([0.0, 2.0, 4.0, 6.0])
    terminal = _Terminal()
    progress = Progress(terminal, clock=lambda: next(ticks))
    progress.show(_batch("in_progress", 100, 0, 0))
    progress.show(_batch("in_progress", 100, 10, 0))
    progress.end()
    shown = terminal.getvalue()
    assert shown.count("\r") == 2 and shown.count("\x1b[K") == 2 and shown.endswith("\n")
    assert "5.0 lines/s, ETA 18s" in shown

    ticks = iter([0.0, 1.0, 2.0, 3.0])
    log = io.StringIO()
    progress = Progress(log, clock=lambda: next(ticks))
    for done in (0, 0, 5, 5):
        progress.show(_batch("in_progress", 10, done, 0))
    progress.end()
    assert "\r" not in log.getvalue()
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == ["in_progress"] * 2


@pytest.mark.integration
async def test_submit_waits_with_progress_then_results_are_downloaded(
    ingress: tuple[str, str],
    worker: JobsDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = ingress[0]
    source = tmp_path / "requests.jsonl"
    source.write_bytes(batch_input("one", "two", "three"))
    submit = _run(url, "submit", str(source), "--wait", "--interval", "0.05", "--metadata", "k=v")
    start = await worker.next_control(None)
    lines = await worker.start(start.batch_id)
    await asyncio.sleep(0.2)
    await worker.answer(start.batch_id, lines[0])
    await asyncio.sleep(0.2)
    await worker.answer(start.batch_id, lines[1])
    await worker.answer(start.batch_id, lines[2], ok=False)
    await asyncio.sleep(0.2)
    await worker.finalize(start.batch_id)
    assert await asyncio.wait_for(submit, 20) == 0
    shown = capsys.readouterr()
    assert shown.out.strip() == start.batch_id
    progress = shown.err.splitlines()
    assert progress[0].startswith("validating") or progress[0].startswith("in_progress")
    assert any("1/3 done, 0 failed" in line for line in progress)
    assert "completed" in progress[-1] and "2/3 done, 1 failed" in progress[-1]
    assert (await worker.batch(start.batch_id)).metadata == {"k": "v"}

    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    got = await asyncio.to_thread(
        main, ["--url", url, "results", start.batch_id, "-o", str(out), "--errors", str(err)]
    )
    assert got == 0
    assert [json.loads(x)["custom_id"] for x in out.read_text().splitlines()] == ["one", "two"]
    assert [json.loads(x)["custom_id"] for x in err.read_text().splitlines()] == ["three"]

    assert await asyncio.to_thread(main, ["--url", url, "status", start.batch_id]) == 0
    status = capsys.readouterr().out
    assert "status:   completed" in status and "3 total, 2 done, 1 failed" in status
    assert await asyncio.to_thread(main, ["status", start.batch_id, "--json", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == start.batch_id


@pytest.mark.integration
async def test_a_cancelled_batch_ends_the_wait_with_status_1(
    ingress: tuple[str, str],
    worker: JobsDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = ingress[0]
    source = tmp_path / "requests.jsonl"
    source.write_bytes(batch_input("a", "b"))
    submit = _run(url, "submit", str(source), "--wait", "--interval", "0.05", "--window", "1h")
    start = await worker.next_control(None)
    await worker.start(start.batch_id)
    early = tmp_path / "early.jsonl"
    results = ["results", start.batch_id, "-o", str(early)]
    assert await asyncio.to_thread(main, ["--url", url, *results]) == 1
    assert await asyncio.to_thread(main, ["--url", url, "cancel", start.batch_id]) == 0
    await worker.next_control(start.batch_id)  # the CancelBatch
    await worker.finalize(start.batch_id, "cancelled")
    assert await asyncio.wait_for(submit, 20) == 1
    shown = capsys.readouterr()
    assert f"{start.batch_id}: cancelling" in shown.out
    assert "is in_progress; its results come when it ends" in shown.err
    assert f"{start.batch_id} ended cancelled" in shown.err
    assert (await worker.batch(start.batch_id)).completion_window == "1h"
    assert await asyncio.to_thread(main, ["--url", url, "cancel", start.batch_id]) == 1
    assert "409: Cannot cancel a batch with status 'cancelled'." in capsys.readouterr().err


@pytest.mark.integration
async def test_refusals_and_unknown_ids_are_clear_errors(
    ingress: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ingress[0]
    source = tmp_path / "bad.jsonl"
    source.write_text("this is not jsonl\n")
    assert await asyncio.to_thread(main, ["--url", url, "submit", str(source)]) == 1
    assert "answered 400: The file is not a valid batch input file" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["--url", url, "submit", str(tmp_path / "no")]) == 1
    assert "no such file" in capsys.readouterr().err
    missing = f"batch_{uuid.uuid4().hex}"
    assert await asyncio.to_thread(main, ["--url", url, "status", missing]) == 1
    assert f"answered 404: No batch found with id '{missing}'." in capsys.readouterr().err


def test_an_unreachable_ingress_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "status", "batch_x"]) == 1
    assert f"cannot reach the ingress at {url}" in capsys.readouterr().err
