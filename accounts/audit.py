"""The audit log's one writer: `audit_record`. Read it in the admin (Accounts › Audit events)."""

from __future__ import annotations

from typing import Any

from django.db import models

from .models import AuditEvent


def audit_record(
    *, actor, action: str, target: models.Model | None, details: dict[str, Any] | None = None
) -> AuditEvent:
    """Append who (`actor`: a user, or None for the platform itself) did `action` ("vehicle.suspend",
    "pricing.change", "payment.refund", ...) to `target` (any model instance), with JSON-serialisable `details`.

    Call it inside the transaction that makes the change, so that the change and its record commit together.
    """
    if actor is not None and not getattr(actor, "pk", None):
        actor = None  # an anonymous user or a car's principal: no person to name
    return AuditEvent.objects.create(
        actor=actor,
        actor_username=actor.get_username() if actor is not None else "",
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None and target.pk is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        details=details or {},
    )
