"""The demo survives a crash: under honcho, each Procfile.demo process runs under `python -m ops.restart`, which starts
a killed process again while the others keep running, gives up (and so stops the demo) on a process that keeps
crashing, and stops with everything else on Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
HONCHO = Path(sys.executable).parent / "honcho"


def sleeper(pids: Path) -> str:
    """A stand-in for a demo process: it appends its pid to `pids`, then sleeps until stopped."""
    code = f"import os, time; open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep(600)"
    return f'{sys.executable} -c "{code}"'


def pids_of(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_the_restarter_is_what_runs_every_demo_process():
    lines = [line for line in (ROOT / "Procfile.demo").read_text().splitlines() if line.strip()]

    assert lines
    for line in lines:
        name, command = line.split(":", 1)
        assert f"python -m ops.restart {name} -- " in command, line


def test_the_demos_model_checks_and_builds_have_a_worker_of_their_own():
    """A build may run many minutes on a CPU: on the worker that runs the auction, two of them held up every round."""
    from django.conf import settings

    workers = [line for line in (ROOT / "Procfile.demo").read_text().splitlines() if "celery -A config worker" in line]
    queues = [set(line.split(" -Q ", 1)[1].split()[0].split(",")) for line in workers]

    assert {"validation"} in queues  # alone on its worker
    assert all("validation" not in q for q in queues if q != {"validation"})
    assert set().union(*queues) == {queue.name for queue in settings.CELERY_TASK_QUEUES}  # every queue is consumed


@pytest.fixture
def demo(tmp_path):
    """honcho running a Procfile of two sleepers, each under the restarter, as `make demo` runs Procfile.demo."""
    restart = f"{sys.executable} -m ops.restart"
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        f"worker: {restart} worker -- {sleeper(tmp_path / 'worker.pids')}\n"
        f"web: {restart} web -- {sleeper(tmp_path / 'web.pids')}\n"
    )
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [str(HONCHO), "start", "--procfile", str(procfile), "--app-root", str(tmp_path), "--no-prefix"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for(lambda: pids_of(tmp_path / "worker.pids") and pids_of(tmp_path / "web.pids"), timeout=20)
        yield honcho, tmp_path, log
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(timeout=10)
        for pid in pids_of(tmp_path / "worker.pids") + pids_of(tmp_path / "web.pids"):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_process_is_started_again_while_the_others_keep_running(demo):
    honcho, folder, log = demo
    [worker] = pids_of(folder / "worker.pids")
    [web] = pids_of(folder / "web.pids")

    os.kill(worker, signal.SIGKILL)

    assert wait_for(lambda: len(pids_of(folder / "worker.pids")) == 2, timeout=10), log.read_text()
    restarted = pids_of(folder / "worker.pids")[1]
    assert restarted != worker and alive(restarted) and not alive(worker)
    assert pids_of(folder / "web.pids") == [web] and alive(web)
    assert honcho.poll() is None  # the demo is still up
    assert "[worker] exited with signal 9 (SIGKILL); restarting in 1 s" in log.read_text()


def test_stopping_the_demo_stops_every_process_even_a_restarted_one(demo):
    honcho, folder, log = demo
    os.kill(pids_of(folder / "worker.pids")[0], signal.SIGKILL)
    assert wait_for(lambda: len(pids_of(folder / "worker.pids")) == 2, timeout=10), log.read_text()

    os.kill(honcho.pid, signal.SIGTERM)  # what Ctrl-C does

    assert honcho.wait(timeout=20) is not None
    everything = pids_of(folder / "worker.pids") + pids_of(folder / "web.pids")
    assert wait_for(lambda: not any(alive(pid) for pid in everything), timeout=5), log.read_text()
    assert "restarting" not in log.read_text().split("SIGTERM received")[-1]


def test_a_process_that_keeps_crashing_is_given_up_on_saying_so_and_the_demo_stops(tmp_path):
    started = tmp_path / "started"
    command = [sys.executable, "-m", "ops.restart", "--max-crashes", "3", "--first-delay", "0.05", "fleet", "--",
               "sh", "-c", f"echo x >> {started}; exit 3"]  # fmt: skip

    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)

    assert run.returncode == 1  # honcho stops the whole demo when a process exits
    assert len(started.read_text().split()) == 3
    assert run.stdout.splitlines() == [
        "[fleet] exited with code 3; restarting in 0.05 s",
        "[fleet] exited with code 3; restarting in 0.1 s",
        "[fleet] exited with code 3: 3 crashes within 60 s; giving up on it, so the demo stops",
    ]


def test_a_stop_sent_to_the_restarter_alone_reaches_its_process(tmp_path):
    pids = tmp_path / "pids"
    restarter = subprocess.Popen(
        [sys.executable, "-m", "ops.restart", "stripe", "--", *["sh", "-c", f"exec {sleeper(pids)}"]],
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: pids_of(pids), timeout=20)
        [child] = pids_of(pids)

        started = time.monotonic()
        restarter.send_signal(signal.SIGTERM)

        assert restarter.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
        assert wait_for(lambda: not alive(child), timeout=5)
        assert pids_of(pids) == [child]  # stopped, not restarted
    finally:
        if restarter.poll() is None:
            os.killpg(restarter.pid, signal.SIGKILL)
