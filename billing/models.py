# The ledger, payments and payouts arrive with the billing issue.
