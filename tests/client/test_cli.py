"""The installed `idlefleet` command against a live server: logging in keeps the token for its owner's eyes only, and
each kind of error the API answers prints its message and fields on stderr and exits with its documented code."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from knox.models import AuthToken

from tests.factories import PASSWORD, CustomerFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice_token(live_server):
    _, token = AuthToken.objects.create(CustomerFactory(username="alice"))
    return {"IDLEFLEET_URL": live_server.url, "IDLEFLEET_TOKEN": token}


def test_login_keeps_the_token_readable_by_its_owner_only_and_logout_revokes_it(live_server, idlefleet, cli_env):
    CustomerFactory(username="alice")

    login = idlefleet("login", "--url", live_server.url, "--username", "alice", "--password-stdin",
                      input=f"{PASSWORD}\n")  # fmt: skip

    assert login.code == 0, login
    path = cli_env["IDLEFLEET_CONFIG"]
    assert f"Logged in to {live_server.url} as alice. Token saved in {path}." in login.out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = json.loads(Path(path).read_text())
    assert (saved["url"], saved["username"]) == (live_server.url, "alice")
    assert AuthToken.objects.filter(user__username="alice").count() == 1
    listed = idlefleet("models", "--json")  # the file's URL and token
    assert (listed.code, json.loads(listed.out)) == (0, [])

    logout = idlefleet("logout")

    assert logout.code == 0 and "Logged out" in logout.out
    assert AuthToken.objects.filter(user__username="alice").count() == 0  # revoked at the server
    assert "token" not in json.loads(Path(path).read_text())
    again = idlefleet("models")
    assert again.code == 3 and "Not logged in" in again.err
    revoked = idlefleet("models", env={"IDLEFLEET_TOKEN": saved["token"]})  # the old token, as a script would pass it
    assert revoked.code == 3 and revoked.err.startswith("Error: ")


def test_a_wrong_password_exits_2_with_the_apis_message_and_saves_nothing(live_server, idlefleet, cli_env):
    CustomerFactory(username="alice")

    result = idlefleet("login", "--url", live_server.url, "--username", "alice", input="not-her-password\n")

    assert result.code == 2
    assert result.err == "Error: Unable to log in with that username and password.\n"
    assert not os.path.exists(cli_env["IDLEFLEET_CONFIG"])


def test_a_wrong_token_exits_3(live_server, idlefleet):
    result = idlefleet("bids", env={"IDLEFLEET_URL": live_server.url, "IDLEFLEET_TOKEN": "not-a-token"})

    assert result.code == 3
    assert result.err.startswith("Error: ") and "token" in result.err.lower()


def test_a_bid_with_a_bad_price_names_the_field_and_exits_2(idlefleet, alice_token):
    result = idlefleet("bid", "1", "1", "--max-price", "0.000001", "--budget", "1.00", env=alice_token)

    assert result.code == 2
    lines = result.err.splitlines()
    assert lines[0].startswith("Error: max_price_usd_per_ch: ")
    assert lines[1].startswith("  max_price_usd_per_ch: Ensure that there are no more than 5 decimal places.")


def test_a_bid_for_a_model_that_is_not_yours_exits_2_naming_the_model(idlefleet, alice_token):
    result = idlefleet("bid", "999999", "999999", "--max-price", "0.05", "--budget", "1.00", env=alice_token)

    assert result.code == 2
    assert "  inference_model: No such model that you can use." in result.err


def test_an_object_that_is_not_there_exits_4(idlefleet, alice_token):
    for args in (("status", "999999"), ("datasets", "999999"), ("estimate", "999999", "1"), ("cancel", "999999")):
        result = idlefleet(*args, env=alice_token)
        assert result.code == 4, (args, result)
        assert result.err.startswith("Error: ")


def test_usage_errors_exit_2_before_anything_is_sent(idlefleet, alice_token):
    missing = idlefleet("bid", "1", "2", "--budget", "1.00", env=alice_token)
    assert missing.code == 2 and "--max-price" in missing.err
    deadline = idlefleet("bid", "1", "2", "--max-price", "0.05", "--budget", "1", "--deadline", "soon", env=alice_token)
    assert deadline.code == 2 and "90m, 2h, 3d" in deadline.err
    price = idlefleet("estimate", "1", "2", "--max-price", "lots", env=alice_token)
    assert price.code == 2 and "is not an amount of dollars" in price.err


def test_no_server_exits_1(idlefleet):
    result = idlefleet("models", env={"IDLEFLEET_URL": "http://127.0.0.1:9", "IDLEFLEET_TOKEN": "x"})

    assert result.code == 1
    assert result.err.startswith("Error: Could not reach http://127.0.0.1:9")
