"""Tokens made before tokens had names (accounts 0004) get one, so that their owners see and can revoke them."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from knox.models import AuthToken

from accounts.selectors import api_tokens_for_user

BEFORE = [("accounts", "0003_auditevent_from_ops")]
AFTER = [("accounts", "0004_api_token")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture(autouse=True)
def every_migration_applied_afterwards():
    yield
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_existing_tokens_get_a_name_and_are_listed(alice):
    migrate(BEFORE)
    auth_token, _ = AuthToken.objects.create(user=alice)  # knox's table is the same before and after

    migrate(AFTER)

    assert [(t.name, t.auth_token_id) for t in api_tokens_for_user(user=alice)] == [("API token", auth_token.pk)]
