"""A customer, in a browser: signs up, adds a test card, tops up her prepaid balance, uploads a dataset for the
catalogue's embedding model, bids with "auto" precision (paid from the balance), watches the progress bar move while a
real agent computes, downloads the results and reads the receipt, which charges the job exactly what it is worth: a
fraction of a cent, to the n¢. The real worker builds the variants, runs the rounds and settles the payment; the
top-up is charged at the local Stripe server."""

import json
import re
import time

import pytest
from django.core.management import call_command

from billing.models import PaymentAuthorization
from core.money import nc_from_cents, usd
from marketplace.inference.catalogue import demo_documents
from marketplace.models import Bid, Dataset, InferenceModel
from tests.factories import OwnerFactory, ensure_hardware_profiles
from tests.waiting import wait_for

from .journeys import (
    agent_log,
    assert_accessible_basics,
    focused,
    night_time_zone,
    parked_car,
    screenshot,
    sign_up,
)

DOCUMENTS = 60
PROGRESS = "#bid-progress progress"
# The bid form's fields in tab order, then its button: the keyboard reaches each, in the order they are shown.
BID_FORM_ORDER = ["id_dataset", "id_precision", "id_max_price_usd_per_ch", "id_budget_usd", "id_funding",
                  "id_deadline", "id_all_or_none", "button"]  # fmt: skip


