"""Shared marketplace fixtures (the digits model and inline tasks live in tests/conftest.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import OptInPolicy, Vehicle
from marketplace.models import Bid
from tests.factories import vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post


@pytest.fixture
def cars(client, olivia, oscar, settings):
    """Two parked HW4 cars on WiFi, with their credentials: olivia asks at least 2 ¢/CH, oscar at least 3 ¢/CH.

    Both have a long record of validated results and spot checks are off, so each result stands alone: these tests
    are about dispatch (tests/marketplace/test_verdicts.py is about checking results)."""
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    keys = []
    for owner, min_price in ((olivia, 2), (oscar, 3)):
        vehicle, credential = vehicle_with_credential(owner, name=f"{owner.username}'s car")
        Vehicle.objects.filter(pk=vehicle.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_cents_per_ch=min_price)
        assert signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=90)).status_code == 200
        keys.append((vehicle, credential))
    return keys


@pytest.fixture
def bid(client, digits_with_variants):
    """alice's bid for the digits dataset at up to 5 ¢/CH."""
    response = client.post(
        "/api/v1/bids/",
        {
            "inference_model": digits_with_variants.pk,
            "dataset": digits_with_variants.datasets.get().pk,
            "max_price_mcents_per_ch": 5000,
            "budget_cents": 100,
            "deadline": (timezone.now() + timedelta(hours=2)).isoformat(),
        },
        content_type="application/json",
    )
    assert response.status_code == 201
    return Bid.objects.get(pk=response.json()["id"])
