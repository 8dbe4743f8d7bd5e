"""The Celery plumbing, end to end: beat enqueues through Redis, a real worker runs the task, staff see it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.models import PlatformHeartbeat
from ops.tasks import platform_heartbeat
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.worker
def test_a_task_sent_through_redis_is_run_by_a_worker(celery_worker_thread):
    platform_heartbeat.delay()

    assert wait_for(lambda: PlatformHeartbeat.objects.exists()), "the worker never ran the heartbeat task"
    heartbeat = PlatformHeartbeat.objects.get()
    # The in-process test worker reports its host name; a `celery worker` process reports its node name.
    assert heartbeat.worker in (celery_worker_thread.hostname, celery_worker_thread.hostname.split("@")[-1])
    assert heartbeat.ticks == 1


@pytest.mark.worker
def test_beat_schedules_the_heartbeat_and_staff_see_it(celery_worker_thread, tmp_path, client, django_user_model):
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "-s",
            str(tmp_path / "schedule"),
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
    )
    try:
        # The test settings tick every second: two ticks prove beat keeps scheduling.
        assert wait_for(lambda: PlatformHeartbeat.objects.filter(ticks__gte=2).exists(), timeout=40)
    finally:
        beat.terminate()
        beat.wait(timeout=20)

    staff = django_user_model.objects.create_user("ops", "ops@example.test", "pw", role="staff", is_staff=True)
    client.force_login(staff)
    page = client.get("/staff/health/").content.decode()
    assert celery_worker_thread.hostname.split("@")[-1] in page
    assert "alive" in page


def test_healthz_reports_database_and_redis(client, db):
    response = client.get("/healthz/")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["redis"] == "ok"
    assert response.json()["checks"]["workers"] == "no recent heartbeat"
