"""The idempotency keys every subject stores with its row before calling Stripe."""

import uuid


def stripe_key(action: str, subject) -> str:
    """An idempotency key for one intended Stripe call, stored with its row before the call. Unique for ever (not
    only per row id): Stripe keeps keys for 24 h, and a key reused with other parameters is an error."""
    return f"{action}:{subject}:{uuid.uuid4().hex}"
