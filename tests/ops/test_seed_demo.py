import pytest
from django.core.management import call_command

from accounts.models import Role, User
from ops.demo import DEMO_PASSWORD

pytestmark = pytest.mark.django_db


def test_seed_demo_twice_gives_the_same_accounts(client):
    call_command("seed_demo")
    call_command("seed_demo")

    counts = {role: User.objects.filter(role=role).count() for role in Role.values}
    assert counts == {Role.STAFF: 1, Role.CUSTOMER: 2, Role.OWNER: 3}
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    for user in User.objects.all():
        assert client.login(username=user.username, password=DEMO_PASSWORD)
