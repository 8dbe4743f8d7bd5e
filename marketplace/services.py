"""Writes of the marketplace: inference models, datasets and their precision variants."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from accounts.models import Role, User
from core.exceptions import ApplicationError
from core.money import MAX_AUTHORIZATION_CENTS, price_per_ch, usd_cents
from core.uploads import file_too_large
from fleet import book
from fleet.agent.inference import ModelRunner, ModelSpec
from fleet.agent.precisions import FP8, FP16, FP32, INT8

from . import storage
from .accuracies import accuracy_record, closeness
from .datasets import (
    DatasetRejected,
    DatasetTooLarge,
    calibration_indices,
    check_dataset,
    holdout_indices,
)
from .models import Bid, Dataset, InferenceModel, PrecisionVariant
from .selectors import bid_worst_case_cents, pricing_current
from .signals import bid_closed_announce, bid_placed_announce, bid_placing, model_check_wanted, variant_build_wanted

# Every precision, in the order their variants are created (so numbered) and their builds queued: FP32 first, as it
# needs no conversion and so gives the model a runnable variant soonest.
PRECISIONS_BUILT = (FP32, FP16, INT8, FP8)
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


def _read_capped(upload: UploadedFile, *, max_bytes: int, field: str) -> bytes:
    """Refuse an oversized upload from its size, before reading it into memory. (A request's body was capped before
    it was read, and each file while it streamed in: core/uploads.py. This holds for callers outside a request.)"""
    if upload.size is not None and upload.size > max_bytes:
        raise file_too_large(field, max_bytes=max_bytes, size=upload.size)
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise file_too_large(field, max_bytes=max_bytes)
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
    model_check_wanted.send(sender="marketplace", model_id=model.pk)  # checked in a worker once this commits
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
        info = validate_onnx(
            data,
            max_bytes=settings.MAX_MODEL_UPLOAD_BYTES,
            max_peak_bytes=settings.MAX_MODEL_PEAK_BYTES,
            trial_memory_bytes=settings.MODEL_TRIAL_MEMORY_BYTES,
            trial_seconds=settings.MODEL_TRIAL_SECONDS,
        )
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
        # Checked without keeping the items: the request holds the file and one chunk of it, never the inflated array.
        item_count = check_dataset(
            data, fmt=fmt, kind=inference_model.kind, inputs=inference_model.inputs, limits=storage.dataset_limits()
        )
    except DatasetTooLarge as error:
        message = f"Too large for {inference_model.name}: {error}."
        raise ApplicationError(f"file: {message}", fields={"file": [message]}, code="too_large", status=413) from None
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
        item_count=item_count,
        holdout_count=len(holdout_indices(item_count)),
        status=InferenceModel.Status.READY,
    )
    variants_queue(inference_model=inference_model, dataset=dataset)
    return dataset


def variants_queue(*, inference_model: InferenceModel, dataset: Dataset) -> list[PrecisionVariant]:
    """Queue a new build of every precision of a model, calibrated and judged on this dataset's items.

    The builds in force keep serving until the new ones are ready (variant_build retires them then), and a build
    already used by a bid or a unit is never changed: a rebuild is a new row (PrecisionVariant). Whose builds these
    are follows from the dataset (selectors.variant_scope): the model's shared ones for its owner's data, else the
    dataset's own."""
    variants = variants_pending(inference_model=inference_model, dataset=dataset)
    for variant in variants:
        variant_build_wanted.send(sender="marketplace", variant_id=variant.pk)  # built in a worker once committed
    return variants


def variants_pending(*, inference_model: InferenceModel, dataset: Dataset | None) -> list[PrecisionVariant]:
    """New pending builds of every precision in the scope of `dataset`; a build of the scope still on its way is
    superseded (retired: its worker drops its result), as the newest data is what the builds must be judged on."""
    from django.utils import timezone

    from .selectors import variant_scope

    scope = variant_scope(model=inference_model, dataset=dataset)
    with transaction.atomic():
        PrecisionVariant.objects.filter(
            inference_model=inference_model, dataset=scope, retired_at__isnull=True,
            status__in=[PrecisionVariant.Status.QUEUED, PrecisionVariant.Status.BUILDING],
        ).update(retired_at=timezone.now(), error="Superseded by a build on newer data.")  # fmt: skip
        fields = {"inference_model": inference_model, "dataset": scope, "evaluated_on": dataset}
        return [
            PrecisionVariant.objects.create(precision=precision, status=PrecisionVariant.Status.QUEUED, **fields)
            for precision in PRECISIONS_BUILT
        ]


