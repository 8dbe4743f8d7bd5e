from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post


@pytest.fixture
def digits_with_variants_for_pricing(client, digits_with_variants, olivia):
    """A bid at 5 ¢/CH for the digits model, and one parked car asking less than any reserve."""
    from marketplace.models import Bid

    _, credential = vehicle_with_credential(olivia)
    assert signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=90)).status_code == 200
    model = digits_with_variants
    variant = model.variants.get(precision="int8")
    Bid.objects.create(
        customer=model.owner, inference_model=model, dataset=model.datasets.get(), variant=variant,
        precision_requested="int8", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
        deadline=timezone.now() + timedelta(hours=1), items=200, ch_total=200 * variant.ch_per_item,
    )  # fmt: skip
    return model


@pytest.fixture
def add_card(card_for):
    return card_for


@pytest.fixture
def alice_card(alice, card_for):
    return card_for(alice)


@pytest.fixture
def olivia_car(olivia):
    vehicle, _ = vehicle_with_credential(olivia, name="Olivia's car")
    return vehicle


@pytest.fixture
def oscar_car(oscar):
    vehicle, _ = vehicle_with_credential(oscar, name="Oscar's car")
    return vehicle
