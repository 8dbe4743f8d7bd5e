"""What the apps' HTML forms share: showing a service's refusal on the form that asked for the action.

Services raise one error type (core/exceptions.py) whose `fields` the API returns as JSON; a page shows the same
messages next to the same fields, so a person reads the same words in either place.
"""

from __future__ import annotations

from collections.abc import Mapping

from django import forms

from .exceptions import ApplicationError


def add_application_error(
    form: forms.BaseForm, error: ApplicationError, *, field_map: Mapping[str, str] | None = None
) -> None:
    """Show a service's refusal on `form`: each message on the field it names, the rest above the form, and the
    error's own message there when it names no field. `field_map` takes a service's field name to the form's where
    they differ (the service speaks of `leave_at`, the form asks for `leave_at_time`)."""
    field_map = field_map or {}
    if not error.fields:
        form.add_error(None, error.message)
    for field, messages in error.fields.items():
        name = field_map.get(field, field)
        for message in messages:
            form.add_error(name if name in form.fields else None, message)
