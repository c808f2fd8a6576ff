from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.log import configure


def _run(code: str) -> str:
    # A fresh interpreter: structlog is configured once per process.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stderr


def test_json_lines_when_stderr_is_not_a_terminal() -> None:
    stderr = _run(
        "from services.common.log import configure, get_logger\n"
        "log = get_logger(component='x')\n"  # bound before configure: still JSON
        "configure('ingress')\n"
        "log.info('request_failed', request_id='r1', status=503)\n"
    )
    event = json.loads(stderr.strip().splitlines()[-1])
    assert event["event"] == "request_failed"
    assert event["service"] == "ingress" and event["component"] == "x"
    assert event["request_id"] == "r1" and event["status"] == 503
    assert event["level"] == "info" and event["timestamp"].endswith("Z")


def test_console_format_when_asked() -> None:
    stderr = _run(
        "from services.common.log import configure, get_logger\n"
        "configure('x', json=False)\n"
        "get_logger().warning('something_odd', n=1)\n"
    )
    assert "something_odd" in stderr and "n=1" in stderr


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure("x", "verbose")
