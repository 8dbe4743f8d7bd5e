"""One application error type, and the one place where every API error becomes the documented JSON shape.

    {"code": "invalid", "message": "email: Enter a valid email address.", "fields": {"email": ["Enter a ..."]}}

`message` is always a sentence a person can act on and names the field when there is one; `fields` maps each field
(dotted for nested input, `non_field_errors` for the whole request) to its messages, and is empty otherwise.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler


class ApplicationError(Exception):
    """A business rule said no. Services raise it; views and the API turn it into a 4xx response."""

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, list[str]] | None = None,
        code: str = "invalid",
        status: int = 400,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.code = code
        self.status = status

    @classmethod
    def for_field(cls, field: str, message: str, *, code: str = "invalid", status: int = 400) -> ApplicationError:
        """The error of one input field: the message names it, and `fields` carries it for forms and the API."""
        return cls(f"{field}: {message}", fields={field: [message]}, code=code, status=status)


class ErrorSerializer(serializers.Serializer):
    """The shape of every error response (used in the OpenAPI schema)."""

    code = serializers.CharField(help_text="Machine-readable kind of error, e.g. `invalid`, `not_found`.")
    message = serializers.CharField(help_text="What went wrong, naming the field when there is one.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Messages per field; dotted paths for nested input.",
    )


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def _message(fields: dict[str, list[str]]) -> str:
    parts = []
    for name, messages in fields.items():
        text = " ".join(messages)
        parts.append(text if name == "non_field_errors" else f"{name}: {text}")
    return " ".join(parts) or "Invalid input."


def error_body(*, code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "fields": fields or {}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(error_body(code=exc.code, message=exc.message, fields=exc.fields), status=exc.status)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) if exc.args else None)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: a 500, logged by Django

    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        response.data = error_body(code="invalid", message=_message(fields), fields=fields)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = detail.code if hasattr(detail, "code") else "error"
        response.data = error_body(code=str(code), message=str(detail))
    return response


# --- Errors Django answers itself, before or outside a view: JSON under /api/, the HTML pages elsewhere ------------
# (config/urls.py names these handlers. A path under /api/ that no URL matches, an id that is not an integer, say,
# never reaches DRF's exception handler above.)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def _json_error(*, status: int, code: str, message: str):
    return JsonResponse(error_body(code=code, message=message), status=status)


def bad_request(request, exception=None):
    if _is_api(request):
        return _json_error(status=400, code="bad_request", message="The request could not be read.")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _is_api(request):
        return _json_error(
            status=403, code="permission_denied", message="You do not have permission to perform this action."
        )
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception=None):
    if _is_api(request):
        return _json_error(
            status=404, code="not_found", message=f"No such endpoint or object: {request.method} {request.path}"
        )
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return _json_error(status=500, code="server_error", message="A server error occurred: it has been logged.")
    return defaults.server_error(request)
