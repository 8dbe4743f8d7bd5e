import pytest

from config.celery import app


@pytest.fixture
def run_tasks_inline(monkeypatch):
    """Tasks queued "after commit" run at once, in this process (the test's transaction never commits)."""
    monkeypatch.setattr(app.Task, "delay_on_commit", lambda task, *args, **kwargs: task.apply(args, kwargs))


@pytest.fixture(scope="session")
def digits_onnx():
    from marketplace.inference.catalogue import build_digits_classifier

    return build_digits_classifier()
