"""`loraroute ingress --reuse-port`: the shared listening socket."""

from __future__ import annotations

import socket

import pytest

from services.ingress.cli import _shared_socket


def test_shared_sockets_bind_one_port_together() -> None:
    with _shared_socket("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        first.listen()
        with _shared_socket("127.0.0.1", port) as second:
            second.listen()
            assert second.getsockname() == ("127.0.0.1", port)


def test_a_port_held_without_reuse_port_is_refused() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError):
            _shared_socket("127.0.0.1", plain.getsockname()[1])
