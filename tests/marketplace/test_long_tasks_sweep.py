"""Every long task is swept: a model check or a variant build whose worker died (or whose message Redis lost) is
queued again and finished, or failed with a reason its owner reads, instead of staying `validating` or `building`."""

import io
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from marketplace import services, storage
from marketplace import tasks as marketplace_tasks
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import Dataset, InferenceModel, PrecisionVariant
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BUILDING, FAILED, QUEUED, READY = (PrecisionVariant.Status.BUILDING, PrecisionVariant.Status.FAILED,
                                   PrecisionVariant.Status.QUEUED, PrecisionVariant.Status.READY)  # fmt: skip


def validation_window() -> timedelta:
    from django.conf import settings

    return timedelta(seconds=settings.MODEL_VALIDATION_TIME_LIMIT_SECONDS + settings.TASK_SWEEP_MARGIN_SECONDS)


def build_window() -> timedelta:
    from django.conf import settings

    return timedelta(seconds=settings.VARIANT_BUILD_TIME_LIMIT_SECONDS + settings.TASK_SWEEP_MARGIN_SECONDS)


def digits_model(owner, digits_onnx, *, status=InferenceModel.Status.VALIDATING) -> InferenceModel:
    """alice's digits classifier as an upload leaves it (its check not run), or as the check left it."""
    model = InferenceModel.objects.create(
        owner=owner, name="digits", onnx_sha256=storage.artifact_save(digits_onnx), onnx_size=len(digits_onnx),
        output_name=DIGITS_OUTPUT, metric="top1", tolerance=0.9,
    )  # fmt: skip
    if status == InferenceModel.Status.READY:
        services.inference_model_validate(model=model)
    return model


def queued_ago(model: InferenceModel, age: timedelta) -> None:
    """Move the clock forward: the model was uploaded `age` ago."""
    InferenceModel.objects.filter(pk=model.pk).update(created_at=timezone.now() - age)


def build_queued_ago(variant: PrecisionVariant, age: timedelta) -> None:
    """Move the clock forward: the build was queued `age` ago (its progress UPDATEs never touch `updated_at`)."""
    PrecisionVariant.objects.filter(pk=variant.pk).update(updated_at=timezone.now() - age)


@pytest.fixture
def queued_tasks(monkeypatch):
    """What the sweep queues again, by task name, instead of sending it to a worker."""
    sent = []
    for task in (marketplace_tasks.inference_model_validate, marketplace_tasks.variant_build):
        monkeypatch.setattr(task, "delay", lambda pk, name=task.name: sent.append((name.rsplit(".", 1)[-1], pk)))
    return sent


@pytest.fixture
def stranded_build(alice, digits_onnx):
    """A build of alice's digits classifier left `building` at 35 % by a worker that died."""
    model = digits_model(alice, digits_onnx, status=InferenceModel.Status.READY)
    variant = PrecisionVariant.objects.create(inference_model=model, precision="int8", status=BUILDING, progress=35)
    return variant


def test_beat_runs_the_sweep_of_long_tasks(settings):
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"].endswith(".long_tasks_sweep"))

    assert entry["task"] == marketplace_tasks.long_tasks_sweep.name
    assert entry["schedule"] == settings.TASK_SWEEP_SECONDS
    # The margin lets a retry queued on one tick finish before the next window is judged.
    assert settings.TASK_SWEEP_MARGIN_SECONDS > settings.TASK_SWEEP_SECONDS


@pytest.mark.django_db
def test_a_check_and_a_build_still_within_their_time_limit_are_left_to_run(
    alice, digits_onnx, stranded_build, queued_tasks
):
    model = digits_model(alice, digits_onnx)
    queued_ago(model, validation_window() - timedelta(seconds=5))
    build_queued_ago(stranded_build, build_window() - timedelta(seconds=5))

    marketplace_tasks.long_tasks_sweep()

    assert InferenceModel.objects.get(pk=model.pk).status == InferenceModel.Status.VALIDATING
    assert PrecisionVariant.objects.get(pk=stranded_build.pk).status == BUILDING
    assert queued_tasks == []


@pytest.mark.django_db
def test_a_stranded_check_is_queued_again_once_then_rejected_with_a_reason_its_owner_reads(
    client, alice, digits_onnx, queued_tasks
):
    model = digits_model(alice, digits_onnx)
    queued_ago(model, validation_window() * 1.5)

    marketplace_tasks.long_tasks_sweep()
    marketplace_tasks.long_tasks_sweep()  # the next tick, in the same window: the retry is on its way

    assert queued_tasks == [("inference_model_validate", model.pk)]
    assert InferenceModel.objects.get(pk=model.pk).status == InferenceModel.Status.VALIDATING

    queued_ago(model, validation_window() * 2 + timedelta(seconds=1))  # the retry did not finish either
    marketplace_tasks.long_tasks_sweep()

    model.refresh_from_db()
    assert model.status == InferenceModel.Status.REJECTED
    assert model.rejection_reason.startswith("The check did not finish within 11 min (tried 2 times")
    assert len(queued_tasks) == 1
    client.force_login(alice)
    page = client.get(reverse("marketplace:model", args=[model.pk])).content.decode()
    assert "Rejected:" in page and "The check did not finish within 11 min" in page
    assert client.get(f"/api/v1/models/{model.pk}/").json()["rejection_reason"] == model.rejection_reason