def _progress(variant: PrecisionVariant, percent: int, status: str = PrecisionVariant.Status.BUILDING) -> None:
    PrecisionVariant.objects.filter(pk=variant.pk, status__in=_PENDING).update(progress=percent, status=status)


_PENDING = (PrecisionVariant.Status.QUEUED, PrecisionVariant.Status.BUILDING)


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
    CPU's; each car class's is measured by the cars' self-tests (selftests.self_test_result).

    Only a pending build is built, and it is decided once (variant_decide): a second run of the task, or a build
    superseded meanwhile, changes nothing."""
    from .inference.accuracy import compare, passes
    from .inference.costing import ch_per_item, macs_per_item
    from .inference.quantization import build_variant, int8_recipes, variant_method

    if variant.status not in _PENDING or variant.retired_at is not None:
        return variant
    model = variant.inference_model
    dataset = variant.evaluated_on
    _progress(variant, 5)
    try:
        fp32 = storage.artifact_read(model.onnx_sha256)
        tokenizer = storage.artifact_read(model.tokenizer_sha256).decode() if model.tokenizer_sha256 else None
        spec = ModelSpec(kind=model.kind, output_name=model.output_name, tokenizer_json=tokenizer)
        items = storage.dataset_items(dataset).items if dataset else None
        held_out = holdout_indices(len(items)) if items is not None else []
        holdout = _select(items, held_out) if items is not None else None
        reference_runner = ModelRunner(fp32, spec)
        calibration = None
        if items is not None and model.kind == InferenceModel.Kind.TENSOR:
            # Calibrate on items the accuracy gate does not score, so the gate is not flattered.
            unscored = calibration_indices(len(items), held_out, CALIBRATION_ITEMS)
            calibration = [reference_runner.feeds(_select(items, [i])) for i in unscored]
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
            ranked = (ok, closeness(metrics, model.metric), built, metrics, rate)
            if best is None or ranked[:2] > best[:2]:
                best = ranked
            if ok:
                break
        _, _, built, metrics, rate = best
        if model.macs_per_item is None and holdout is not None:
            model.macs_per_item = macs_per_item(fp32, example_feeds=reference_runner.feeds(_select(holdout, [0])))
            InferenceModel.objects.filter(pk=model.pk).update(macs_per_item=model.macs_per_item)
        _progress(variant, 90)
    except SoftTimeLimitExceeded:
        minutes = settings.VARIANT_BUILD_TIME_LIMIT_SECONDS / 60
        reason = f"The build did not finish within {minutes:.0f} min: the model is too large or too slow to convert."
        return variant_decide(variant_id=variant.pk, status=PrecisionVariant.Status.FAILED, error=reason)
    except Exception as error:  # any failure of a conversion is reported on the variant, never lost in a log
        return variant_decide(
            variant_id=variant.pk, status=PrecisionVariant.Status.FAILED, error=f"{error.__class__.__name__}: {error}"
        )
    built_fields = {
        "sha256": storage.artifact_save(built),
        "size_bytes": len(built),
        "method": variant_method(built)[:200],
        "emulated": variant.precision == "fp8",
        "ch_per_item": ch_per_item(model.macs_per_item) if model.macs_per_item else None,
        "metrics": _jsonable(metrics),
        "items_per_s": rate,
    }
    variant = variant_decide(variant_id=variant.pk, status=PrecisionVariant.Status.READY, **built_fields)
    if variant.status == PrecisionVariant.Status.READY and variant.sha256 == built_fields["sha256"] and variant.metrics:
        accuracy_record(variant=variant, compute_class=platform_compute_class(), metrics=variant.metrics,
                        on_platform=True)  # fmt: skip
    return variant


def variant_decide(*, variant_id: int, status: str, error: str = "", **built: Any) -> PrecisionVariant:
    """Finish a pending build as READY (with its file's `built` fields) or FAILED (with `error`), in one transaction.

    A ready build retires the one it replaces in its scope. A failed one replaces only a failed one: a ready build in
    force keeps serving (a rebuild whose worker died must not take a working variant away), and the failed rebuild is
    retired at once, its error shown beside the build in force (selectors.rebuild_failures). A build no longer
    pending (decided by an earlier run of its task, or superseded) is left as it is and returned."""
    from django.utils import timezone

    with transaction.atomic():
        variant = PrecisionVariant.objects.select_for_update().select_related("inference_model").get(pk=variant_id)
        if variant.status not in _PENDING or variant.retired_at is not None:
            return variant
        in_force = PrecisionVariant.objects.filter(
            inference_model_id=variant.inference_model_id, precision=variant.precision, dataset_id=variant.dataset_id,
            retired_at__isnull=True,
        ).exclude(pk=variant.pk).exclude(status__in=_PENDING)  # fmt: skip
        if status == PrecisionVariant.Status.FAILED and in_force.filter(status=PrecisionVariant.Status.READY).exists():
            variant.retired_at = timezone.now()
        else:
            in_force.update(retired_at=timezone.now())
        for field, value in built.items():
            setattr(variant, field, value)
        variant.status, variant.error, variant.progress = status, error[:2000], 100
        variant.save()
    return variant


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
    funding: str | None = None,
    region: str = "",
) -> Bid:
    """Enter a bid for the next rounds. The amount of work follows from the dataset and the variant's CH per item.
    `funding` is where the budget comes from (Bid.Funding); None lets billing choose: the prepaid balance when it
    covers the budget, else the card on file (a bid the balance cannot cover yet is paused until a top-up does).
    `region` pins the bid to one market region's cars, for data residency (a code of a market: a round was held in
    it or an active car sells in it; "de" reads DE); blank lets it run in any region.

    Not one transaction: the bid and its card authorization (with its idempotency key, stored by billing on
    `bid_placing`) commit before Stripe is called (on `bid_placed`), so a crash during the call leaves a row the
    billing sweeper completes, and a declined bid stays on record.
    """
    from django.utils import timezone

    from .selectors import (
        auto_pick_for_bid,
        outlook_message,
        pools_outlook,
        region_check,
        variant_passes,
        variants_in_force,
    )

    if customer.role != Role.CUSTOMER:
        raise ApplicationError("Only customers place bids.", code="permission_denied", status=403)
    if dataset.inference_model_id != inference_model.pk:
        raise _field_error("dataset", f"This dataset belongs to another model than {inference_model.name}.")
    if inference_model.status != InferenceModel.Status.READY:
        raise _field_error("inference_model", "The model is not ready yet.")
    region = region_check(region)
    outlook = pools_outlook(model=inference_model, dataset=dataset)  # the builds of this dataset's scope
    if precision == "auto":
        # Of the precisions the fleet can run, the cheapest within the maximum price (a reserve above it is refused
        # below, naming the price), preferring one whose cars on offer now can do the job.
        chosen = auto_pick_for_bid(outlook, items=dataset.item_count, max_price_mcents=max_price_mcents_per_ch)
        if chosen is None:
            if not any(pool.variant and pool.variant.status == PrecisionVariant.Status.READY for pool in outlook):
                raise _field_error("precision", "No variant is ready yet: wait for the builds.")
            raise _field_error(
                "precision", f"Nothing can run this model within your tolerance: {outlook_message(outlook)}."
            )
        variant = chosen.variant
    else:
        variant = variants_in_force(model=inference_model, dataset=dataset).get(precision)
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
        raise _field_error(
            "max_price_usd_per_ch", f"Between {price_per_ch(1)} and {price_per_ch(ceiling)} (the price ceiling)."
        )
    if max_price_mcents_per_ch < reserve:
        raise _field_error(
            "max_price_usd_per_ch",
            f"Below the {variant.precision.upper()} reserve price of {price_per_ch(reserve)}: such a bid never trades.",
        )
    now = timezone.now()
    if deadline <= now + timedelta(seconds=settings.MIN_BID_LEAD_SECONDS):
        minutes = settings.MIN_BID_LEAD_SECONDS // 60
        raise _field_error("deadline", f"Give the cars at least {minutes} minutes: set a later deadline.")
    latest = now + timedelta(days=settings.BID_MAX_DEADLINE_DAYS)
    if deadline > latest:
        raise _field_error(
            "deadline",
            f"At most {settings.BID_MAX_DEADLINE_DAYS} days ahead: {latest:%Y-%m-%d %H:%M} UTC at the latest.",
        )
    if budget_cents > MAX_AUTHORIZATION_CENTS:
        raise _field_error("budget_usd", f"At most {usd_cents(MAX_AUTHORIZATION_CENTS)}: the largest payment.")
    ch_total = dataset.item_count * variant.ch_per_item
    if budget_cents <= 0:
        raise _field_error("budget_usd", "At least $0.01.")
    # The budget is set aside (reserved from the balance, or held on the card), and the job never costs more than
    # it: all of its CH at the maximum price, rounded up to the cent.
    worst_case_cents = bid_worst_case_cents(ch=ch_total, max_price_mcents=max_price_mcents_per_ch)
    if budget_cents < worst_case_cents:
        raise _field_error(
            "budget_usd",
            f"All {dataset.item_count:,} items at your maximum price can cost {usd_cents(worst_case_cents)}: raise the "
            "budget to that, or lower the maximum price.",
        )
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
            funding=funding or "",
            region=region,
            items=dataset.item_count,
            ch_total=ch_total,
            status=Bid.Status.AUTHORIZING,
        )
        # Billing stores the card authorization with its idempotency key here, or refuses the bid (signals.py).
        bid_placing.send(sender="marketplace", bid=bid)
    # Committed with its idempotency key: if this request dies during the call, the billing sweeper finishes it.
    reason = bid_placed_announce(bid.pk)
    bid.refresh_from_db()
    if bid.status == Bid.Status.DECLINED:
        raise ApplicationError(
            f"payment_method: your card was not authorized for {usd_cents(budget_cents, bid.currency)}: {reason}",
            fields={"payment_method": [reason]},
            code="card_declined",
            status=402,
        )
    # The cars that could win it heartbeat often from their next heartbeat on, so they start soon after a sale.
    book.demand_raise(
        [bid.region] if bid.region else book.regions(), pool=bid.pool, price=bid.max_price_mcents_per_ch,
        fee=float(pricing_current().platform_fee_pct) / 100,
    )  # fmt: skip
    return bid


CANCELLABLE = (Bid.Status.WAITING, Bid.Status.PAUSED, Bid.Status.RUNNING)
CANCELLED_WORK_REASON = "the customer cancelled the job"


def bid_cancel(*, bid: Bid) -> Bid:
    """Cancel a bid that is waiting for capacity or funds, or running. Nothing more is bought for it; units not done
    yet are withdrawn, a car running one stops (dispatch.bid_work_withdraw), and the cars' sold time goes back to
    the market. The customer pays for the work validated so far, and the rest of the budget is released (billing
    settles the bid once it closes)."""
    from django.utils import timezone

    from .dispatch import bid_work_withdraw

    with transaction.atomic():
        bid = Bid.objects.select_for_update().get(pk=bid.pk)
        if bid.status not in CANCELLABLE:
            raise ApplicationError(
                f"This bid is {bid.get_status_display().lower()}: only a bid that is waiting or running can be "
                "cancelled.",
                code="not_cancellable",
                status=409,
            )
        now = timezone.now()
        if bid.status == Bid.Status.RUNNING:
            bid_work_withdraw(bid=bid, reason=CANCELLED_WORK_REASON, now=now)
        bid.status, bid.closed_at = Bid.Status.CANCELLED, now
        bid.save(update_fields=["status", "closed_at"])
        bid_closed_announce(bid.pk)
    return bid


PRICE_RAISABLE = (Bid.Status.WAITING, Bid.Status.PAUSED, Bid.Status.RUNNING)


def bid_price_raise(*, bid: Bid, max_price_mcents_per_ch: int) -> Bid:
    """Raise an open bid's maximum price, so that it wins capacity it was outbid for. Work bought so far keeps the
    price it cleared at; the next rounds use the new maximum. The budget set aside stays as it is, and must still
    cover every item at the new price (the rule a new bid follows); lowering the price is not offered, since the
    cars already sold to the bid were sold at the old one."""
    with transaction.atomic():
        bid = Bid.objects.select_for_update().get(pk=bid.pk)
        if bid.status not in PRICE_RAISABLE:
            raise ApplicationError(
                f"This bid is {bid.get_status_display().lower()}: only a waiting or running bid's price can be raised.",
                code="not_open",
                status=409,
            )
        current = bid.max_price_mcents_per_ch
        if max_price_mcents_per_ch <= current:
            raise _field_error(
                "max_price_usd_per_ch", f"Above the current maximum of {price_per_ch(current)}: a price can only rise."
            )
        ceiling = pricing_current().price_ceiling_mcents
        if max_price_mcents_per_ch > ceiling:
            raise _field_error("max_price_usd_per_ch", f"At most {price_per_ch(ceiling)} (the price ceiling).")
        worst_case_cents = bid_worst_case_cents(ch=bid.ch_total, max_price_mcents=max_price_mcents_per_ch)
        if worst_case_cents > bid.budget_cents:
            raise _field_error(
                "max_price_usd_per_ch",
                f"All {bid.items:,} items at {price_per_ch(max_price_mcents_per_ch)} can cost "
                f"{usd_cents(worst_case_cents)}, more than the budget of {usd_cents(bid.budget_cents)} set aside: "
                "cancel this bid and place a new one with a larger budget, or raise the price less.",
            )
        bid.max_price_mcents_per_ch = max_price_mcents_per_ch
        bid.save(update_fields=["max_price_mcents_per_ch"])
    return bid
