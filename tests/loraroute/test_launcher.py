"""`loraroute up`'s plain parts and its refusals; starting everything is in tests/e2e."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from loraroute import launcher
from loraroute.launcher import (
    LaunchError,
    RestartPolicy,
    main,
    mock_plan,
    nats_max_payload,
    supervise,
)
from schemas.config import load_config
from tests.processes import free_port, write_config


def test_max_payload_fits_the_body_limit_within_bounds() -> None:
    assert nats_max_payload(4 * 1024 * 1024) == 4 * 1024 * 1024 + 64 * 1024
    assert nats_max_payload(1024) == 1024 * 1024
    assert nats_max_payload(64 * 1024 * 1024) == 8 * 1024 * 1024


def test_mock_plan_serves_each_endpoints_models(repo_root: Path) -> None:
    config, _ = load_config(repo_root / "config" / "config.yaml")
    assert mock_plan(config) == [
        (
            "vllm-primary",
            "127.0.0.1",
            8000,
            "llama2-7b",
            ["technical-lora", "medical-lora", "legal-lora"],
        )
    ]


def test_refuses_without_the_model_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        {"classifier": {"category_model": {"model_id": str(tmp_path / "missing")}}},
    )
    assert main(["--config", str(config), "--data-dir", str(tmp_path / "var")]) == 1
    assert "make model" in capsys.readouterr().err


def test_refuses_a_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.yaml",
            {
                "ingress": {"port": port},
                "vllm_endpoints": [
                    {"name": "vllm-primary", "address": "127.0.0.1", "port": free_port()}
                ],
            },
        )
        assert main(["--config", str(config), "--data-dir", str(tmp_path / "var")]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "taken" in err


def test_refuses_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("default_model: 3\n")
    assert main(["--config", str(bad)]) == 1
    assert "loraroute up:" in capsys.readouterr().err


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_delay_doubles_up_to_the_ceiling() -> None:
    clock = _Clock()
    policy = RestartPolicy(max_crashes=100, clock=clock)
    delays = []
    for _ in range(10):
        clock.now += 1.0  # each start lives a second, well within the window
        delay = policy.crashed()
        assert delay is not None
        delays.append(delay)
        policy.started()
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_restart_delay_resets_after_a_healthy_run() -> None:
    clock = _Clock()
    policy = RestartPolicy(clock=clock)
    assert [policy.crashed(), policy.crashed(), policy.crashed()] == [0.5, 1, 2]
    policy.started()
    clock.now += 29.9
    assert policy.crashed() == 4  # 29.9 s is not yet a healthy run
    policy.started()
    clock.now += 40.0  # healthy; the first three crashes have left the 60 s window
    assert policy.crashed() == 0.5


def test_gives_up_on_the_fifth_crash_within_a_minute() -> None:
    clock = _Clock()
    policy = RestartPolicy(clock=clock)
    for _ in range(4):
        assert policy.crashed() is not None
        clock.now += 14.0
    assert policy.crashed() is None


def test_crashes_older_than_the_window_do_not_count() -> None:
    clock = _Clock()
    policy = RestartPolicy(clock=clock)
    for _ in range(20):
        assert policy.crashed() is not None
        clock.now += 15.0  # four crashes in any 60 s, never five


@pytest.mark.parametrize("flag", ["--classifiers", "--dispatchers", "--ingresses", "--jobs"])
@pytest.mark.parametrize("value", ["0", "17", "two", "-1"])
def test_refuses_replica_counts_out_of_bounds(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag, value])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


def test_refuses_a_taken_metrics_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.yaml",
            {
                "ingress": {"port": free_port()},
                "vllm_endpoints": [
                    {"name": "vllm-primary", "address": "127.0.0.1", "port": free_port()}
                ],
            },
        )
        argv = ["--config", str(config), "--data-dir", str(tmp_path / "var")]
        assert main([*argv, "--metrics-port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "metrics" in err and "taken" in err


class _Crashing(launcher._Child):
    """A child whose every process exits at once with status 3."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["sh", "-c", "exit 3"])
        process.wait()
        return process


def test_supervise_restarts_after_the_backoff_then_gives_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = _Clock()
    child = _Crashing("classifier-2", [], {})
    child.policy = RestartPolicy(clock=clock)
    pids = [child.pid]
    for delay in (0.5, 1, 2, 4):
        supervise([child], clock.now)
        err = capsys.readouterr().err
        assert (
            f"classifier-2 (pid {pids[-1]}) exited with status 3; restarting it in {delay:g} s"
            in err
        )
        clock.now += delay - 0.1
        supervise([child], clock.now)
        assert child.pid == pids[-1], "not before the backoff is over"
        clock.now += 0.1
        supervise([child], clock.now)
        assert f"restarted classifier-2 (pid {child.pid})" in capsys.readouterr().out
        pids.append(child.pid)
    with pytest.raises(LaunchError, match=r"classifier-2 .* status 3, its 5th exit within 60 s"):
        supervise([child], clock.now)
    assert len(set(pids)) == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nats-tls-cert", "server.pem"], "--nats-tls-cert and --nats-tls-key go together"),
        (
            ["--nats", "nats://127.0.0.1:4222", "--nats-tls-key", "key.pem"],
            "configure the embedded server",
        ),
    ],
)
def test_refuses_half_a_tls_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    endpoint = {"name": "vllm-primary", "address": "127.0.0.1", "port": free_port()}
    config = write_config(
        tmp_path / "c.yaml", {"ingress": {"port": free_port()}, "vllm_endpoints": [endpoint]}
    )
    argv = ["--config", str(config), "--data-dir", str(tmp_path / "var"), *flags]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "var").exists(), "nothing was started"
