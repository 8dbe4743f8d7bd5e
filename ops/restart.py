"""Keep one process of the demo running: `python -m ops.restart NAME -- COMMAND...` runs COMMAND, and when it dies
unexpectedly (killed, or exits with an error) says so and starts it again after a pause that doubles with each crash
(1 s, 2 s, 4 s ...). After --max-crashes crashes within --window seconds it gives up, saying so, and exits 1.

Why: honcho, which runs Procfile.demo, stops every process as soon as one exits, so a SIGKILLed worker took the whole
demo down within a second. Each Procfile line runs its process under this instead; honcho still multiplexes the
output and stops everything on Ctrl-C, and it stops the demo, naming the process, when one gives up for good.

Honcho runs each line in a process group of its own and stops it with killpg (SIGTERM, then SIGKILL after a few
seconds), so a Ctrl-C reaches COMMAND and this process alike: this one then stops restarting, waits for COMMAND, and
exits. A SIGTERM or SIGINT sent to this process alone is passed on to COMMAND after a short grace.

A clean exit (status 0) is not a crash: it ends this process too. No Django here: it runs before anything else.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections import deque

# How long a stop request waits for COMMAND to stop by itself (it got the signal from the group) before passing it on.
FORWARD_GRACE_S = 2.0


def describe(returncode: int) -> str:
    """How a process ended, in words: 'exited with signal 9 (SIGKILL)' or 'exited with code 1'."""
    if returncode < 0:
        try:
            return f"exited with signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"exited with signal {-returncode}"
    return f"exited with code {returncode}"


def restart_delay(crashes: int, *, first_s: float = 1.0, longest_s: float = 30.0) -> float:
    """Seconds to wait before the next start, after `crashes` recent crashes (1 or more): first_s, doubling."""
    return min(first_s * 2 ** (crashes - 1), longest_s)


def supervise(
    name: str, command: list[str], *, max_crashes: int = 5, window_s: float = 60.0, first_delay_s: float = 1.0
) -> int:
    """Run `command` until it exits cleanly, this process is asked to stop, or it crashes `max_crashes` times within
    `window_s` seconds. Returns this process's exit status: 0, or 1 after giving up."""
    stop_signal: list[int] = []  # set by the handler: a stop was asked for, by this signal
    child: subprocess.Popen | None = None

    def request_stop(signum, frame) -> None:
        stop_signal.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    crashes: deque[float] = deque()
    while True:
        child = subprocess.Popen(command)  # noqa: S603 - the Procfile's own command
        returncode = _wait(child, stop_signal)
        if stop_signal:
            return 0
        if returncode == 0:
            _say(name, "exited with code 0; not restarted")
            return 0
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - window_s:
            crashes.popleft()
        if len(crashes) >= max_crashes:
            crashed = f"{len(crashes)} crashes within {window_s:g} s"
            _say(name, f"{describe(returncode)}: {crashed}; giving up on it, so the demo stops")
            return 1
        delay = restart_delay(len(crashes), first_s=first_delay_s)
        _say(name, f"{describe(returncode)}; restarting in {delay:g} s")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stop_signal:
            time.sleep(0.05)
        if stop_signal:
            return 0


def _wait(child: subprocess.Popen, stop_signal: list[int]) -> int:
    """Wait for `child` to end; once a stop is asked for, give it the grace, then pass the signal on, then SIGKILL."""
    forward_at = None
    while True:
        try:
            return child.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if not stop_signal:
            continue
        if forward_at is None:
            forward_at = time.monotonic() + FORWARD_GRACE_S
        elif forward_at <= time.monotonic():
            child.send_signal(stop_signal[0])
            try:
                return child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                return child.wait()


def _say(name: str, message: str) -> None:
    print(f"[{name}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the process's name in messages, e.g. worker")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    parser.add_argument("--max-crashes", type=int, default=5, help="give up after this many crashes (default 5) ...")
    parser.add_argument("--window", type=float, default=60.0, help="... within this many seconds (default 60)")
    parser.add_argument("--first-delay", type=float, default=1.0, help="seconds before the first restart (default 1)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: python -m ops.restart NAME -- COMMAND ...")
    return supervise(
        args.name, command, max_crashes=args.max_crashes, window_s=args.window, first_delay_s=args.first_delay
    )


if __name__ == "__main__":
    sys.exit(main())
