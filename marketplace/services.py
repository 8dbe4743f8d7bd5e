"""Writes of the marketplace: inference models, datasets and their precision variants."""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from accounts.models import Role, User
from billing.selectors import pricing_current
from config.exceptions import ApplicationError
from fleet.agent.inference import ModelRunner, ModelSpec

from . import storage
from .datasets import DatasetRejected, ParsedDataset, holdout_indices, parse_dataset
from .models import Bid, Dataset, InferenceModel, PrecisionVariant, VariantAccuracy

PRECISIONS_BUILT = ("fp32", "fp16", "int8", "fp8")
CALIBRATION_ITEMS = 32


@contextmanager
def _quiet_quantization_logs():
    """ONNX Runtime's quantization tools log a line per tensor on the root logger: keep the worker's log readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def human_bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _read_capped(upload: UploadedFile, *, max_bytes: int, field: str) -> bytes:
    """Refuse an oversized upload from its declared size, before reading it into memory."""
    if upload.size is not None and upload.size > max_bytes:
        message = f"The file is {human_bytes(upload.size)}; the limit is {human_bytes(max_bytes)}."
        raise ApplicationError(f"{field}: {message}", fields={field: [message]}, status=413, code="too_large")
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        message = f"The file is larger than the {human_bytes(max_bytes)} limit."
        raise ApplicationError(f"{field}: {message}", fields={field: [message]}, status=413, code="too_large")
    if not data:
        raise ApplicationError(f"{field}: the file is empty.", fields={field: ["The file is empty."]})
    return data


@transaction.atomic
def inference_model_upload(
    *,
    owner: User,
    name: str,
    onnx_file: UploadedFile,
    tokenizer_file: UploadedFile | None = None,
    output_name: str = "",
    metric: str = InferenceModel.Metric.COSINE,
    tolerance: float = 0.99,
    description: str = "",
) -> InferenceModel:
    """Store an uploaded ONNX model and queue its validation (the full ONNX check runs in a worker, not here)."""
    if owner.role != Role.CUSTOMER:
        raise ApplicationError("Only customers upload inference models.", code="permission_denied", status=403)
    data = _read_capped(onnx_file, max_bytes=settings.MAX_MODEL_UPLOAD_BYTES, field="onnx_file")
    tokenizer_sha = ""
    if tokenizer_file is not None:
        tokenizer = _read_capped(tokenizer_file, max_bytes=settings.MAX_TOKENIZER_UPLOAD_BYTES, field="tokenizer_file")
        tokenizer_sha = storage.artifact_save(tokenizer)
    model = InferenceModel.objects.create(
        owner=owner,
        name=name.strip() or onnx_file.name,
        description=description,
        kind=InferenceModel.Kind.TEXT if tokenizer_sha else InferenceModel.Kind.TENSOR,
        onnx_sha256=storage.artifact_save(data),
        onnx_size=len(data),
        tokenizer_sha256=tokenizer_sha,
        output_name=output_name.strip(),
        metric=metric,
        tolerance=tolerance,
    )
    from .tasks import inference_model_validate

    inference_model_validate.delay_on_commit(model.pk)
    return model


def inference_model_validate(*, model: InferenceModel) -> InferenceModel:
    """The full check: protobuf, external data, onnx.checker, ONNX Runtime can load it; then introspect.

    A rejected model keeps its row (so its owner reads why) but its file is deleted: nothing of it is kept to run.
    """
    from .inference.validation import ModelRejected, validate_onnx

    if model.status != InferenceModel.Status.VALIDATING:
        return model  # already decided: running twice changes nothing
    data = storage.artifact_read(model.onnx_sha256)
    try:
        info = validate_onnx(data, max_bytes=settings.MAX_MODEL_UPLOAD_BYTES)
        output_names = [o["name"] for o in info.outputs]
        if model.output_name and model.output_name not in output_names:
            raise ModelRejected(
                f"output '{model.output_name}' is not one of the model's outputs: {', '.join(output_names)}"
            )
        if model.tokenizer_sha256:
            _check_tokenizer(storage.artifact_read(model.tokenizer_sha256))
            if info.kind != "text":
                raise ModelRejected("a tokenizer was given but the model does not take input_ids")
        elif info.kind == "text":
            raise ModelRejected("this model takes input_ids: upload its tokenizer.json with it")
    except ModelRejected as error:
        _reject(model, str(error))
        return model
    model.inputs, model.outputs, model.opset = info.inputs, info.outputs, info.opset
    model.output_name = model.output_name or output_names[0]
    model.status = InferenceModel.Status.READY
    model.save(update_fields=["inputs", "outputs", "opset", "output_name", "status"])
    return model


def _check_tokenizer(data: bytes) -> None:
    from tokenizers import Tokenizer

    from .inference.validation import ModelRejected

    try:
        Tokenizer.from_str(data.decode("utf-8"))
    except Exception as error:  # the tokenizers library raises plain Exceptions for bad files
        raise ModelRejected(f"the tokenizer file is not a valid tokenizer.json ({error})") from None


def _reject(model: InferenceModel, reason: str) -> None:
    model.status = InferenceModel.Status.REJECTED
    model.rejection_reason = reason
    model.save(update_fields=["status", "rejection_reason"])
    if not InferenceModel.objects.filter(onnx_sha256=model.onnx_sha256).exclude(pk=model.pk).exists():
        storage.artifact_delete(model.onnx_sha256)


@transaction.atomic
def dataset_upload(*, owner: User, inference_model: InferenceModel, name: str, file: UploadedFile) -> Dataset:
    """Check a dataset against its model's inputs and store it; then build the model's variants on it."""
    if inference_model.status != InferenceModel.Status.READY:
        raise ApplicationError(
            f"The model is {inference_model.get_status_display().lower()}; upload datasets once it is ready.",
            code="model_not_ready",
        )
    data = _read_capped(file, max_bytes=settings.MAX_DATASET_UPLOAD_BYTES, field="file")
    fmt = (file.name or "").rsplit(".", 1)[-1].lower()
    if fmt not in Dataset.Format.values:
        message = "Use .jsonl for texts, .npy or .npz for arrays."
        raise ApplicationError(f"file: {message}", fields={"file": [message]})
    try:
        parsed = parse_dataset(data, fmt=fmt, kind=inference_model.kind, inputs=inference_model.inputs)
    except DatasetRejected as error:
        message = f"Does not fit {inference_model.name}: {error}."
        raise ApplicationError(f"file: {message}", fields={"file": [message]}) from None
    dataset = Dataset.objects.create(
        owner=owner,
        inference_model=inference_model,
        name=name.strip() or file.name,
        sha256=storage.artifact_save(data),
        size_bytes=len(data),
        format=fmt,
        item_count=parsed.count,
        holdout_count=len(holdout_indices(parsed.count)),
        status=InferenceModel.Status.READY,
    )
    variants_queue(inference_model=inference_model, dataset=dataset)
    return dataset


def dataset_items(dataset: Dataset) -> ParsedDataset:
    """The dataset's items, parsed. Every lease and every variant build needs them: a stored dataset never changes
    (it is addressed by its sha256), so the last few parsed ones are kept in memory instead of re-read each time."""
    model = dataset.inference_model
    return _parsed(dataset.sha256, dataset.format, model.kind, json.dumps(model.inputs, sort_keys=True))


@lru_cache(maxsize=4)
def _parsed(sha256: str, fmt: str, kind: str, inputs_json: str) -> ParsedDataset:
    return parse_dataset(storage.artifact_read(sha256), fmt=fmt, kind=kind, inputs=json.loads(inputs_json))


def variants_queue(*, inference_model: InferenceModel, dataset: Dataset) -> list[PrecisionVariant]:
    """(Re)build every precision variant of a model, evaluated on this dataset's held-out items."""
    from .tasks import variant_build

    variants = []
    for precision in PRECISIONS_BUILT:
        variant, _ = PrecisionVariant.objects.update_or_create(
            inference_model=inference_model,
            precision=precision,
            defaults={"status": PrecisionVariant.Status.QUEUED, "progress": 0, "error": "", "evaluated_on": dataset},
        )
        variants.append(variant)
        variant_build.delay_on_commit(variant.pk)
    return variants


