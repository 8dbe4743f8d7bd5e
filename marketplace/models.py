# Bids, rounds, allocations and work units arrive with the marketplace issue.
