"""`loraroute.natsserver`: a real server starts on a free port and stops by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from loraroute.natsserver import NatsServer, NatsServerError, find_binary

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"


def test_find_binary_returns_an_executable() -> None:
    binary = find_binary()
    assert binary.is_file() and os.access(binary, os.X_OK)


async def test_starts_on_a_free_port_with_jetstream_and_max_payload(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path / "store", max_payload=2 * 1024 * 1024) as server:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await nats.connect(server.url)
        try:
            assert nc.max_payload == 2 * 1024 * 1024
            info = await nc.jetstream().account_info()
            assert info is not None
        finally:
            await nc.close()
        pid = server.pid
        assert pid is not None and _alive(pid)
    assert not _alive(pid)
    assert (tmp_path / "store" / "jetstream").is_dir()
    assert (tmp_path / "store" / "nats-server.log").is_file()


def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    with (
        NatsServer(store_dir=tmp_path / "a") as first,
        NatsServer(store_dir=tmp_path / "b") as second,
    ):
        assert first.url != second.url


def test_stop_is_idempotent_and_url_fails_after(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path)
    server.start()
    assert server.stop() is not None
    assert server.stop() is None
    assert not server.running()
    with pytest.raises(NatsServerError):
        _ = server.url


def test_a_taken_port_is_reported_with_the_log(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path / "a") as first:
        port = int(first.url.rsplit(":", 1)[1])
        second = NatsServer(store_dir=tmp_path / "b", port=port)
        with pytest.raises(NatsServerError, match="exited"):
            second.start(timeout_s=5.0)
        assert not second.running()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path, binary=tmp_path / "no-such-nats-server")
    with pytest.raises((NatsServerError, OSError)):
        server.start()
    assert not server.running()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A launcher killed with SIGKILL leaves no nats-server behind (Linux: PR_SET_PDEATHSIG)."""
    program = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from loraroute.natsserver import NatsServer\n"
        "server = NatsServer(store_dir=Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", program, str(tmp_path / "nats")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("nats-server outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
