"""The bid form's estimate: what the dataset chosen costs in every precision's pool, which pools have no cars now, and a
budget that covers the worst case, following the customer's choices (GET /customer/models/<id>/bid/estimate/)."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from core.money import price_per_million, usd
from marketplace.models import Bid, Dataset, InferenceModel, PrecisionVariant

pytestmark = pytest.mark.django_db

EXPONENT = re.compile(r"\d[eE][-+]\d")  # 1.4e-08, 2E+5: how `.3g` and `.2e` write small and large numbers


def page_of(client, model, **query) -> str:
    response = client.get(f"/customer/models/{model.pk}/bid/", query)
    assert response.status_code == 200
    return response.content.decode()


def estimate_of(client, model, **query):
    return client.get(f"/customer/models/{model.pk}/bid/estimate/", query)


def heavier(model, ch_per_item: float) -> None:
    """Make every item of `model` cost `ch_per_item` CH, so that the job is worth whole cents."""
    PrecisionVariant.objects.filter(inference_model=model).update(ch_per_item=ch_per_item)


def last_round(prices: dict[str, int], supply_ch: float = 30.85) -> None:
    """A finished round that cleared each pool at `prices` (m¢ per CH) with `supply_ch` CH offered in each."""
    from marketplace.models import PoolClearing, Round

    round_ = Round.objects.create(slot=timezone.now().replace(second=0, microsecond=0), finished_at=timezone.now())
    for pool, price in prices.items():
        PoolClearing.objects.create(
            round=round_, pool=pool, clearing_price_mcents=price, reserve_mcents=1000, supply_ch=supply_ch
        )


def test_every_precision_that_can_run_has_a_row_with_the_datasets_cost_and_a_price_per_million(
    client, digits_with_variants
):
    response = client.get(f"/customer/models/{digits_with_variants.pk}/bid/")
    page = response.content.decode()

    runnable = [row for row in response.context["estimate"].pools if row.runnable]
    assert [row.precision for row in runnable] == ["int8", "fp16", "fp32"]  # an HW4 car runs no FP8
    for row in runnable:
        assert f'<th scope="row">{row.precision.upper()}' in page
        assert f"<strong>{usd(row.cost_nc)}</strong>" in page
        assert usd(row.cost_nc).startswith("$")
        assert price_per_million(row.price_mcents, row.ch_per_item) in page
    assert "Estimated cost of digits.npy (200 items) in INT8: <strong>" in page
    assert "Auto would pick <strong>INT8</strong> now" in page


def test_a_pool_no_car_offers_now_says_so(client, digits_with_variants):
    # The fixture's car is registered but sends no heartbeat: it runs every precision, and offers none now.
    page = page_of(client, digits_with_variants)

    assert "No car offers INT8 now" in page
    assert "No car offers FP16 now" in page


def test_a_precision_no_car_can_run_says_why(client, digits_with_variants):
    from fleet.models import Vehicle

    Vehicle.objects.update(status="paused")

    page = page_of(client, digits_with_variants)

    assert "FP16 cannot run: no car runs FP16." in page
    assert "Nothing can run this model now" in page


def test_the_fp16_estimate_costs_more_than_int8s_when_its_pool_is_dearer(client, digits_with_variants):
    # No round has run: each pool is priced at its reserve, INT8's $0.01 per CH and FP16's $0.015.
    heavier(digits_with_variants, 0.01)  # 200 items: 2 CH

    int8 = estimate_of(client, digits_with_variants, precision="int8").content.decode()
    fp16 = estimate_of(client, digits_with_variants, precision="fp16").content.decode()

    assert "Estimated cost of digits.npy (200 items) in INT8: <strong>$0.02</strong> at $0.01/CH." in int8
    assert "Estimated cost of digits.npy (200 items) in FP16: <strong>$0.03</strong> at $0.015/CH." in fp16
    assert '<th scope="row">FP16 <small><mark>your pick</mark></small>' in fp16
    for fragment in (int8, fp16):  # both show every pool
        assert "<strong>$0.02</strong>" in fragment and "<strong>$0.03</strong>" in fragment


def test_the_estimate_follows_the_last_clearing_price(client, digits_with_variants):
    heavier(digits_with_variants, 0.01)
    last_round({"int8": 2500, "fp16": 1500, "fp8": 1500, "fp32": 2000})

    text = estimate_of(client, digits_with_variants, precision="int8").content.decode()

    assert "<td>$0.025/CH<br>" in text and "the last clearing price</small>" in text
    assert "in INT8: <strong>$0.05</strong> at $0.025/CH" in text  # 2 CH at $0.025


def test_the_suggested_budget_covers_every_item_at_the_maximum_price(client, digits_with_variants):
    model = digits_with_variants
    heavier(model, 0.1)  # 200 items: 20 CH; at up to $0.03 per CH, the job can cost $0.60
    dataset = model.datasets.get()

    fragment = estimate_of(client, model, dataset=dataset.pk, precision="int8", max_price_usd_per_ch="0.03")

    assert "Suggested budget: <strong>$0.60</strong> (covers every item at up to $0.03/CH)" in fragment.content.decode()
    deadline = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    form = {"dataset": dataset.pk, "precision": "int8", "max_price_usd_per_ch": "0.03", "deadline": deadline}
    short = client.post(f"/customer/models/{model.pk}/bid/", {**form, "budget_usd": "0.59"})
    assert short.status_code == 400
    assert "can cost $0.60" in short.content.decode()
    placed = client.post(f"/customer/models/{model.pk}/bid/", {**form, "budget_usd": "0.60"})
    assert placed.status_code == 302
    assert Bid.objects.get().budget_cents == 60


def test_the_form_starts_with_the_suggested_budget(client, digits_with_variants):
    heavier(digits_with_variants, 0.01)  # 2 CH at the form's maximum of $0.05 per CH: $0.10

    page = page_of(client, digits_with_variants)

    assert 'name="budget_usd" value="0.10"' in page
    assert "Suggested budget: <strong>$0.10</strong> (covers every item at up to $0.05/CH)" in page


def test_a_budget_is_at_least_a_cent(client, digits_with_variants):
    heavier(digits_with_variants, 1e-9)  # a job worth far less than a cent

    text = estimate_of(client, digits_with_variants, max_price_usd_per_ch="0.05").content.decode()

    assert "Suggested budget: <strong>$0.01</strong>" in text


def test_without_a_maximum_price_the_budget_covers_twice_the_estimates_price(client, digits_with_variants):
    heavier(digits_with_variants, 0.01)  # 2 CH; INT8 at its $0.01 reserve, so up to $0.02: $0.04

    text = estimate_of(client, digits_with_variants, precision="int8").content.decode()

    assert "Suggested budget: <strong>$0.04</strong> (covers every item at up to $0.02/CH)" in text


def test_the_estimate_moves_with_the_dataset_chosen(client, digits_with_variants):
    model = digits_with_variants
    heavier(model, 0.01)
    other = Dataset.objects.create(
        owner=model.owner, inference_model=model, name="small", sha256="1" * 64, size_bytes=1, format="npy",
        item_count=50, status=InferenceModel.Status.READY,
    )  # fmt: skip

    text = estimate_of(client, model, dataset=other.pk, precision="int8").content.decode()

    assert "Estimated cost of small (50 items) in INT8: <strong>$0.005</strong> at $0.01/CH" in text  # 0.5 CH


def test_the_form_asks_for_the_estimate_again_when_a_choice_changes(client, digits_with_variants):
    page = page_of(client, digits_with_variants)

    assert f'hx-get="/customer/models/{digits_with_variants.pk}/bid/estimate/"' in page
    assert 'hx-trigger="change"' in page and 'id="bid-estimate"' in page


def test_another_customers_model_or_dataset_is_a_404(client, digits_with_variants, bob):
    model = digits_with_variants
    InferenceModel.objects.filter(pk=model.pk).update(is_catalogue=True)  # every customer sees the model...
    bobs = Dataset.objects.create(
        owner=bob, inference_model=model, name="bob's", sha256="2" * 64, size_bytes=1, format="npy", item_count=9,
        status=InferenceModel.Status.READY,
    )  # fmt: skip

    assert estimate_of(client, model, dataset=bobs.pk).status_code == 404  # ... but not one another's data

    InferenceModel.objects.filter(pk=model.pk).update(is_catalogue=False)
    client.force_login(bob)
    assert estimate_of(client, model).status_code == 404
    assert estimate_of(client, model, dataset=bobs.pk).status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"dataset": "abc"}, "dataset: give the number of one of your datasets."),
        ({"dataset": "²"}, "dataset: give the number of one of your datasets."),
        ({"dataset": "9" * 40}, "dataset: give the number of one of your datasets."),
        ({"precision": "fp64"}, "precision: Select a valid choice."),
        ({"max_price_usd_per_ch": "lots"}, "max_price_usd_per_ch: Enter a number."),
        ({"max_price_usd_per_ch": "-1"}, "max_price_usd_per_ch: Ensure this value is greater than or equal to"),
        ({"max_price_usd_per_ch": "0.000001"}, "max_price_usd_per_ch: Ensure that there are no more than 5 decimal"),
        ({"max_price_usd_per_ch": "1e999999"}, "max_price_usd_per_ch: "),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client, digits_with_variants, query, message):
    response = estimate_of(client, digits_with_variants, **query)

    assert response.status_code == 400
    assert message in response.content.decode()


def test_no_amount_on_the_page_is_written_with_an_exponent(client, digits_with_variants):
    heavier(digits_with_variants, 1.4e-8)  # a small embedding's cost per item: 200 items are 2.8e-06 CH
    last_round({"int8": 1001, "fp16": 1500, "fp8": 1500, "fp32": 2000})  # the market table shows its prices

    page = page_of(client, digits_with_variants)
    fragment = estimate_of(client, digits_with_variants, precision="fp16").content.decode()

    for text in (page, fragment):
        assert not EXPONENT.search(text), EXPONENT.search(text)
        assert "e-0" not in text and "e+" not in text
    assert "0.0000028 CH" in page


# --- The same estimate as JSON: GET /api/v1/models/<id>/estimate/ (the `idlefleet estimate` command reads it) ------


def api_estimate(client, model, **query):
    return client.get(f"/api/v1/models/{model.pk}/estimate/", query)


def test_the_api_estimate_prices_every_pool_and_suggests_a_budget_as_the_form_does(client, digits_with_variants):
    model = digits_with_variants
    heavier(model, 0.1)  # 200 items: 20 CH
    last_round({"int8": 2500, "fp16": 1500, "fp8": 1500, "fp32": 2000})
    dataset = model.datasets.get()

    response = api_estimate(client, model, dataset=dataset.pk, max_price_usd_per_ch="0.03")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["dataset"], body["items"], body["precision_requested"]) == (dataset.pk, 200, "auto")
    assert body["precision"] == "int8"  # auto's pick: the cheapest precision within the tolerance
    assert body["cost_usd"] == "0.50"  # 20 CH at the last clearing price of $0.025
    assert (body["max_price_usd_per_ch"], body["suggested_budget_usd"]) == ("0.03", "0.60")  # 20 CH at up to $0.03
    assert body["below_reserve"] is False and body["nothing_runs"] == ""
    rows = {row["precision"]: row for row in body["pools"]}
    int8 = rows["int8"]
    assert (int8["runnable"], int8["ch"], int8["price_usd_per_ch"], int8["price_is_reserve"]) == (True, 20.0, "0.025",
                                                                                                  False)  # fmt: skip
    assert int8["price_per_million_usd"] == "2500.00"  # 1M items of 0.1 CH at $0.025
    # The registered car sends no heartbeat: nothing is on offer, and the row says a bid would wait.
    assert (int8["ch_on_offer"], int8["covers"]) == (0.0, False)
    assert int8["warning"] == "No car offers INT8 now: a bid here waits until one parks."
    assert rows["fp8"]["runnable"] is False and rows["fp8"]["warning"].startswith("FP8 cannot run:")


def test_the_api_estimate_of_a_precision_asked_for_prices_that_pool(client, digits_with_variants):
    heavier(digits_with_variants, 0.01)  # 2 CH at FP16's $0.015 reserve (no round yet); up to twice that: $0.06
    dataset = digits_with_variants.datasets.get()

    body = api_estimate(client, digits_with_variants, dataset=dataset.pk, precision="fp16").json()

    assert (body["precision_requested"], body["precision"], body["cost_usd"]) == ("fp16", "fp16", "0.03")
    assert (body["max_price_usd_per_ch"], body["suggested_budget_usd"]) == ("0.03", "0.06")


def test_the_api_estimate_of_another_customers_model_or_dataset_is_a_404(client, digits_with_variants, bob):
    model = digits_with_variants
    InferenceModel.objects.filter(pk=model.pk).update(is_catalogue=True)  # every customer sees the model...
    bobs = Dataset.objects.create(
        owner=bob, inference_model=model, name="bob's", sha256="2" * 64, size_bytes=1, format="npy", item_count=9,
        status=InferenceModel.Status.READY,
    )  # fmt: skip

    response = api_estimate(client, model, dataset=bobs.pk)  # ... but not one another's data

    assert response.status_code == 404
    assert response.json()["fields"] == {"dataset": ["Not a dataset of this model that you can use."]}
    InferenceModel.objects.filter(pk=model.pk).update(is_catalogue=False)
    client.force_login(bob)
    assert api_estimate(client, model, dataset=bobs.pk).json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"dataset": None}, "dataset"),  # left out
        ({"dataset": "abc"}, "dataset"),
        ({"dataset": "9" * 40}, "dataset"),
        ({"precision": "fp64"}, "precision"),
        ({"max_price_usd_per_ch": "lots"}, "max_price_usd_per_ch"),
        ({"max_price_usd_per_ch": "-1"}, "max_price_usd_per_ch"),
        ({"max_price_usd_per_ch": "0.000001"}, "max_price_usd_per_ch"),
    ],
)
def test_a_bad_api_estimate_parameter_is_a_400_naming_it(client, digits_with_variants, query, field):
    query = {"dataset": digits_with_variants.datasets.get().pk, **query}

    response = api_estimate(client, digits_with_variants, **{k: v for k, v in query.items() if v is not None})

    assert response.status_code == 400
    body = response.json()
    assert list(body["fields"]) == [field] and body["message"].startswith(f"{field}: ")
