"""`listener_pid` (psutil): which process listens on a TCP port, as `asen serve` names it
when its port is taken."""

from __future__ import annotations

import os
import socket

from asen.client.server import free_port, listener_pid


def test_the_listening_process_is_found() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listener_pid(port) == os.getpid()
    assert listener_pid(port) is None  # closed: nothing listens


def test_a_bound_but_not_listening_port_is_not_a_listener() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        assert listener_pid(port) is None
