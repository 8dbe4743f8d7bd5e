"""The pages say how often the auction runs as the pricing policy in force says, not as it once was: staff change the
interval in the admin, and the market page, the bid form, My jobs and the landing page follow."""

import pytest

from marketplace.models import PricingPolicy
from marketplace.templatetags.marketplace_tags import every

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "every second"),
        (30, "every 30 seconds"),
        (60, "every minute"),
        (90, "every 90 seconds"),
        (120, "every 2 minutes"),
        (3600, "every hour"),
        (7200, "every 2 hours"),
    ],
)
def test_an_interval_reads_in_its_largest_whole_unit(seconds, words):
    assert every(seconds) == words


def pages(client, model) -> dict[str, str]:
    paths = {
        "market": "/market/",
        "bid form": f"/customer/models/{model.pk}/bid/",
        "my jobs": "/customer/",
        "landing": "/",
    }
    texts = {}
    for name, path in paths.items():
        response = client.get(path)
        assert response.status_code == 200, name
        texts[name] = " ".join(response.content.decode().split())
    return texts


def test_the_pages_say_every_minute_by_default(client, digits_with_variants):
    for name, text in pages(client, digits_with_variants).items():
        assert "every minute" in text, name


def test_after_staff_set_a_30_second_interval_the_pages_say_every_30_seconds(client, digits_with_variants):
    PricingPolicy.objects.create(
        platform_fee_pct="10", reserve_int8_mcents=1000, reserve_fp8_mcents=1500, reserve_fp16_mcents=2000,
        reserve_fp32_mcents=3000, price_ceiling_mcents=100_000, auction_interval_seconds=30, note="faster rounds",
    )  # fmt: skip

    for name, text in pages(client, digits_with_variants).items():
        assert "every 30 seconds" in text, name
        assert "every minute" not in text.lower(), name
