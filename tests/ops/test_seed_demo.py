import pytest
from django.core.management import call_command

from accounts.models import Role, User
from billing import ledger
from billing.models import TopUp
from core.money import NC_PER_CENT
from ops.demo import DEMO_PASSWORD
from tests.factories import vehicle_with_credential

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


def test_demo_bids_are_placed_once(stripe_server):
    from marketplace.models import Bid

    call_command("seed_demo")
    call_command("catalogue_sync", documents=20)
    # The demo's simulated fleet registers its cars (HW3 and HW4) before the bids are placed.
    vehicle_with_credential(User.objects.get(username="olivia"), name="Sim 01", hardware_name="HW4")
    vehicle_with_credential(User.objects.get(username="oscar"), name="Sim 03", hardware_name="HW3")
    call_command("seed_demo_bids")
    call_command("seed_demo_bids")

    bids = Bid.objects.order_by("customer__username")
    assert [(b.customer.username, b.pool, b.status) for b in bids] == [
        ("alice", "int8", "waiting"),
        ("bob", "int8", "waiting"),
    ]
    # Their budgets are reserved from a $10.00 prepaid balance, topped up once on a test card (run twice: once).
    assert {(b.funding, b.authorization.method, b.authorization.status) for b in bids} == {
        ("balance", "balance", "authorized")
    }
    assert TopUp.objects.filter(status="succeeded").count() == 2
    assert {ledger.balance(kind="customer_balance", user_id=b.customer_id) for b in bids} == {900 * NC_PER_CENT}
