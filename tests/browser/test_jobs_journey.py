"""A customer with many jobs, in a browser: "My jobs" pages them 20 at a time, newest first, filters them by status
(the pager keeping the filter) and shows what each has cost; on a running bid's page she raises its maximum price,
then cancels it, paying only for the items a car had validated.

The older jobs are built in the database (a car's validated work, sold by rounds, settled by billing at the local
Stripe server); the running one is a real bid placed through the API and sold by a real round to a car, which leases its
first slice through the agent API and returns the results before she cancels."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from billing.services import authorizations, settling
from core.money import nc_from_mcents, usd
from marketplace.models import Bid, PrecisionVariant
from tests.billing import builders
from tests.factories import PASSWORD
from tests.fleet.agent_requests import signed_post
from tests.marketplace.conftest import bid, cars, running_bid  # noqa: F401 - the marketplace's fixtures
from tests.marketplace.test_bid_management import RESULT, lease, model_bytes
from tests.marketplace.test_dispatch import run_unit

from .journeys import assert_accessible_basics, log_in, screenshot

# The older jobs, one a day, newest first: (status, items of 200 a car ran and had validated).
ENDED = [("completed", 200)] * 22 + [("expired", 120)] * 3 + [("cancelled", 0)] * 2 + [("failed", 0)]


@pytest.fixture(autouse=True)
def _four_slices(settings):
    """The running bid's 200 items cut into four slices when its round sells it: one can be done, the others not."""
    settings.WORK_UNIT_MAX_ITEMS = 50


def older_job(alice, variant: PrecisionVariant, vehicle, *, status: str, days_ago: int, items_done: int,
              price_mcents: int) -> tuple[Bid, int]:  # fmt: skip
    """A job placed `days_ago` days ago, its budget held on her card, whose first `items_done` items a car ran at
    `price_mcents` per CH and had validated; then it ended with `status` and billing settled it at the local Stripe
    server. The job, and what its validated work cost her, in n¢ (billing/settlement.py's rule)."""
    placed = timezone.now() - timedelta(days=days_ago)
    job = Bid.objects.create(
        customer=alice, inference_model=variant.inference_model, dataset=variant.inference_model.datasets.get(),
        variant=variant, precision_requested="int8", pool="int8", max_price_mcents_per_ch=5000, budget_cents=100,
        funding=Bid.Funding.CARD, deadline=placed + timedelta(hours=12), items=200, ch_total=200 * variant.ch_per_item,
        status=Bid.Status.AUTHORIZING,
    )  # fmt: skip
    Bid.objects.filter(pk=job.pk).update(created_at=placed)
    if not items_done:  # a job that never ran: nothing held, nothing charged
        builders.close(job, status)
        return job, 0
    with transaction.atomic():  # as placing a bid does
        authorization = authorizations.authorization_prepare(bid=job)
    authorizations.authorization_confirm(authorization_id=authorization.pk)
    unit = builders.validate(
        builders.sell(job, vehicle, ch=items_done * variant.ch_per_item, price_mcents=price_mcents)
    )
    builders.close(job, status)
    assert settling.bid_settle(bid_id=job.pk).status == "settled"
    return job, nc_from_mcents(Decimal(repr(unit.ch)) * price_mcents)


def rows(page) -> list[dict[str, str]]:
    """The jobs table as she reads it: each row's bid, status and cost cell."""
    return [
        {"bid": cells[0], "status": cells[2], "cost": cells[4]}
        for cells in (row.locator("td").all_inner_texts() for row in page.locator("#jobs tbody tr").all())
    ]


def pager(page) -> str:
    return page.get_by_role("navigation", name="Job pages").inner_text()


def show(page, label: str) -> None:
    page.get_by_role("navigation", name="Show jobs").get_by_role("link", name=label, exact=True).click()
    page.get_by_role("navigation", name="Show jobs").locator("[aria-current=page]", has_text=label).wait_for()


