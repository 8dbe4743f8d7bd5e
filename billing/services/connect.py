"""Owners' Stripe Connect accounts: the hosted onboarding that lets a car's owner receive payouts, and the account's
state as Stripe last told it."""

from __future__ import annotations

from accounts.models import Role, User
from core.exceptions import ApplicationError

from .. import stripe_gateway
from ..models import ConnectAccount
from .keys import stripe_key


def connect_onboarding_url(*, user: User, refresh_url: str, return_url: str) -> str:
    """Where to send an owner to set up (or finish setting up) payouts: Stripe's hosted onboarding."""
    if user.role != Role.OWNER:
        raise ApplicationError("Only car owners receive payouts.", code="permission_denied", status=403)
    account, _ = ConnectAccount.objects.get_or_create(
        user=user, defaults={"create_key": stripe_key("connect", user.pk)}
    )
    try:
        if not account.stripe_account_id:
            created = stripe_gateway.account_create(email=user.email, user_id=user.pk, key=account.create_key)
            account.stripe_account_id = created.id
            account.save(update_fields=["stripe_account_id", "updated_at"])
        return stripe_gateway.account_link_create(
            account_id=account.stripe_account_id, refresh_url=refresh_url, return_url=return_url
        )
    except stripe_gateway.GatewayError as error:
        raise ApplicationError(f"Stripe could not start onboarding: {error.message}", code="stripe_error",
                               status=502) from error  # fmt: skip


def connect_account_sync(*, account_id: str) -> ConnectAccount | None:
    """Re-read an account from Stripe (after onboarding, or on account.updated) and keep its state."""
    account = ConnectAccount.objects.filter(stripe_account_id=account_id).first()
    if account is None:
        return None
    remote = stripe_gateway.account_retrieve(account_id)
    account.details_submitted = bool(getattr(remote, "details_submitted", False))
    account.payouts_enabled = bool(getattr(remote, "payouts_enabled", False))
    account.save(update_fields=["details_submitted", "payouts_enabled", "updated_at"])
    return account
