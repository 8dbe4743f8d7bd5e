"""Bounds on amounts of money that more than one app checks (pure: no Django). The marketplace refuses a bid's
budget above them before billing ever asks Stripe to hold it, so both name the bound from here."""

# Stripe's largest amount in USD (8 digits: $999,999.99). Every amount of money that comes in is bounded by it, so no
# sum of them overflows a report (a bid of 2^63 - 1 ¢ once broke the finance pages for good: the ledger is append-only).
MAX_AUTHORIZATION_CENTS = 99_999_999
