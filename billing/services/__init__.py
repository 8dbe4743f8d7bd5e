"""Money in and out, one module per subject: customers' cards (`cards`), a bid's budget held on the card
(`authorizations`), capture when a job ends (`settling`), refunds (`refunds`), owners' Stripe Connect onboarding
(`connect`), and earnings out of hold and payouts (`payouts`). Callers import the module of the subject they need, so
a function has one name and a test patches it where it is looked up.

The pattern for every Stripe call (RELIABILITY.md, "Money"): decide and store the amount and the idempotency key in
one transaction, commit, call Stripe with that key, then book the result in a second transaction whose ledger posting
has its own idempotency key. A crash anywhere is repaired by running the same function again: the stored key makes
Stripe answer with the first object, the posting key makes the ledger post once.
"""
