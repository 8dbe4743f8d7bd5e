from django import forms

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
