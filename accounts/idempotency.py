"""`Idempotency-Key`: a request sent again with the same key is answered with the first response, and does nothing.

A client that lost the answer to a POST (a timeout, a dropped connection) cannot know whether it was done; it sends
it again with the same header. Within IDEMPOTENCY_KEY_HOURS the same user sending the same method, path and body
gets the first response (status and body, with `Idempotent-Replayed: true`), and no second bid, hold or upload.

- The key is claimed by a unique row (user, key) before the request runs, so two copies sent at the same moment do
  not both run: the second gets a 409 and asks again later.
- The same key with a different request (another body or path) is a 422: a client bug, never passed off as a replay.
- Only a response that stored something is kept (2xx, and the 402 of a declined card: the bid stays on record). A
  refusal changed nothing, so its key is freed for the corrected request; a server error frees it too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import timedelta

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.http import QueryDict
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter
from rest_framework.response import Response

from core.exceptions import ApplicationError

from .models import IdempotentRequest

HEADER = "Idempotency-Key"
# Printable ASCII without spaces, like a UUID or one of Stripe's keys.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# A claim whose request never finished (its process died) is taken over after this long: no request runs longer.
ABANDONED_AFTER = timedelta(minutes=10)

IDEMPOTENCY_KEY = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description=(
        "Any unique string (1–255 printable ASCII characters, e.g. a UUID). Sent again with the same request within "
        "24 hours, it gets the first response and nothing is done twice; with a different request, a 422; while the "
        "first copy still runs, a 409."
    ),
)


def idempotent(handler):
    """Decorate an APIView's POST handler: with an Idempotency-Key header the request is claimed, run once, and its
    response kept for repeats (the module's docstring says which)."""

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return handler(view, request, *args, **kwargs)
        if not _KEY.fullmatch(key):
            raise ApplicationError.for_field(HEADER, "1 to 255 printable ASCII characters without spaces, e.g. a UUID.")
        claim, replay = request_claim(
            user=request.user, key=key, method=request.method, path=request.get_full_path(),
            fingerprint=request_fingerprint(request),
        )  # fmt: skip
        if replay is not None:
            return replay
        try:
            try:
                response = handler(view, request, *args, **kwargs)
            except Exception as error:
                response = view.handle_exception(error)  # the response DRF would give (an unexpected error re-raises)
        except BaseException:
            IdempotentRequest.objects.filter(pk=claim.pk).delete()
            raise
        request_finish(claim=claim, response=response)
        return response

    return wrapper


def request_fingerprint(request) -> str:
    """sha256 of the request's method, path with query and parsed body; an uploaded file counts by its name, size and
    sha256 (read once more, then rewound for the view)."""
    data = request.data
    if isinstance(data, QueryDict):
        body = {name: [_canonical(value) for value in values] for name, values in data.lists()}
    else:
        body = _canonical(data)
    text = json.dumps([request.method, request.get_full_path(), body], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value):
    if isinstance(value, UploadedFile):
        digest = hashlib.sha256()
        for chunk in value.chunks():
            digest.update(chunk)
        value.seek(0)
        return {"file": value.name, "size": value.size, "sha256": digest.hexdigest()}
    if isinstance(value, dict):
        return {str(name): _canonical(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def request_claim(
    *, user, key: str, method: str, path: str, fingerprint: str
) -> tuple[IdempotentRequest | None, Response | None]:
    """Claim `key` for this request: (the claim, None) when it is to run now, (None, the first response) for a
    repeat. Raises ApplicationError: 422 for the key of another request, 409 while the first copy still runs."""
    now = timezone.now()
    # Expired keys are forgotten (this user's, while we are here: no sweeper needed).
    IdempotentRequest.objects.filter(
        user=user, created_at__lt=now - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    ).delete()
    try:
        with transaction.atomic():
            claim = IdempotentRequest.objects.create(
                user=user, key=key, method=method, path=path[:255], fingerprint=fingerprint
            )
        return claim, None
    except IntegrityError:
        pass  # sent before: answer as the first copy was answered
    first = IdempotentRequest.objects.filter(user=user, key=key).first()
    if first is None:  # freed a moment ago (the first copy was refused): this copy may run
        return request_claim(user=user, key=key, method=method, path=path, fingerprint=fingerprint)
    if first.fingerprint != fingerprint:
        raise ApplicationError.for_field(
            HEADER,
            f"This key was used for another request (to {first.method} {first.path}, or with another body) in the "
            f"last {settings.IDEMPOTENCY_KEY_HOURS} hours: send a new request with a new key.",
            code="idempotency_key_reused",
            status=422,
        )
    if first.status_code is None:
        # Taken over by one repeat only: the update that finds the claim as it was.
        unfinished = IdempotentRequest.objects.filter(pk=first.pk, created_at=first.created_at, status_code=None)
        if first.created_at < now - ABANDONED_AFTER and unfinished.update(created_at=now) == 1:
            return first, None
        raise ApplicationError.for_field(
            HEADER,
            "A request with this key is still running: ask again in a moment for its answer.",
            code="idempotency_key_in_use",
            status=409,
        )
    return None, Response(first.response, status=first.status_code, headers={"Idempotent-Replayed": "true"})


def request_finish(*, claim: IdempotentRequest, response: Response) -> None:
    """Keep the response for repeats if the request stored something; else free the key (the module says why)."""
    if response.status_code < 300 or response.status_code == 402:
        IdempotentRequest.objects.filter(pk=claim.pk).update(status_code=response.status_code, response=response.data)
    else:
        IdempotentRequest.objects.filter(pk=claim.pk).delete()
