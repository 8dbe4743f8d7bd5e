"""Input validated by a pydantic model, with the errors of a DRF serializer.

A hot endpoint (the car's heartbeat: nearly all of a fleet's requests) validates its input with pydantic, whose core
is compiled: 4 µs for a heartbeat where the equivalent serializer took 65 µs. Its errors are reported as every other
endpoint reports them (core/exceptions.py): the same field paths, and the messages DRF's fields would give.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from rest_framework import exceptions

Model = TypeVar("Model", bound=pydantic.BaseModel)

DATETIME_FORMAT = "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]"

# pydantic's error types -> DRF's message for the same problem ({...} from the error's context and input).
_MESSAGES = {
    "missing": "This field is required.",
    "float_type": "A valid number is required.",
    "float_parsing": "A valid number is required.",
    "finite_number": "A valid number is required.",
    "int_type": "A valid integer is required.",
    "int_parsing": "A valid integer is required.",
    "bool_type": "Must be a valid boolean.",
    "bool_parsing": "Must be a valid boolean.",
    "string_type": "Not a valid string.",
    "greater_than_equal": "Ensure this value is greater than or equal to {ge}.",
    "less_than_equal": "Ensure this value is less than or equal to {le}.",
    "string_too_long": "Ensure this field has no more than {max_length} characters.",
    "too_long": "Ensure this field has no more than {max_length} elements.",
    "list_type": 'Expected a list of items but got type "{type}".',
    "literal_error": '"{input}" is not a valid choice.',
    "enum": '"{input}" is not a valid choice.',
    "datetime_type": f"Datetime has wrong format. Use one of these formats instead: {DATETIME_FORMAT}.",
    "datetime_parsing": f"Datetime has wrong format. Use one of these formats instead: {DATETIME_FORMAT}.",
    "datetime_from_date_parsing": f"Datetime has wrong format. Use one of these formats instead: {DATETIME_FORMAT}.",
    "timezone_aware": "Include the UTC offset, e.g. 2026-11-26T07:30:00Z.",
    "model_type": "Invalid data. Expected a dictionary, but got {type}.",
    "dict_type": "Invalid data. Expected a dictionary, but got {type}.",
}


def validated(model: type[Model], request) -> Model:
    """The JSON body of `request` (a DRF request) as an instance of `model`, parsed and validated by pydantic in one
    step (DRF's parser would first build the Python objects). Refused as DRF refuses it: 415 for a body that is not
    JSON, 400 `parse_error` for malformed JSON, 400 naming each field and its problem."""
    media_type = (request.content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise exceptions.UnsupportedMediaType(media_type)
    try:
        # pydantic's parser stops at its own nesting limit (200 levels) with `json_invalid`, a 400 below, before
        # Python's stack runs out: this hot path needs no depth scan of its own (core/parsers.py).
        return model.model_validate_json(request.body or b"{}")  # an empty body is an empty object, as for DRF
    except pydantic.ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors(include_url=False)):
            raise exceptions.ParseError(f"JSON parse error - {error.errors()[0]['msg']}") from None
        raise exceptions.ValidationError(_fields(error)) from None


def _fields(error: pydantic.ValidationError) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"]) or "non_field_errors"
        fields.setdefault(path, []).append(_message(item))
    return fields


def _message(item: dict[str, Any]) -> str:
    kind, value = item["type"], item.get("input")
    if value is None and kind not in ("missing", "model_type", "dict_type"):
        return "This field may not be null."
    template = _MESSAGES.get(kind)
    if template is None:
        return item["msg"]  # a custom error (PydanticCustomError) carries its own message
    context = {**item.get("ctx", {}), "input": value, "type": type(value).__name__}
    return template.format(**context)
