"""Helpers for tests that spawn a process group of CPU ranks (gloo)."""

from __future__ import annotations

import socket
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parent)


def free_port() -> int:
    """A free TCP port on localhost for ``MASTER_PORT``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