def _progress(variant: PrecisionVariant, percent: int, status: str = PrecisionVariant.Status.BUILDING) -> None:
    PrecisionVariant.objects.filter(pk=variant.pk).update(progress=percent, status=status)


def int8_target_classes() -> set[str]:
    """The compute classes an INT8 variant must be exact on: the cars it may be sent to (INT8_TARGET_CLASSES, every
    class by default) and the platform's own CPU, which computes the known answers cars are checked against."""
    return set(settings.INT8_TARGET_CLASSES) | {platform_compute_class()}


@lru_cache(maxsize=1)
def platform_compute_class() -> str:
    """The compute class of the machine this process runs on (fleet/agent/hardware.py)."""
    from fleet.agent import hardware

    return hardware.compute_class(hardware.detect())


def variant_build(*, variant: PrecisionVariant) -> PrecisionVariant:
    """Convert the model, fix its CH per item, and measure its accuracy against FP32 on the held-out items.

    INT8 tries the recipes of `int8_recipes` for the classes it must run on, best first, and keeps the first that
    meets the model's tolerance (else the most accurate): on MiniLM the portable 7-bit weights keep every held-out
    document within cosine 0.99 of FP32 on CPUs with and without VNNI. The accuracy measured here is the platform
    CPU's; each car class's is measured by the cars' self-tests (selftests.self_test_result)."""
    from .inference.accuracy import compare, passes
    from .inference.costing import ch_per_item, macs_per_item
    from .inference.quantization import build_variant, int8_recipes, variant_method

    model = variant.inference_model
    dataset = variant.evaluated_on
    _progress(variant, 5)
    try:
        fp32 = storage.artifact_read(model.onnx_sha256)
        tokenizer = storage.artifact_read(model.tokenizer_sha256).decode() if model.tokenizer_sha256 else None
        spec = ModelSpec(kind=model.kind, output_name=model.output_name, tokenizer_json=tokenizer)
        items = dataset_items(dataset).items if dataset else None
        held_out = holdout_indices(len(items)) if items is not None else []
        holdout = _select(items, held_out) if items is not None else None
        reference_runner = ModelRunner(fp32, spec)
        calibration = None
        if items is not None and model.kind == InferenceModel.Kind.TENSOR:
            # Calibrate on items the accuracy gate does not score, so the gate is not flattered.
            unscored = [i for i in range(len(items)) if i not in set(held_out)][:CALIBRATION_ITEMS] or held_out
            calibration = [reference_runner.feeds(_select(items, [i])) for i in unscored[:CALIBRATION_ITEMS]]
        _progress(variant, 20)
        recipes = int8_recipes(int8_target_classes()) if variant.precision == "int8" else (None,)
        reference = reference_runner.run(holdout) if holdout is not None else None
        best = None  # (passes, closeness, built, metrics, rate)
        for step, recipe in enumerate(recipes):
            with _quiet_quantization_logs():
                if variant.precision == "fp32":
                    built = fp32
                elif recipe is None:
                    built = build_variant(fp32, variant.precision, calibration=calibration)
                else:
                    built = build_variant(fp32, variant.precision, calibration=calibration, recipe=recipe)
            _progress(variant, 20 + 60 * (step + 1) // len(recipes))
            metrics, rate = {}, None
            if holdout is not None:
                runner = ModelRunner(built, spec)
                started = time.perf_counter()
                candidate = runner.run(holdout)
                rate = len(holdout) / max(time.perf_counter() - started, 1e-9)
                metrics = compare(reference, candidate, metric=model.metric)
            ok = bool(metrics) and passes(metrics, metric=model.metric, tolerance=model.tolerance)
            ranked = (ok, _closeness(metrics, model.metric), built, metrics, rate)
            if best is None or ranked[:2] > best[:2]:
                best = ranked
            if ok:
                break
        _, _, built, metrics, rate = best
        if model.macs_per_item is None and holdout is not None:
            model.macs_per_item = macs_per_item(fp32, example_feeds=reference_runner.feeds(_select(holdout, [0])))
            InferenceModel.objects.filter(pk=model.pk).update(macs_per_item=model.macs_per_item)
        _progress(variant, 90)
    except Exception as error:  # any failure of a conversion is reported on the variant, never lost in a log
        PrecisionVariant.objects.filter(pk=variant.pk).update(
            status=PrecisionVariant.Status.FAILED, error=f"{error.__class__.__name__}: {error}"[:2000], progress=100
        )
        variant.refresh_from_db()
        return variant
    sha256 = storage.artifact_save(built)
    if variant.sha256 and variant.sha256 != sha256:
        VariantAccuracy.objects.filter(variant=variant).delete()  # measured on another file
    variant.sha256 = sha256
    variant.size_bytes = len(built)
    variant.method = variant_method(built)[:200]
    variant.emulated = variant.precision == "fp8"
    variant.ch_per_item = ch_per_item(model.macs_per_item) if model.macs_per_item else None
    variant.metrics = _jsonable(metrics)
    variant.items_per_s = rate
    variant.status = PrecisionVariant.Status.READY
    variant.progress = 100
    variant.save()
    if variant.metrics:
        accuracy_record(variant=variant, compute_class=platform_compute_class(), metrics=variant.metrics,
                        on_platform=True)  # fmt: skip
    return variant


def _closeness(metrics: dict[str, float], metric: str) -> float:
    """One number to rank candidate variants by: higher is closer to FP32."""
    if metric == "cosine":
        return metrics.get("cosine_min", -1.0)
    if metric == "top1":
        return metrics.get("top1_agreement", 0.0)
    return -metrics.get("max_abs_error", math.inf)


def accuracy_record(
    *, variant: PrecisionVariant, compute_class: str, metrics: dict[str, float], on_platform: bool = False
) -> VariantAccuracy:
    """Fold one accuracy measurement of `variant` on `compute_class` (the platform's build, or a car's self-test) into
    the class's record: the worst measurement is kept, and the class passes only while every one met the tolerance.
    A (re)build starts the platform's record afresh: its file, and so its numbers, may have changed."""
    from django.utils import timezone

    from .inference.accuracy import passes

    model = variant.inference_model
    ok = passes(metrics, metric=model.metric, tolerance=model.tolerance)
    with transaction.atomic():
        records = VariantAccuracy.objects.select_for_update()
        record = records.filter(variant=variant, compute_class=compute_class).first()
        if record is None or on_platform:
            record = record or VariantAccuracy(variant=variant, compute_class=compute_class)
            record.metrics, record.passes, record.cars_tested, record.cars_failed = metrics, ok, 0, 0
            record.platform = on_platform
        else:
            if _closeness(metrics, model.metric) < _closeness(record.metrics, model.metric):
                record.metrics = metrics
            record.passes = record.passes and ok
        if not on_platform:
            record.cars_tested += 1
            record.cars_failed += 0 if ok else 1
        record.measured_at = timezone.now()
        record.save()
    return record


def _select(items, indices: list[int]):
    if isinstance(items, list):
        return [items[i] for i in indices]
    return items[indices]


def _jsonable(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


def inference_model_set_tolerance(*, model: InferenceModel, metric: str, tolerance: float) -> InferenceModel:
    if metric not in InferenceModel.Metric.values:
        raise ApplicationError(f"metric: choose one of {', '.join(InferenceModel.Metric.values)}.",
                               fields={"metric": ["Unknown metric."]})  # fmt: skip
    if metric in ("cosine", "top1") and not 0 < tolerance <= 1:
        message = "Between 0 and 1, e.g. 0.99."
        raise ApplicationError(f"tolerance: {message}", fields={"tolerance": [message]})
    if metric == "max_abs" and tolerance < 0:
        message = "An error bound of 0 or more."
        raise ApplicationError(f"tolerance: {message}", fields={"tolerance": [message]})
    model.metric, model.tolerance = metric, tolerance
    model.save(update_fields=["metric", "tolerance"])
    return model


# --- Bids ------------------------------------------------------------------------------------------------------------


_field_error = ApplicationError.for_field


def bid_place(
    *,
    customer: User,
    inference_model: InferenceModel,
    dataset: Dataset,
    precision: str,
    max_price_mcents_per_ch: int,
    budget_cents: int,
    deadline,
    all_or_none: bool = False,
) -> Bid:
    """Enter a bid for the next rounds. The amount of work follows from the dataset and the variant's CH per item.

    Not one transaction: the bid and its authorization (with its idempotency key) commit before Stripe is called, so
    a crash during the call leaves a row the billing sweeper completes, and a declined bid stays on record.
    """
    from django.utils import timezone

    from .selectors import auto_pick, outlook_message, pools_outlook, variant_passes

    if customer.role != Role.CUSTOMER:
        raise ApplicationError("Only customers place bids.", code="permission_denied", status=403)
    if dataset.inference_model_id != inference_model.pk:
        raise _field_error("dataset", f"This dataset belongs to another model than {inference_model.name}.")
    if inference_model.status != InferenceModel.Status.READY:
        raise _field_error("inference_model", "The model is not ready yet.")
    outlook = pools_outlook(model=inference_model)
    if precision == "auto":
        # Of the precisions the fleet can run, the cheapest within the maximum price (a reserve above it is refused
        # below, naming the price), preferring one whose cars on offer now can do the job.
        ch_needed = next((dataset.item_count * p.variant.ch_per_item for p in outlook if p.runnable
                          and p.variant.ch_per_item), None)  # fmt: skip
        affordable = [pool for pool in outlook if pool.reserve_mcents <= max_price_mcents_per_ch]
        chosen = auto_pick(affordable, ch_needed=ch_needed) or auto_pick(outlook, ch_needed=ch_needed)
        if chosen is None:
            if not any(v.status == PrecisionVariant.Status.READY for v in inference_model.variants.all()):
                raise _field_error("precision", "No variant is ready yet: wait for the builds.")
            raise _field_error(
                "precision", f"Nothing can run this model within your tolerance: {outlook_message(outlook)}."
            )
        variant = chosen.variant
    else:
        variant = inference_model.variants.filter(precision=precision).first()
        if variant is None or variant.status != PrecisionVariant.Status.READY:
            raise _field_error("precision", f"There is no ready {precision.upper()} variant of this model.")
        if precision != "fp32" and variant_passes(variant) is False:
            raise _field_error("precision", f"The {precision.upper()} variant misses your accuracy tolerance.")
        pool = next(pool for pool in outlook if pool.precision == precision)
        if not pool.runnable:
            raise _field_error(
                "precision", f"{precision.upper()} cannot run: {pool.problem}. Choose auto, or another precision."
            )
    if variant.ch_per_item is None:
        raise _field_error("precision", "This variant has no cost per item yet (it was built without a dataset).")
    pricing = pricing_current()
    reserve = pricing.reserves[variant.precision]
    ceiling = pricing.price_ceiling_mcents
    if not 0 < max_price_mcents_per_ch <= ceiling:
        raise _field_error("max_price_mcents_per_ch", f"Between 1 and {ceiling:,} m¢ per CH.")
    if max_price_mcents_per_ch < reserve:
        raise _field_error(
            "max_price_mcents_per_ch",
            f"Below the {variant.precision.upper()} reserve price of {reserve:,} m¢ per CH: such a bid never trades.",
        )
    now = timezone.now()
    if deadline <= now + timedelta(seconds=settings.MIN_BID_LEAD_SECONDS):
        minutes = settings.MIN_BID_LEAD_SECONDS // 60
        raise _field_error("deadline", f"Give the cars at least {minutes} minutes: set a later deadline.")
    ch_total = dataset.item_count * variant.ch_per_item
    smallest_unit = min(dataset.item_count, 100) * variant.ch_per_item
    if budget_cents <= 0 or budget_cents * 1000 < smallest_unit * reserve:
        raise _field_error("budget_cents", "The budget does not cover one work unit at the reserve price.")
    # The budget is held on the card, and the job never costs more than it: all of its CH at the maximum price.
    worst_case_cents = math.ceil(ch_total * max_price_mcents_per_ch / 1000)
    if budget_cents < worst_case_cents:
        raise _field_error(
            "budget_cents",
            f"All {dataset.item_count:,} items at your maximum price can cost {worst_case_cents / 100:.2f}: raise the "
            "budget to that, or lower the maximum price.",
        )
    from billing.services import authorization_confirm, authorization_prepare

    with transaction.atomic():
        bid = Bid.objects.create(
            customer=customer,
            inference_model=inference_model,
            dataset=dataset,
            variant=variant,
            precision_requested=precision,
            pool=variant.precision,
            max_price_mcents_per_ch=max_price_mcents_per_ch,
            budget_cents=budget_cents,
            deadline=deadline,
            all_or_none=all_or_none,
            items=dataset.item_count,
            ch_total=ch_total,
            status=Bid.Status.AUTHORIZING,
        )
        authorization = authorization_prepare(bid=bid)
    # Committed with its idempotency key: if this request dies during the call, the billing sweeper finishes it.
    authorization = authorization_confirm(authorization_id=authorization.pk)
    bid.refresh_from_db()
    if bid.status == Bid.Status.DECLINED:
        raise ApplicationError(
            f"payment_method: your card was not authorized for {budget_cents / 100:.2f} "
            f"{bid.currency.upper()}: {authorization.failure_message}",
            fields={"payment_method": [authorization.failure_message]},
            code="card_declined",
            status=402,
        )
    return bid


def bid_cancel(*, bid: Bid) -> Bid:
    """Cancel a bid that has not been filled yet; what it has not used is released."""
    from django.utils import timezone

    with transaction.atomic():
        bid = Bid.objects.select_for_update().get(pk=bid.pk)
        if bid.status != Bid.Status.WAITING:
            raise ApplicationError(
                f"This bid is {bid.get_status_display().lower()}: only a bid waiting for capacity can be cancelled.",
                code="not_cancellable",
                status=409,
            )
        bid.status, bid.closed_at = Bid.Status.CANCELLED, timezone.now()
        bid.save(update_fields=["status", "closed_at"])
        settle_when_committed(bid.pk)
    return bid


def settle_when_committed(bid_id: int) -> None:
    """A closed bid is charged for its validated work and the rest of its hold released (billing/services.py)."""
    from billing.tasks import bid_settle

    transaction.on_commit(lambda: bid_settle.delay(bid_id))