@pytest.mark.django_db
def test_a_stranded_build_is_queued_again_once_then_failed_with_a_reason_its_owner_reads(
    client, alice, stranded_build, queued_tasks
):
    build_queued_ago(stranded_build, build_window() * 1.5)

    marketplace_tasks.long_tasks_sweep()
    marketplace_tasks.long_tasks_sweep()

    assert queued_tasks == [("variant_build", stranded_build.pk)]
    assert PrecisionVariant.objects.get(pk=stranded_build.pk).status == BUILDING

    build_queued_ago(stranded_build, build_window() * 2 + timedelta(seconds=1))
    marketplace_tasks.long_tasks_sweep()

    stranded_build.refresh_from_db()
    assert stranded_build.status == FAILED
    assert stranded_build.error.startswith("The build did not finish within 21 min (tried 2 times")
    client.force_login(alice)
    model_id = stranded_build.inference_model_id
    fragment = client.get(reverse("marketplace:model-variants", args=[model_id])).content.decode()
    assert "failed" in fragment and "The build did not finish within 21 min" in fragment
    assert 'aria-busy="true"' not in fragment  # the page stops polling: nothing is still building


@pytest.mark.django_db
def test_work_its_worker_finished_meanwhile_is_not_failed_by_a_late_sweep(
    alice, digits_onnx, stranded_build, queued_tasks
):
    model = digits_model(alice, digits_onnx, status=InferenceModel.Status.READY)
    queued_ago(model, validation_window() * 5)
    PrecisionVariant.objects.filter(pk=stranded_build.pk).update(status=READY, progress=100)
    build_queued_ago(stranded_build, build_window() * 5)

    marketplace_tasks.long_tasks_sweep()

    assert InferenceModel.objects.get(pk=model.pk).status == InferenceModel.Status.READY
    assert PrecisionVariant.objects.get(pk=stranded_build.pk).status == READY
    assert queued_tasks == []


@pytest.mark.django_db
def test_a_retried_check_that_arrives_after_the_model_was_rejected_changes_nothing(alice, digits_onnx, queued_tasks):
    model = digits_model(alice, digits_onnx)
    queued_ago(model, validation_window() * 3)
    marketplace_tasks.long_tasks_sweep()
    reason = InferenceModel.objects.get(pk=model.pk).rejection_reason

    marketplace_tasks.inference_model_validate(model.pk)  # the late retry, or the redelivered original

    model.refresh_from_db()
    assert (model.status, model.rejection_reason) == (InferenceModel.Status.REJECTED, reason)


@pytest.mark.django_db
def test_a_check_that_reaches_its_soft_time_limit_is_rejected_at_once_saying_so(
    alice, digits_onnx, monkeypatch, settings
):
    model = digits_model(alice, digits_onnx)

    def too_slow(**kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services, "inference_model_validate", too_slow)

    marketplace_tasks.inference_model_validate(model.pk)

    model.refresh_from_db()
    assert model.status == InferenceModel.Status.REJECTED
    assert model.rejection_reason.startswith("The check did not finish within 11 min: the model is too large")


def database_url() -> str:
    """The test database, for a worker in another process."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_check_and_a_build_whose_worker_is_killed_are_finished_after_the_sweep(
    client, redis_server, alice, digits_onnx, tmp_path
):
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    app.control.purge()
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": database_url(),
           "REDIS_URL": redis_server, "HANG_MARKS_DIR": str(marks)}  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.marketplace.hanging_worker"], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        with_data = digits_model(alice, digits_onnx, status=InferenceModel.Status.READY)
        uploaded = services.inference_model_upload(
            owner=alice, name="digits again", onnx_file=SimpleUploadedFile("d.onnx", digits_onnx),
            output_name=DIGITS_OUTPUT, metric="top1", tolerance=0.9,
        )  # fmt: skip
        items = io.BytesIO()
        np.save(items, digits_items(120), allow_pickle=False)
        services.dataset_upload(
            owner=alice, inference_model=with_data, name="digits", file=SimpleUploadedFile("d.npy", items.getvalue())
        )
        # Two pool processes: the check and the first build are under way, the other three builds wait in Redis.
        assert wait_for(lambda: len(list(marks.iterdir())) == 2, timeout=60), "the worker never took the work"
        assert wait_for(lambda: with_data.variants.filter(status=BUILDING).count() == 1, timeout=10)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the machine dies: main process and pool alike
        worker.wait(timeout=10)
    killed_build = with_data.variants.get(status=BUILDING)
    assert InferenceModel.objects.get(pk=uploaded.pk).status == InferenceModel.Status.VALIDATING

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"):
        # A new worker builds what was still queued; the killed work's messages stay unacknowledged for an hour.
        assert wait_for(lambda: with_data.variants.filter(status=READY).count() == 3, timeout=90)
        assert InferenceModel.objects.get(pk=uploaded.pk).status == InferenceModel.Status.VALIDATING
        assert PrecisionVariant.objects.get(pk=killed_build.pk).status == BUILDING

        # Past the time limits (the clock moved forward): one tick of beat's sweep queues both again.
        queued_ago(uploaded, validation_window() + timedelta(seconds=1))
        build_queued_ago(killed_build, build_window() + timedelta(seconds=1))
        swept = marketplace_tasks.long_tasks_sweep()
        assert (swept["validations_retried"], swept["builds_retried"]) == (1, 1)

        assert wait_for(lambda: InferenceModel.objects.get(pk=uploaded.pk).status != "validating", timeout=60)
        assert wait_for(lambda: PrecisionVariant.objects.get(pk=killed_build.pk).status != BUILDING, timeout=90)

    client.force_login(alice)
    assert client.get(f"/api/v1/models/{uploaded.pk}/").json()["status"] == "ready"
    variants = client.get(f"/api/v1/models/{with_data.pk}/").json()["variants"]
    assert sorted((v["precision"], v["status"]) for v in variants) == [
        ("fp16", "ready"), ("fp32", "ready"), ("fp8", "ready"), ("int8", "ready"),
    ]  # fmt: skip
    assert Dataset.objects.filter(inference_model=with_data).count() == 1
