"""A pytest plugin: the local Stripe server (`billing.localstripe_dev`) for tests that talk to "Stripe".

One server per test session, on a free port of its own (a running demo's server on 8420 is never touched), with
fresh state. Its objects outlive a test: tests create their own customers and accounts and assert on those, never on
totals across the whole server.
"""

import socket
from collections.abc import Iterator

import pytest

from billing.localstripe_dev import LOCAL_SECRET_KEY, localstripe_start, localstripe_stop

START_ATTEMPTS = 3  # another process may take the free port between our probe and the server's bind


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[str]:
    """The local Stripe server's API base URL, also set as `settings.STRIPE_API_BASE` (with `STRIPE_SECRET_KEY`)."""
    from django.test import override_settings

    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        try:
            process = localstripe_start(port)
            break
        except RuntimeError:
            if attempt == START_ATTEMPTS:
                raise
    api_base = f"http://127.0.0.1:{port}"
    stripe_settings = override_settings(STRIPE_API_BASE=api_base, STRIPE_SECRET_KEY=LOCAL_SECRET_KEY)
    stripe_settings.enable()
    try:
        yield api_base
    finally:
        stripe_settings.disable()
        localstripe_stop(process)
