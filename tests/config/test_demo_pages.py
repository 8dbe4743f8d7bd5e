"""The demo's site shows its pages as production does: the product's own 404 and 403 pages (not Django's debug pages
with the URL list), a refused request logged as one line (not tracebacks), and its static files still served. This
runs `Procfile.demo`'s `web` command itself, with the local settings, on this test's database."""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from tests.factories import PASSWORD, CustomerFactory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(transaction=True)  # the demo's process reads what the test wrote


def demo_web_command(port: int) -> tuple[dict[str, str], list[str]]:
    """The environment and the command of Procfile.demo's `web` line, without the restarting wrapper."""
    line = next(x for x in (ROOT / "Procfile.demo").read_text().splitlines() if x.startswith("web:"))
    words = shlex.split(line.removeprefix("web:").replace("${DEMO_PORT:-8000}", str(port)))
    env = dict(word.split("=", 1) for word in words[: words.index("python")])
    return env, words[words.index("--") + 1 :]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo_web(tmp_path):
    port = free_port()
    env, command = demo_web_command(port)
    db = connection.settings_dict
    environment = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DJANGO_SETTINGS_MODULE")}
    environment.update(env, DJANGO_SETTINGS_MODULE="config.settings.local",
                       DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")  # fmt: skip
    log = tmp_path / "web.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable if word == "python" else word for word in command],
            cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # the site is up once it answers (a bounded wait, not a timed assertion)
            try:
                requests.get(f"{url}/healthz/", timeout=5)
                break
            except requests.ConnectionError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_demo_shows_the_products_404_and_403_pages_and_logs_them_in_one_line(demo_web):
    url, log = demo_web
    alice = CustomerFactory(username="alice")
    # A hash the demo's settings can check (the tests' own settings hash with MD5, for speed).
    alice.password = PBKDF2PasswordHasher().encode(PASSWORD, "demo-test-salt")
    alice.save(update_fields=["password"])
    session = requests.Session()
    session.get(f"{url}/login/", timeout=30)
    logged_in = session.post(
        f"{url}/login/", timeout=30, headers={"Referer": f"{url}/login/"},
        data={"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
    )  # fmt: skip
    assert logged_in.url.rstrip("/").endswith("/customer"), logged_in.url

    unknown = session.get(f"{url}/customer/bids/999999/", timeout=30)
    assert unknown.status_code == 404
    assert "Page not found." in unknown.text and "⚡ Idlefleet" in unknown.text
    assert "URLconf" not in unknown.text and "DEBUG = True" not in unknown.text
    forbidden = session.get(f"{url}/staff/", timeout=30)
    assert forbidden.status_code == 403
    assert "t open this page." in forbidden.text and "This page is for Idlefleet staff." in forbidden.text
    # The pages' static files are served by the demo's own runserver.
    stylesheet = re.search(r'href="(/static/css/app\.css)"', unknown.text).group(1)
    assert session.get(f"{url}{stylesheet}", timeout=30).status_code == 200

    printed = log.read_text()
    assert "Traceback" not in printed, printed
    assert printed.count("Not Found: /customer/bids/999999/") == 1, printed
    assert printed.count("Forbidden (Permission denied): /staff/") == 1, printed
