"""Running a test's code in several threads at the same moment, each on a database connection of its own."""

import threading
from collections.abc import Callable

from django.db import connection


def at_once(target: Callable[[], None], count: int, *, timeout: float = 120) -> None:
    """Run `target` in `count` threads released together, and wait for them. The first error a thread raised is raised
    here: a thread's failure must fail the test, not vanish."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            target()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), f"a thread ran past {timeout} s"
    if errors:
        raise errors[0]
