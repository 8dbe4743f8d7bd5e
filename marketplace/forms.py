import zoneinfo
from datetime import datetime
from decimal import Decimal

from django import forms
from django.conf import settings
from django.utils import timezone

from core.money import MAX_AUTHORIZATION_CENTS, dollars_to_cents, dollars_to_mcents, usd_cents
from fleet.models import Precision

from . import selectors
from .models import Bid, InferenceModel


class InferenceModelUploadForm(forms.Form):
    name = forms.CharField(max_length=120)
    onnx_file = forms.FileField(label="ONNX model", help_text="A self-contained .onnx file (no external data).")
    tokenizer_file = forms.FileField(
        label="tokenizer.json (text models)", required=False, help_text="For models that take input_ids."
    )
    output_name = forms.CharField(
        max_length=200, required=False, help_text="Which output to return; empty for the model's first output."
    )
    metric = forms.ChoiceField(choices=InferenceModel.Metric.choices, initial=InferenceModel.Metric.COSINE)
    tolerance = forms.FloatField(
        initial=0.99, help_text="Cosine or top-1: the least a cheaper variant must reach (e.g. 0.99)."
    )


class DatasetUploadForm(forms.Form):
    name = forms.CharField(max_length=120, required=False)
    file = forms.FileField(help_text="Texts: .jsonl, one string per line. Arrays: .npy or .npz shaped [items, ...].")


class ToleranceForm(forms.Form):
    metric = forms.ChoiceField(choices=InferenceModel.Metric.choices)
    tolerance = forms.FloatField()


class BidPriceForm(forms.Form):
    """A new maximum price for a running or waiting bid (services.bid_price_raise checks it rises within the budget)."""

    max_price_usd_per_ch = forms.DecimalField(
        label="New maximum price ($ per CH)", min_value=Decimal("0.00001"), max_digits=12, decimal_places=5
    )


class BidForm(forms.Form):
    PRECISIONS = [("auto", "Auto: the cheapest variant within my tolerance"), *Precision.choices]

    dataset = forms.ModelChoiceField(queryset=None, empty_label=None)
    precision = forms.ChoiceField(choices=PRECISIONS, initial="auto")
    # The choices are the markets of the moment (selectors.regions_known), set per form; services.bid_place checks
    # the region again.
    region = forms.ChoiceField(
        label="Region", required=False, initial="", choices=[("", "Any region (cheapest)")],
        help_text="For data residency: pinned to a region, the job runs only on cars in that region's market, and its "
        "items go only to them. Any region: wherever compute is cheapest.",
    )  # fmt: skip
    # Money in dollars, as everywhere on the site and in the API (the same field names). Digits bounded, so that no
    # amount overflows the database (a 500): the budget up to Stripe's largest payment; the price far above any
    # ceiling staff set (the bid's service names the ceiling).
    max_price_usd_per_ch = forms.DecimalField(
        label="Maximum price ($ per CH)", min_value=0, max_digits=12, decimal_places=5, initial=Decimal("0.05"),
        help_text="You never pay more; every winner pays the round's one clearing price.",
    )  # fmt: skip
    budget_usd = forms.DecimalField(
        label="Budget ($)", min_value=0, max_value=Decimal(MAX_AUTHORIZATION_CENTS) / 100, decimal_places=2,
        initial=Decimal("1.00"),
        help_text="The most the job may cost: set aside while it runs, and you pay only for validated work.",
        error_messages={"max_value": f"At most {usd_cents(MAX_AUTHORIZATION_CENTS)}: the largest payment."},
    )  # fmt: skip
    funding = forms.ChoiceField(
        label="Pay from", required=False, initial="",
        choices=[("", "My prepaid balance if it covers the budget, else my card"), *Bid.Funding.choices],
        help_text="A budget on your balance is reserved from it; on your card it is held for at most "
        f"{settings.CARD_HOLD_MAX_DAYS} days.",
    )  # fmt: skip
    # Typed in the customer's own time, which static/js/local_time.js names (the zone and the help text's span);
    # without JavaScript the zone stays empty and the time is UTC, as the help text then says.
    deadline = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="In your local time (<span data-time-zone-name>UTC</span>). Unfinished work then expires.",
    )
    time_zone = forms.CharField(
        required=False, max_length=64, widget=forms.HiddenInput(attrs={"data-browser-time-zone": ""})
    )
    all_or_none = forms.BooleanField(required=False, label="All or none")

    def __init__(self, *args, datasets, regions: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = datasets
        regions = selectors.regions_known() if regions is None else regions
        self.fields["region"].choices = [("", "Any region (cheapest)"), *((code, code) for code in regions)]
        if not self.is_bound and isinstance(self.initial.get("deadline"), datetime):
            # The suggested deadline is an instant: the browser shows it in its own time.
            self.fields["deadline"].widget.attrs["data-utc"] = self.initial["deadline"].isoformat()

    def clean(self):
        cleaned = super().clean()
        zone = cleaned.get("time_zone") or "UTC"
        if zone not in zoneinfo.available_timezones():
            self.add_error("deadline", f"Your browser's time zone “{zone}” is unknown here: enter the deadline in UTC.")
        elif cleaned.get("deadline") is not None:
            # The form read the wall-clock time as the server's zone; it is the customer's.
            typed = timezone.make_naive(cleaned["deadline"])
            cleaned["deadline"] = typed.replace(tzinfo=zoneinfo.ZoneInfo(zone))
        return cleaned

    def bid_values(self) -> dict:
        data = self.cleaned_data
        return {
            "dataset": data["dataset"],
            "precision": data["precision"],
            "max_price_mcents_per_ch": dollars_to_mcents(data["max_price_usd_per_ch"]),
            "budget_cents": dollars_to_cents(data["budget_usd"]),
            "funding": data.get("funding") or None,
            "deadline": data["deadline"],
            "all_or_none": data["all_or_none"],
            "region": data.get("region") or "",
        }
