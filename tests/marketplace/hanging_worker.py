"""A real `celery worker` (prefork) whose model checks and variant builds hang once under way, so that a test can
SIGKILL it mid-task (tests/marketplace/test_long_tasks_sweep.py).

The hang is in reading the model's file, the first thing either task does after claiming its work: a build is then
`building` and a check `validating`, as when a machine dies. Each read that hangs first creates a file in
HANG_MARKS_DIR, so the test knows the work was taken. The patch is made before the pool forks, so every pool process
has it.

    DATABASE_URL=... REDIS_URL=... HANG_MARKS_DIR=... python -m tests.marketplace.hanging_worker
"""

import os
import time
import uuid
from pathlib import Path


def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    django.setup()

    from config.celery import app
    from marketplace import storage

    marks = Path(os.environ["HANG_MARKS_DIR"])

    def artifact_read_hanging(sha256: str) -> bytes:
        (marks / f"{os.getpid()}-{uuid.uuid4().hex}").touch()
        time.sleep(3600)
        raise AssertionError("the test kills this worker long before")

    storage.artifact_read = artifact_read_hanging
    app.worker_main(
        ["worker", "--pool=prefork", "--concurrency=2", "--without-gossip", "--without-mingle", "--loglevel=WARNING"]
    )


if __name__ == "__main__":
    main()