def test_my_jobs_pages_filters_and_costs_then_a_running_bid_is_raised_and_cancelled(
    page,
    live_server,
    running_bid,  # noqa: F811 - the fixture imported above
    cars,  # noqa: F811
    alice,
    client,
):
    (olivias_car, olivias_key), _ = cars
    # The car leases the running bid's first slice and returns its results: validated.
    first = lease(client, olivias_key)
    returned = signed_post(client, olivias_key, RESULT, run_unit(first, model_bytes(client, olivias_key, first)))
    assert returned.status_code == 200, returned.content
    running_bid.refresh_from_db()
    assert running_bid.status == "running"
    variant = running_bid.variant
    older = [
        older_job(alice, variant, olivias_car, status=status, days_ago=1 + i, items_done=done,
                  price_mcents=2000 + 50 * i)
        for i, (status, done) in enumerate(ENDED)
    ]  # fmt: skip
    newest_first = [running_bid, *(job for job, _ in older)]  # 29 jobs
    costs = {job.pk: usd(cost_nc) for job, cost_nc in older}

    log_in(page, username="alice", password=PASSWORD)
    page.get_by_role("link", name="My jobs").click()
    page.wait_for_url("**/customer/")
    assert_accessible_basics(page)
    # Newest first, 20 a page: the running job, yesterday's completed one, then the rest.
    assert pager(page) == "Page 1 of 2 · 29 jobs\nOlder →"
    listed = rows(page)
    assert [row["bid"] for row in listed] == [f"#{job.pk}" for job in newest_first[:20]]
    assert listed[0]["status"] == "Running" and listed[1]["status"] == "Completed"
    # The cost column: each ended job's exact charge for its validated work (a fraction of a cent: digits are
    # light), of its budget; the running job's validated slice so far.
    assert [row["cost"] for row in listed[1:]] == [f"{costs[job.pk]}\nof $1.00" for job, _ in older[:19]]
    assert len(set(costs.values())) > 20 and "$0.00" not in [costs[job.pk] for job, _ in older[:19]]
    running_cost = listed[0]["cost"].split("\n")[0]
    assert running_cost not in ("$0.00", "—") and listed[0]["cost"].endswith("of $1.00"), listed[0]
    screenshot(page, "my-jobs")

    page.get_by_role("link", name="Older →").click()
    page.wait_for_url("**/customer/?page=2")
    assert pager(page) == "← Newer\nPage 2 of 2 · 29 jobs"
    assert [row["bid"] for row in rows(page)] == [f"#{job.pk}" for job in newest_first[20:]]

    # The filters: completed jobs (22, two pages: the pager keeps the filter), open ones, the ones that ended early.
    show(page, "Completed")
    assert pager(page) == "Page 1 of 2 · 22 jobs\nOlder →"
    assert {row["status"] for row in rows(page)} == {"Completed"} and len(rows(page)) == 20
    page.get_by_role("link", name="Older →").click()
    page.wait_for_url("**/customer/?show=completed&page=2")
    assert [row["status"] for row in rows(page)] == ["Completed", "Completed"]
    show(page, "Cancelled, expired or failed")
    assert sorted(row["status"] for row in rows(page)) == ["Cancelled"] * 2 + ["Expired"] * 3 + ["Failed"]
    assert page.get_by_role("navigation", name="Job pages").count() == 0  # one page
    show(page, "Open")
    assert [row["bid"] for row in rows(page)] == [f"#{running_bid.pk}"]
    assert_accessible_basics(page)

    # The running bid: she raises its maximum price.
    page.get_by_role("link", name=f"#{running_bid.pk}").click()
    page.wait_for_url(f"**/customer/bids/{running_bid.pk}/")
    assert_accessible_basics(page)
    header = page.locator("hgroup p")
    assert "up to $0.05/CH" in header.inner_text()
    assert page.locator("#bid-progress").get_by_text("50 of 200 items done").is_visible()
    page.get_by_label("Raise the maximum price ($ per CH)").fill("0.08")
    page.get_by_role("button", name="Raise price").click()
    page.get_by_text("Maximum price raised to $0.08/CH: the next rounds use it.").wait_for()
    assert "up to $0.08/CH" in header.inner_text() and "$0.05/CH" not in header.inner_text()
    assert Bid.objects.get(pk=running_bid.pk).max_price_mcents_per_ch == 8000

    # Then she cancels it: the page says what she pays for before she does, and after.
    cost = page.locator("#cost strong")
    assert cost.inner_text() == running_cost  # the validated slice, as My jobs showed it
    manage = page.locator("#manage")
    assert "Cancelling stops the cars working on this job. You pay for the 50 items validated so far and the rest " \
           "of the budget is released." in manage.inner_text()  # fmt: skip
    page.get_by_role("button", name="Cancel bid").click()
    page.get_by_text(
        "Bid cancelled: nothing more will be bought for it. You pay only for the work validated so far; the rest of "
        "the budget is released."
    ).wait_for()
    assert page.locator("#bid-progress strong").first.inner_text() == "Cancelled"
    assert page.locator("#bid-progress").get_by_text("50 of 200 items done").is_visible()
    assert cost.inner_text() == running_cost  # what she pays: the 50 validated items, nothing more
    assert page.get_by_role("button", name="Raise price").count() == 0
    assert page.get_by_role("button", name="Cancel bid").count() == 0
    assert page.locator("#manage").count() == 0
    assert Bid.objects.get(pk=running_bid.pk).status == "cancelled"
    assert_accessible_basics(page)

    # Back on My jobs it has left the open ones for those that ended early.
    page.get_by_role("link", name="My jobs").first.click()
    show(page, "Open")
    assert page.get_by_text("No job here.").is_visible()
    show(page, "Cancelled, expired or failed")
    assert rows(page)[0]["bid"] == f"#{running_bid.pk}" and rows(page)[0]["status"] == "Cancelled"
