"""The README's "From the command line" job, run as written: the installed `idlefleet` command logs in, finds the model,
uploads a dataset, estimates, bids, waits with its progress bar while real agents do the work that the auction sold
them, and downloads results that equal local inference. Only the server's URL is this test's."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import threading
import zoneinfo
from datetime import datetime

import numpy as np
import pytest
from django.db import connection
from knox.models import AuthToken

from fleet.agent.client import AgentClient
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.inference import ModelRunner, ModelSpec
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from marketplace import storage
from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
from marketplace.models import Bid, WorkUnit
from marketplace.rounds import auction_round_run
from marketplace.verification import Tolerance, results_agree
from tests.client.conftest import ANSI, REPOSITORY
from tests.factories import PASSWORD, CustomerFactory, OwnerFactory, vehicle_with_credential
from tests.marketplace.agents import StillClock, digits_model_with_builds

TZ = zoneinfo.ZoneInfo("America/Los_Angeles")
SUNDAY_NIGHT = datetime(2026, 11, 22, 23, 0, tzinfo=TZ)  # every car is home, parked on WiFi


def readme_commands() -> list[str]:
    """The commands (lines starting with "$ ") of the one console block in the README's "From the command line"."""
    text = (REPOSITORY / "README.md").read_text()
    section = text.split("\n## From the command line\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```console\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section has one console block"
    return [line[2:] for line in blocks[0].splitlines() if line.startswith("$ ")]


def test_the_readme_block_is_a_whole_job():
    commands = " ; ".join(readme_commands())
    for step in ("idlefleet login", "idlefleet models", "idlefleet upload", "idlefleet estimate", "idlefleet bid",
                 "idlefleet wait", "idlefleet download"):  # fmt: skip
        assert step in commands


class Auctioneer(threading.Thread):
    """What the platform and the cars do while the customer waits: a round every interval while a bid of the customer
    is open (as the beat runs them, in real time: a round's view of the cars' heartbeats is the real one), and a step
    of every car (heartbeat, lease, run, upload)."""

    def __init__(self, agents, customer) -> None:
        super().__init__(daemon=True)
        self.agents, self.customer = agents, customer
        self.stop, self.errors, self.rounds = threading.Event(), [], 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if Bid.objects.filter(customer=self.customer, status__in=Bid.OPEN_STATUSES).exists():
                    self.rounds += auction_round_run() is not None
                for agent in self.agents:
                    agent.step()
                self.stop.wait(0.2)
        except Exception as error:  # reported by the test
            self.errors.append(repr(error))
        finally:
            connection.close()


@pytest.mark.worker
def test_the_readme_job_runs_from_login_to_results_that_equal_local_inference(
    client, live_server, celery_worker_thread, digits_onnx, tmp_path, settings, card_for, idlefleet_venv, cli_env,
    idlefleet,
):  # fmt: skip
    settings.AUCTION_INTERVAL_SECONDS = 1  # a round a second, in real time, so that the test takes seconds
    alice = CustomerFactory(username="alice")
    card_for(alice)
    # alice's model, as she uploads it on the web site (the command line uploads datasets, not models).
    client.force_login(alice)
    # Its first dataset calibrates the precision variants the platform builds of it.
    digits_model_with_builds(client, digits_onnx)
    items = digits_items(300)
    buffer = io.BytesIO()
    np.save(buffer, items, allow_pickle=False)
    (tmp_path / "digits.npy").write_bytes(buffer.getvalue())

    # The job at its honest price (a few nano-CH a digit), on two new cars of two owners: every slice one ran is
    # checked by the other before it counts.
    agents = []
    for n, seed in enumerate((21, 22)):
        _, credential = vehicle_with_credential(OwnerFactory(username=f"owner{n}"), time_zone=str(TZ))
        http = AgentClient(live_server.url, credential)
        car = SimulatedCar("homebody", seed, SUNDAY_NIGHT, TZ)
        executor = Executor(http, ArtifactCache(tmp_path / f"car{n}", max_bytes=50_000_000))
        agents.append(Agent(http, car, StillClock(SUNDAY_NIGHT), executor=executor))
    for agent in agents:
        agent.step()  # heartbeats: the platform knows two parked cars on WiFi

    commands = [
        f"export IDLEFLEET_URL={live_server.url}" if line.startswith("export IDLEFLEET_URL=") else line
        for line in readme_commands()
    ]
    script = "set -euxo pipefail\n" + "\n".join(commands) + "\n"
    auctioneer = Auctioneer(agents, alice)
    auctioneer.start()
    try:
        # The password typed at the prompt (standard input is not a terminal here); rich draws its bar as on a
        # terminal (FORCE_COLOR), so the bar itself is what is checked.
        done = subprocess.run(
            ["bash", "-c", script], env={**cli_env, "FORCE_COLOR": "1"}, input=f"{PASSWORD}\n", capture_output=True,
            text=True, cwd=tmp_path, timeout=150,
        )  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        units = list(WorkUnit.objects.values_list("status", "verification", "error"))
        bids = list(Bid.objects.values_list("pk", "status", "pool", "ch_allocated"))
        output = ANSI.sub("", (expired.stdout or b"").decode())[-3000:]
        pytest.fail(f"the job did not end: bids {bids}, units {units}, rounds {auctioneer.rounds}\n{output}")
    finally:
        auctioneer.stop.set()
        auctioneer.join(timeout=30)
    out, err = ANSI.sub("", done.stdout), ANSI.sub("", done.stderr)
    assert done.returncode == 0, f"{out}\n{err}"
    assert auctioneer.errors == []

    bid = Bid.objects.get(customer=alice)
    assert bid.status == "completed"
    done = WorkUnit.objects.filter(bid=bid, status="done")
    assert {unit.verification for unit in done} == {"valid"}
    assert {unit.done_by_id for unit in done.filter(replica_of__isnull=False)}  # each new car's slices, checked
    assert (bid.precision_requested, bid.pool) == ("auto", "int8")
    assert (bid.max_price_mcents_per_ch, bid.budget_cents) == (5000, 100)  # $0.05 per CH, $1.00
    assert f"Logged in to {live_server.url} as alice." in out
    assert re.search(r"\bdigits\W+tensor\W+ready\W+int8\W+yours\b", out), out  # the models table
    assert re.search(r"INT8 ←\W+[0-9.e-]+\W+\$0\.0\d+", out), out  # the estimate's row of auto's pick
    assert "Suggested budget: $" in out
    # The live bar of `wait`, at the end: every item done; then the summary and the saved file.
    assert re.search(rf"Bid {bid.pk}: completed .*300/300 items 100%", out), out
    assert f"Bid {bid.pk} completed: 300 of 300 items" in out
    assert f"Saved bid {bid.pk}'s results to results.npy" in out

    # The results equal local inference, compared as two honest cars' results are (tests/marketplace/test_end_to_end).
    outputs = np.load(tmp_path / "results.npy", allow_pickle=False)
    local = ModelRunner(storage.artifact_read(bid.variant.sha256), ModelSpec("tensor", DIGITS_OUTPUT)).run(list(items))
    assert outputs.shape == (300, 10)
    assert results_agree(outputs, local, Tolerance.for_precision("max_abs", "int8"))
    assert (outputs.argmax(axis=1) == local.argmax(axis=1)).mean() > 0.99

    # The token is kept for its owner's eyes only.
    config = tmp_path / "home" / ".config" / "idlefleet" / "config.json"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600

    # Another customer's bid is not there for bob: exit 4 (not found), for its status and its results alike.
    _, bobs_token = AuthToken.objects.create(CustomerFactory(username="bob"))
    as_bob = {"IDLEFLEET_URL": live_server.url, "IDLEFLEET_TOKEN": bobs_token}
    for args in (("status", str(bid.pk)), ("download", str(bid.pk), "-o", "stolen.npy")):
        result = idlefleet(*args, env=as_bob)
        assert result.code == 4, result
        assert result.err == "Error: No such bid.\n"
    assert not (tmp_path / "stolen.npy").exists()
