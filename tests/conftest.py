import pytest
from django.conf import settings

from config.embedded_redis import EmbeddedRedis
from tests.factories import CustomerFactory, OwnerFactory, StaffFactory


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """Without REDIS_URL the tests run their own embedded Redis (the same one the demo uses)."""
    if not settings.REDIS_EMBEDDED:
        yield settings.REDIS_URL
        return
    server = EmbeddedRedis(settings.EMBEDDED_REDIS_PORT)
    server.start()
    yield settings.REDIS_URL
    server.stop()


@pytest.fixture(autouse=True)
def _clean_cache(redis_server):
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def celery_worker_thread(redis_server, transactional_db):
    """A real Celery worker consuming from the Redis broker (not eager mode), in a thread of this process.

    It shares the test database, so it needs `transactional_db`: the rows a test commits are visible to it.
    """
    from celery.contrib.testing.worker import start_worker
    from django.db import connections

    from config.celery import app

    app.control.purge()
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING") as worker:
        yield worker
    connections.close_all()


# The fixed cast of the tests: alice and bob buy compute, olivia and oscar own cars, staff runs the platform.
@pytest.fixture
def alice(db):
    return CustomerFactory(username="alice")


@pytest.fixture
def bob(db):
    return CustomerFactory(username="bob")


@pytest.fixture
def olivia(db):
    return OwnerFactory(username="olivia")


@pytest.fixture
def oscar(db):
    return OwnerFactory(username="oscar")


@pytest.fixture
def staff(db):
    return StaffFactory(username="staff")
