"""Customers' cards: the Stripe customer made on first use, and the card their bids' budgets are held on."""

from __future__ import annotations

import uuid

from accounts.models import Role, User
from core.exceptions import ApplicationError

from .. import stripe_gateway
from ..models import BillingProfile
from .keys import stripe_key

# Test payment methods a customer may pick in test mode (and the demo): https://docs.stripe.com/testing
TEST_CARDS = {
    "pm_card_visa": "Visa, succeeds",
    "pm_card_chargeCustomerFail": "Visa, saved, then every payment declined",
    "pm_card_chargeDeclined": "Visa, declined when saved",
}


def card_save(*, user: User, payment_method: str) -> BillingProfile:
    """Save a card for the customer's bids: their Stripe customer is created on first use."""
    if user.role != Role.CUSTOMER:
        raise ApplicationError("Only customers add cards.", code="permission_denied", status=403)
    profile, _ = BillingProfile.objects.get_or_create(user=user)
    try:
        if not profile.stripe_customer_id:
            if not profile.customer_key:
                profile.customer_key = stripe_key("customer", user.pk)
                profile.save(update_fields=["customer_key", "updated_at"])
            profile.stripe_customer_id = stripe_gateway.customer_create(
                email=user.email, name=user.get_full_name() or user.username, user_id=user.pk, key=profile.customer_key
            )
            profile.save(update_fields=["stripe_customer_id", "updated_at"])
        card = stripe_gateway.card_attach(
            customer_id=profile.stripe_customer_id, payment_method=payment_method,
            key=f"card:{user.pk}:{uuid.uuid4()}",
        )  # fmt: skip
    except stripe_gateway.GatewayError as error:
        raise ApplicationError.for_field("payment_method", error.message) from error
    profile.payment_method_id, profile.card_brand, profile.card_last4 = card.payment_method_id, card.brand, card.last4
    profile.save(update_fields=["payment_method_id", "card_brand", "card_last4", "updated_at"])
    return profile
