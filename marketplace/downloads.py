"""A bid's results as its customer downloads them: the same file from the bid's page and from the API. A completed
bid has its assembled file; a bid that ended early (cancelled, expired, failed) offers the items validated before it
ended, which its customer paid for."""

from __future__ import annotations

import io
import json

import numpy as np
from django.http import Http404, HttpResponse

from core.exceptions import ApplicationError
from fleet.agent.inference import decode_npy, encode_npy

from . import storage
from .models import Bid
from .selectors import customer_results

# A bid that ended before all its items were done, and the word its customer reads for how it ended.
ENDED_EARLY = {Bid.Status.CANCELLED: "was cancelled", Bid.Status.EXPIRED: "expired", Bid.Status.FAILED: "failed"}


def bid_result_response(bid: Bid) -> HttpResponse:
    """The bid's results in item order, as an attachment: `.npy` for tensor models, JSON lines (index, text, vector)
    for text. A completed bid's file carries its version (it goes up when an audit replaces results). A bid that
    ended early gives the items validated before it ended, the others empty (NaN rows, or a null vector), and says
    how many in `X-Items-Validated`; with none validated, a 409 says so. 404 while the bid is still open
    (dispatch.bid_finish_if_done assembles the file when it completes)."""
    if bid.result_sha256:
        outputs = decode_npy(storage.artifact_read(bid.result_sha256))
        response = _attachment(bid, outputs, f"results-v{bid.result_version}")
        # Goes up when an audit replaced results (ResultAudit): a client can tell its copy is out of date.
        response["X-Result-Version"] = str(bid.result_version)
        return response
    if bid.status in ENDED_EARLY:
        outputs, validated = _outputs_validated(bid)
        if not validated:
            raise ApplicationError(
                f"Bid {bid.pk} {ENDED_EARLY[bid.status]} before any of its items were validated: there are no results "
                "to download, and nothing was charged for its items.",
                code="no_results", status=409,
            )  # fmt: skip
        response = _attachment(bid, outputs, "partial-results")
        response["X-Items-Validated"] = str(validated)
        return response
    raise Http404("The results are not ready yet.")


def _outputs_validated(bid: Bid) -> tuple[np.ndarray | None, int]:
    """The outputs of the bid's validated slices, in item order, every other item's row NaN; and how many items
    were validated (0, and no array, when none were)."""
    outputs, validated = None, 0
    for unit in customer_results(bid=bid).order_by("item_start"):
        part = decode_npy(storage.artifact_read(unit.output_sha256))
        if outputs is None:
            dtype = part.dtype if part.dtype.kind in "fc" else np.float64  # NaN marks an item with no result
            outputs = np.full((bid.items, *part.shape[1:]), np.nan, dtype=dtype)
        outputs[unit.item_start : unit.item_end] = part
        validated += unit.item_end - unit.item_start
    return outputs, validated


def _attachment(bid: Bid, outputs: np.ndarray, name: str) -> HttpResponse:
    if bid.inference_model.kind == "text":
        texts = storage.dataset_items(bid.dataset).items
        buffer = io.StringIO()
        for index, (text, vector) in enumerate(zip(texts, outputs, strict=True)):
            values = np.ravel(vector)
            # An item the job never validated (it ended early) has no vector, rather than a row of NaN.
            missing = values.size and np.isnan(values).all()
            line = {"index": index, "text": text, "vector": None if missing else [float(v) for v in values]}
            buffer.write(json.dumps(line, separators=(",", ":")) + "\n")
        content, content_type = buffer.getvalue().encode(), "application/jsonl"
        filename = f"bid-{bid.pk}-{name}.jsonl"
    else:
        content, _ = encode_npy(outputs)
        filename, content_type = f"bid-{bid.pk}-{name}.npy", "application/octet-stream"
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
