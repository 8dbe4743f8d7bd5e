"""Browser tests: headless Debian chromium driven by Playwright (sync API) against Django's live server, with a real
Celery worker, the local Stripe server and simulated cars (`python -m fleet.agent` processes running ONNX Runtime).

Playwright never downloads a browser here: it launches /usr/bin/chromium, which `make test` and `.ci/run` install
when it is missing. Without it the tests skip, saying why, unless IDLEFLEET_BROWSER_TESTS=required (CI), where
they fail instead.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 30_000  # the machine may be busy: generous, bounded waits


def _unavailable(reason: str) -> None:
    if os.environ.get("IDLEFLEET_BROWSER_TESTS") == "required":
        pytest.fail(f"browser tests are required here: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _own_media_root(settings, tmp_path):
    """Artifacts in a folder of the test's own: the content-addressed files of var/media are shared by every process
    on the machine, and one that deletes a file (a rejected upload of the same bytes) would break this test."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def browser(live_server, monkeypatch) -> Iterator:
    """Headless chromium, one per test (a second or two to start)."""
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: install the dev extra (pip install '.[dev]')")
    # Playwright's sync API keeps an event loop running in this thread, and Django refuses ORM calls from a thread
    # with a running loop. The test's own ORM calls are synchronous, so the check is lifted while the browser runs.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.browser_call_failed = report.failed
    return report


@pytest.fixture
def page(browser, live_server, request, tmp_path):
    """A tab of a fresh browser context on the live server. When the test fails, the page as it was is kept in the
    test's tmp_path (failure.png, failure.html) and its address is printed."""
    # Reduced motion: Pico's transitions off, so a focus ring is there at once and screenshots are stable.
    context = browser.new_context(
        base_url=live_server.url, viewport=VIEWPORT, accept_downloads=True, reduced_motion="reduce"
    )
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    if getattr(request.node, "browser_call_failed", False):
        tab.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        (tmp_path / "failure.html").write_text(tab.content())
        print(f"the page at the failure ({tab.url}): {tmp_path / 'failure.png'}, {tmp_path / 'failure.html'}")
    context.close()


@pytest.fixture
def agents(live_server, tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real agent processes (`python -m fleet.agent`, a simulated homebody car); all are stopped at the end."""
    started: list[tuple[subprocess.Popen, object]] = []

    def start(credential_text: str, *, tz: str, name: str = "car", seed: int = 1, heartbeat: float = 1.0):
        credential = tmp_path / f"{name}.json"
        credential.write_text(credential_text)
        log = (tmp_path / f"{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "fleet.agent", "--credential", str(credential), "--server", live_server.url,
             "--simulate", "homebody", "--seed", str(seed), "--tz", tz, "--heartbeat", str(heartbeat),
             "--cache-dir", str(tmp_path / f"{name}-cache"), "--threads", "1"],
            cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append((process, log))
        return process

    yield start
    for process, _ in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process, log in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest.fixture
def auction_ticker(celery_worker_thread) -> Iterator[threading.Event]:
    """A stand-in for beat: enqueue the real `auction_round` task every second; the real worker runs the round, which
    clears whenever a new slot of the auction interval has begun (settings.AUCTION_INTERVAL_SECONDS or the pricing
    policy). Clear the returned event to pause it, set it to resume."""
    from marketplace.tasks import auction_round

    running, stop = threading.Event(), threading.Event()
    running.set()

    def tick() -> None:
        while not stop.wait(1.0):
            if running.is_set():
                auction_round.delay()

    thread = threading.Thread(target=tick, name="auction-ticker", daemon=True)
    thread.start()
    yield running
    stop.set()
    thread.join(timeout=5)