def progress_values(page, *, until_done: int, timeout: float, on_partial) -> list[int]:
    """Read the progress bar every 200 ms without reloading (htmx swaps it in every 3 s) until it shows `until_done`
    items; every distinct value seen, in order. `on_partial` runs once, the first time it is partly filled."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = int(float(page.locator(PROGRESS).get_attribute("value")))
        if not seen or seen[-1] != value:
            seen.append(value)
            if 0 < value < until_done and len([v for v in seen if 0 < v < until_done]) == 1:
                on_partial()
        if value >= until_done:
            break
        page.wait_for_timeout(200)
    return seen


@pytest.mark.worker
def test_customer_bids_watches_progress_downloads_results_and_reads_receipt(
    page, live_server, stripe_server, celery_worker_thread, auction_ticker, agents, settings, tmp_path
):
    settings.AUCTION_INTERVAL_SECONDS = 2
    # An idle car heartbeats (and asks for work) every 15 s here, the shortest idle interval: the test runs in real
    # time, and its car may be sold while idle.
    settings.IDLE_HEARTBEAT_SECONDS = 15
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    # Units bounded in items: the job is cut into three units, one per heartbeat of the car, so the bar moves in
    # steps. The job's price stays honest: the catalogue's own CH per document, a fraction of a cent in all.
    settings.WORK_UNIT_MAX_ITEMS = DOCUMENTS // 3
    ensure_hardware_profiles()
    call_command("catalogue_sync", no_variants=True, documents=20, stdout=open("/dev/null", "w"))  # noqa: SIM115
    minilm = InferenceModel.objects.get(is_catalogue=True, kind="text")
    # The supply: an owner's car parked for the night. Its agent takes at most one unit per heartbeat, every 2.5 s:
    # three units then end over 5 s or more, longer than the page's 3 s polling, so the bar must show a step between.
    parked_car(OwnerFactory(username="olivia"), tz=night_time_zone(), agents=agents, min_price_cents=4, heartbeat=2.5)

    sign_up(page, username="carol", role="customer")
    page.get_by_role("link", name="Billing").click()
    page.wait_for_url("**/customer/billing/")
    assert_accessible_basics(page)
    page.get_by_label("Test card").select_option("pm_card_visa")
    page.get_by_role("button", name="Save card").click()
    page.get_by_text("Card saved: Visa ending in 4242.").wait_for()
    # Her prepaid balance: $10 charged to the card at once; her bids reserve their budget from it.
    assert page.locator("#balance-free").inner_text() == "$0.00"
    page.get_by_label("Amount ($)").fill("10")
    page.get_by_role("button", name="Add to my balance").click()
    page.get_by_text("$10.00 added to your balance.").wait_for()
    assert page.locator("#balance-free").inner_text() == "$10.00"
    assert_accessible_basics(page)

    # The catalogue's MiniLM, and a dataset of her own documents for it.
    page.get_by_role("link", name="My jobs").click()
    page.get_by_role("button", name="All models").click()
    page.get_by_role("link", name=minilm.name).click()
    page.wait_for_url(f"**/customer/models/{minilm.pk}/")
    assert_accessible_basics(page)
    documents = "\n".join(json.dumps(text) for text in demo_documents(DOCUMENTS)).encode()
    page.get_by_label("Name").fill("Support articles")
    page.locator("#id_file").set_input_files(
        {"name": "articles.jsonl", "mimeType": "application/jsonl", "buffer": documents}
    )
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text(f"Support articles: {DOCUMENTS} items.").wait_for()
    # The worker builds the four precision variants, the page polling them, until auto settles on the cheapest.
    page.locator("#variants:not([hx-get])").wait_for(timeout=180_000)  # every variant built: it stopped polling
    assert page.get_by_text("Auto precision picks INT8").is_visible()

    # Her dataset of the catalogue model has variants of its own: she bids on it from its report.
    page.get_by_role("button", name="Bid for compute on Support articles").click()
    page.wait_for_url(f"**/customer/models/{minilm.pk}/bid/?dataset=*")
    assert_accessible_basics(page)
    assert page.get_by_label("Dataset").input_value() == str(Dataset.objects.get(name="Support articles").pk)
    # Keyboard: from the heading, Tab walks the form's fields in order, each showing where the focus is.
    page.get_by_role("heading", level=1).click()
    order: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")
        now = focused(page)
        if now["id"] in BID_FORM_ORDER or now["tag"] == "button":
            assert now["visible"], f"no visible focus on {now}"
            name = now["id"] if now["tag"] != "button" else "button"
            if not order or order[-1] != name:
                order.append(name)
        if now["tag"] == "button":
            assert now["text"] == "Place bid"
            break
    assert order == BID_FORM_ORDER
    assert page.locator("#id_precision").input_value() == "auto"
    page.keyboard.press("Enter")  # the focused "Place bid" button
    page.get_by_text(f"Bid placed: {DOCUMENTS} items.").wait_for()
    bid = Bid.objects.get(customer__username="carol")
    assert bid.variant.precision == "int8"
    assert PaymentAuthorization.objects.get(bid=bid).method == "balance"  # her balance covers the budget
    assert_accessible_basics(page)

    # Rounds sell the car's time, the agent leases the units one heartbeat apart and returns each one's outputs;
    # the bar (swapped in by htmx, never reloaded here) must show the work getting done, not just jump to the end.
    seen = progress_values(page, until_done=DOCUMENTS, timeout=120, on_partial=lambda: screenshot(page, "job-progress"))
    assert seen[0] == 0 and seen[-1] == DOCUMENTS, f"the progress bar went {seen}; agent: {agent_log(tmp_path)}"
    assert seen == sorted(seen), seen
    assert any(0 < value < DOCUMENTS for value in seen), f"no partly filled bar between {seen}"
    page.locator("#bid-progress:not([hx-get])").get_by_text("Completed").wait_for()  # done: it stopped polling
    page.reload()  # the rounds it won are listed when the page loads (only the progress is live)
    assert "INT8" in page.locator("table").inner_text()

    with page.expect_download() as download:
        page.get_by_role("button", name="Download results").click()
    lines = download.value.path().read_text().splitlines()
    assert len(lines) == DOCUMENTS
    rows = [json.loads(line) for line in lines]
    assert [row["index"] for row in rows] == list(range(DOCUMENTS))
    assert rows[0]["text"] == demo_documents(1)[0] and {len(row["vector"]) for row in rows} == {384}

    # The worker draws the validated work from her balance at the clearing price, to the n¢: sixty documents are
    # worth a tiny fraction of a cent, and the receipt charges exactly that (never rounded to $0.00 or a whole cent).
    assert wait_for(lambda: PaymentAuthorization.objects.get(bid=bid).status == "settled", timeout=60)
    authorization = PaymentAuthorization.objects.get(bid=bid)
    charged_nc = authorization.charged_nc
    assert 0 < charged_nc < 10**9, charged_nc  # n¢: more than nothing, less than a cent
    page.get_by_role("link", name="Receipt").click()
    page.wait_for_url(f"**/customer/billing/receipts/{bid.pk}/")
    assert_accessible_basics(page)
    charged = page.get_by_role("row", name="Charged for the validated work").inner_text()
    assert usd(charged_nc) in charged, charged
    assert re.search(r"\$0\.0000\d*[1-9]", charged) and "e-" not in charged, charged
    returned = page.get_by_role("row", name="Returned to your balance").inner_text()
    assert usd(nc_from_cents(authorization.amount_cents) - charged_nc) in returned, returned  # the budget's rest

    page.get_by_role("link", name="Market").click()
    page.wait_for_url("**/market/")
    assert_accessible_basics(page)  # its screenshot is taken by the staff journey, after a change of price
