"""What a lease hands a car and what its result must be, for work units and self-tests alike: the lease's fields
(fleet/agent/executor.py reads them), the outputs' checks, and the two answers a car's work request may get when its
lease is not what it says."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

from core.exceptions import ApplicationError
from fleet.agent.inference import decode_npy, encode_npy
from fleet.models import Vehicle

from .models import PrecisionVariant, WorkUnit

# Items per inference call on the car (INT8 outputs depend a little on the batch an item ran in).
LEASE_BATCH_SIZE = 32


def no_such_unit() -> ApplicationError:
    message = "No such work unit."
    return ApplicationError(f"unit_id: {message}", fields={"unit_id": [message]}, status=404)


def lease_lost(
    message: str = "this lease is no longer yours (it expired or the unit was reissued)",
) -> ApplicationError:
    """409: the car's lease is gone (it expired, the unit went to another car, the car may no longer work): the agent
    stops the unit and reports nothing."""
    return ApplicationError(f"lease_id: {message}.", fields={"lease_id": ["Not your current lease."]},
                            code="lease_lost", status=409)  # fmt: skip


def variant_payload(variant: PrecisionVariant, *, vehicle: Vehicle, items: list, batch_size: int) -> dict[str, Any]:
    """The lease fields that say what to run and on which items (a unit's and a self-test's alike)."""
    model = variant.inference_model
    payload: dict[str, Any] = {
        "model_sha256": variant.sha256,
        "model_url": f"/api/v1/agent/artifacts/{variant.sha256}/",
        "model_size": variant.size_bytes,
        "kind": model.kind,
        "output_name": model.output_name,
        "batch_size": batch_size,
        "precision": variant.precision,
        # FP8 only runs natively where the hardware declares it (its profile and its own report); anywhere else it
        # is emulated, and labelled so.
        "emulated": variant.emulated
        or (variant.precision == "fp8" and not (vehicle.hardware.factor_fp8 and (vehicle.compute or {}).get("fp8"))),
    }
    if model.kind == "text":
        payload["items"] = items
        payload["tokenizer_sha256"] = model.tokenizer_sha256
        payload["tokenizer_url"] = f"/api/v1/agent/artifacts/{model.tokenizer_sha256}/"
    else:
        data, _ = encode_npy(np.asarray(items))
        payload["items_npy_b64"] = base64.b64encode(data).decode("ascii")
    return payload


def leased_items(unit: WorkUnit, items) -> list:
    """The items a lease hands the car: the unit's own, with the known-answer probes (verdicts.probes_pick) among
    them where the car cannot tell them apart."""
    leased = list(items[unit.item_start : unit.item_end])
    for position, index in unit.probes:  # ascending positions: each lands where it was meant to
        leased.insert(position, items[index])
    return leased


def outputs_checked(data: dict[str, Any], *, expected: int) -> tuple[np.ndarray, bytes]:
    """A result's outputs and their .npy bytes: base64 of a .npy array matching its sha256, `expected` finite outputs.
    Anything else is a 400 naming the field, and nothing is stored."""
    try:
        raw = base64.b64decode(data["output_npy_b64"], validate=True)
        outputs = decode_npy(raw)
    except (ValueError, OSError) as error:
        raise ApplicationError(f"output_npy_b64: not a base64 .npy array ({error}).",
                               fields={"output_npy_b64": ["Not a base64-encoded .npy array."]}) from None  # fmt: skip
    if hashlib.sha256(raw).hexdigest() != data["output_sha256"]:
        raise ApplicationError("output_sha256: does not match the outputs sent.",
                               fields={"output_sha256": ["Does not match the outputs."]})  # fmt: skip
    if outputs.ndim < 1 or outputs.shape[0] != expected or not np.isfinite(outputs).all():
        raise ApplicationError(
            f"output_npy_b64: expected {expected} finite outputs, got shape {list(outputs.shape)}.",
            fields={"output_npy_b64": [f"Expected {expected} finite outputs."]},
        )
    return outputs, raw
