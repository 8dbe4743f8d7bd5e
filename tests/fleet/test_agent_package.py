"""The agent as an owner installs it: its own distribution (fleet/agent/pyproject.toml), built into a wheel, installed
into a fresh virtual environment without Django, and run as the `idlefleet-agent` command against a live server with
the credential the owner page shows, reading a real car's state from a state file (not a simulated car)."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from fleet.agent.client import AgentClient, AgentHTTPError
from fleet.agent.runner import ME_PATH
from fleet.models import Vehicle
from marketplace.models import Bid, SelfTest, WorkUnit
from marketplace.rounds import auction_round_run
from tests.factories import CustomerFactory, OwnerFactory, hardware, vehicle_with_credential
from tests.marketplace.agents import digits_model_with_builds
from tests.waiting import wait_for

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_wheel_file(tmp_path_factory) -> Path:
    """`pip wheel --no-deps ./fleet/agent`, run on a copy of the folder: setuptools builds in the source tree and
    reuses its build/ folder, which could hold modules of an older tree; the copy has only what is tracked here."""
    work = tmp_path_factory.mktemp("agent-wheel")
    source = work / "agent"
    shutil.copytree(
        REPOSITORY / "fleet" / "agent", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(work / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("idlefleet_agent-*.whl")
    return wheel


@pytest.fixture(scope="session")
def agent_venv(agent_wheel_file, tmp_path_factory) -> Path:
    """A fresh virtual environment with the agent's wheel installed (its dependencies from the package index)."""
    venv = tmp_path_factory.mktemp("agent-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(agent_wheel_file)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The agent runs without the server's code: the environment has none of its packages.
    assert subprocess.run([str(python), "-c", "import django"], capture_output=True).returncode != 0
    assert subprocess.run([str(python), "-c", "import fleet"], capture_output=True, cwd=venv).returncode != 0
    return venv


def test_the_wheel_holds_only_the_agents_modules_and_the_site_serves_the_same(agent_wheel_file, client):
    built = zipfile.ZipFile(agent_wheel_file)
    modules = sorted(name for name in built.namelist() if not name.startswith("idlefleet_agent-"))
    assert modules == sorted(f"idlefleet_agent/{path.name}" for path in (REPOSITORY / "fleet" / "agent").glob("*.py"))
    assert "idlefleet_agent/vehicle.py" in modules

    redirect = client.get("/agent/download/")
    assert redirect.status_code == 302 and redirect["Location"].endswith(f"/{agent_wheel_file.name}")
    response = client.get(redirect["Location"])
    assert response.status_code == 200
    served = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(served.namelist()) == sorted(built.namelist())
    for name in modules:
        assert served.read(name) == built.read(name)

    def requirements(archive: zipfile.ZipFile) -> set[str]:
        (metadata,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
        wanted = (line.replace(" ", "") for line in lines if line.startswith(("Requires-Dist:", "Name:", "Version:")))
        # A requirement's specifiers in any order: setuptools sorts them, the site keeps pyproject.toml's order.
        return {re.sub(r"([<>=!~].*)$", lambda m: ",".join(sorted(m.group(1).split(","))), line) for line in wanted}

    assert requirements(served) == requirements(built)
    needs = {re.split(r"[<>=;\[]", line.removeprefix("Requires-Dist:"))[0] for line in requirements(built)
             if line.startswith("Requires-Dist:")}  # fmt: skip
    assert needs == {"onnxruntime", "numpy", "tokenizers", "cryptography", "requests", "tzdata"}
    assert client.get("/agent/download/idlefleet_agent-0.0.1-py3-none-any.whl").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_agent_reads_its_cars_time_zone_from_the_platform(live_server):
    _, credential = vehicle_with_credential(OwnerFactory(username="olivia"), name="Blue car", time_zone="Asia/Tokyo")
    agent = AgentClient(live_server.url, credential)

    assert agent.get_json(ME_PATH) == {
        "vehicle_id": Vehicle.objects.get().pk, "display_name": "Blue car", "time_zone": "Asia/Tokyo",
    }  # fmt: skip
    stranger = AgentClient(live_server.url, type(credential).generate("nobody"), max_retries=0)
    with pytest.raises(AgentHTTPError) as refused:
        stranger.get_json(ME_PATH)
    assert refused.value.status == 401


def credential_from_owner_page(client, live_server, owner) -> str:
    """Register a car on the owner page, as the owner does, and copy car.json from the page that shows it once. The
    page is asked for at the live server's address, so the file names that server (as a real owner's would)."""
    client.force_login(owner)
    host = live_server.url.removeprefix("http://")
    response = client.post(
        "/owner/vehicles/new/",
        {"display_name": "Blue car", "hardware": hardware("HW4").pk, "time_zone": "Europe/Berlin", "region": "DE",
         "battery_capacity_kwh": 75, "energy_price_usd_per_kwh": "0.16", "vin": ""},
        HTTP_HOST=host,
    )  # fmt: skip
    assert response.status_code == 200, response.content.decode()[:2000]
    page = response.content.decode()
    found = re.search(r'<pre id="credential-file"[^>]*><code>(.*?)</code></pre>', page, flags=re.DOTALL)
    assert found, "the credential file is shown on the page"
    text = html.unescape(found.group(1))
    assert json.loads(text)["server"] == live_server.url
    # The page's own instructions: the install command names the wheel the site serves, then the command below.
    assert f"pipx install {live_server.url}/agent/download/idlefleet_agent-" in html.unescape(page)
    assert "idlefleet-agent --credential car.json --vehicle-state car-state.json" in page
    return text


class Integration(threading.Thread):
    """The car's side and the platform's clock while the test waits: a vehicle integration rewrites the state file
    every half second (parked at home, plugged in, on WiFi), and a round runs as the beat runs them, in real time."""

    def __init__(self, state_file: Path, customer) -> None:
        super().__init__(daemon=True)
        self.state_file, self.customer = state_file, customer
        self.stop, self.errors, self.rounds = threading.Event(), [], 0

    def write_state(self) -> None:
        state = {
            "gear": "park", "battery_pct": 81.5, "battery_capacity_kwh": 75, "plugged_in": True,
            "charge_power_w": 7400, "network": "wifi", "bandwidth_down_mbps": 250, "bandwidth_up_mbps": 30,
            "latency_ms": 12, "observed_at": datetime.now(UTC).isoformat(),
        }  # fmt: skip
        partial = self.state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(state))
        partial.replace(self.state_file)  # never half a file

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.write_state()
                if Bid.objects.filter(customer=self.customer, status__in=Bid.OPEN_STATUSES).exists():
                    self.rounds += auction_round_run() is not None
                self.stop.wait(0.5)
        except Exception as error:  # reported by the test
            self.errors.append(repr(error))
        finally:
            connection.close()


@pytest.mark.worker
def test_an_installed_agent_sells_a_real_cars_idle_compute(
    client, live_server, celery_worker_thread, digits_onnx, tmp_path, settings, card_for, agent_venv
):
    settings.AUCTION_INTERVAL_SECONDS = 1  # a round a second, in real time
    # An idle car heartbeats (and asks for work) every 15 s here, the shortest idle interval, not every 60 s: the test
    # runs in real time, and its car is sold while idle.
    settings.IDLE_HEARTBEAT_SECONDS = 15
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0  # one trusted car: no second car to check a spot-checked slice
    alice = CustomerFactory(username="alice")
    card_for(alice)
    client.force_login(alice)
    model, dataset_id = digits_model_with_builds(client, digits_onnx)
    model_id = model.pk

    owner = OwnerFactory(username="olivia")
    (tmp_path / "car.json").write_text(credential_from_owner_page(client, live_server, owner))
    car = Vehicle.objects.get(owner=owner)
    # Result checking has its own tests (tests/marketplace/test_verdicts.py): this car has a record already.
    Vehicle.objects.filter(pk=car.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    client.force_login(alice)
    integration = Integration(tmp_path / "car-state.json", alice)
    integration.write_state()
    log = (tmp_path / "agent.log").open("w")
    # The car page's command, verbatim, plus a fast heartbeat and a cache folder of this test's.
    agent = subprocess.Popen(
        [str(agent_venv / "bin" / "idlefleet-agent"), "--credential", "car.json", "--vehicle-state", "car-state.json",
         "--heartbeat", "1", "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8"},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    integration.start()
    try:
        from fleet.selectors import vehicles_live

        def available() -> bool:
            (item,) = vehicles_live(list(Vehicle.objects.filter(pk=car.pk).select_related("hardware", "policy")))
            return item.availability.available

        assert wait_for(available, timeout=30), (tmp_path / "agent.log").read_text()
        bid = client.post(
            "/api/v1/bids/",
            {"inference_model": model_id, "dataset": dataset_id, "precision": "auto", "max_price_usd_per_ch": "0.05",
             "budget_usd": "1.00", "deadline": (timezone.now() + timedelta(hours=1)).isoformat()},
            content_type="application/json",
        ).json()  # fmt: skip
        finished = wait_for(lambda: Bid.objects.get(pk=bid["id"]).status == "completed", timeout=60)
    finally:
        integration.stop.set()
        integration.join(timeout=30)
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait(timeout=5)
        log.close()
    output = (tmp_path / "agent.log").read_text()
    units = list(WorkUnit.objects.values_list("status", "verification", "done_by", "error"))
    assert finished, f"units {units}, rounds {integration.rounds}\n{output[-3000:]}"
    assert integration.errors == []
    assert code == 0, output[-3000:]  # SIGTERM: a clean stop
    # The agent said which vehicle interface it used, and took the car's time zone from the platform.
    assert "vehicle interface: vehicle state file car-state.json" in output
    assert "time zone Europe/Berlin (from the platform)" in output
    assert "SIMULATED" not in output
    # A round sold this car's compute, and the car ran the work: its self-test of the variant, then the bid's units.
    assert car.allocations.filter(bid_id=bid["id"]).exists()
    done = WorkUnit.objects.filter(bid_id=bid["id"], status="done")
    assert done.exists() and set(done.values_list("done_by", flat=True)) == {car.pk}
    assert SelfTest.objects.filter(vehicle=car, status="passed").exists()
    assert "work unit" in output and " done: " in output
    results = client.get(f"/customer/bids/{bid['id']}/result/")
    assert results.status_code == 200 and len(results.content) > 0
