"""A completed bid's results as its customer downloads them: the same file from the bid's page and from the API."""

from __future__ import annotations

import io
import json

import numpy as np
from django.http import Http404, HttpResponse

from fleet.agent.inference import decode_npy, encode_npy

from . import storage
from .models import Bid


def bid_result_response(bid: Bid) -> HttpResponse:
    """The bid's results in item order, as an attachment: `.npy` for tensor models, JSON lines (index, text, vector)
        for text. 404 while the bid has none (dispatch.bid_finish_if_done assembles them). The file name carries the
    version (it goes up when an audit replaces results)."""
    if not bid.result_sha256:
        raise Http404("The results are not ready yet.")
    outputs = decode_npy(storage.artifact_read(bid.result_sha256))
    if bid.inference_model.kind == "text":
        texts = storage.dataset_items(bid.dataset).items
        buffer = io.StringIO()
        for index, (text, vector) in enumerate(zip(texts, outputs, strict=True)):
            line = {"index": index, "text": text, "vector": [float(v) for v in np.ravel(vector)]}
            buffer.write(json.dumps(line, separators=(",", ":")) + "\n")
        content, content_type = buffer.getvalue().encode(), "application/jsonl"
        filename = f"bid-{bid.pk}-results-v{bid.result_version}.jsonl"
    else:
        content, _ = encode_npy(outputs)
        filename, content_type = f"bid-{bid.pk}-results-v{bid.result_version}.npy", "application/octet-stream"
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    # Goes up when an audit replaced results (ResultAudit): a client can tell its copy is out of date.
    response["X-Result-Version"] = str(bid.result_version)
    return response
