from decimal import Decimal

from django import forms

from core.money import MAX_AUTHORIZATION_CENTS
from fleet.models import Precision

from .models import InferenceModel


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


class BidForm(forms.Form):
    PRECISIONS = [("auto", "Auto: the cheapest variant within my tolerance"), *Precision.choices]

    dataset = forms.ModelChoiceField(queryset=None, empty_label=None)
    precision = forms.ChoiceField(choices=PRECISIONS, initial="auto")
    # Digits bounded, so that no amount overflows the database (a 500): the budget up to Stripe's largest card
    # payment; the price far above any ceiling staff set (the bid's service names the ceiling).
    max_price_cents_per_ch = forms.DecimalField(
        label="Maximum price (¢ per CH)", min_value=0, max_digits=12, decimal_places=3, initial=5,
        help_text="You never pay more; every winner pays the round's one clearing price.",
    )  # fmt: skip
    budget_dollars = forms.DecimalField(
        label="Budget ($)", min_value=0, max_value=Decimal(MAX_AUTHORIZATION_CENTS) / 100, decimal_places=2, initial=5,
        error_messages={"max_value": f"At most ${MAX_AUTHORIZATION_CENTS / 100:,.2f}: the largest card payment."},
    )  # fmt: skip
    deadline = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="In UTC. Unfinished work then expires."
    )
    all_or_none = forms.BooleanField(required=False, label="All or none")

    def __init__(self, *args, datasets, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = datasets

    def bid_values(self) -> dict:
        data = self.cleaned_data
        return {
            "dataset": data["dataset"],
            "precision": data["precision"],
            "max_price_mcents_per_ch": int(data["max_price_cents_per_ch"] * 1000),
            "budget_cents": int(data["budget_dollars"] * 100),
            "deadline": data["deadline"],
            "all_or_none": data["all_or_none"],
        }
