# Vehicles, hardware profiles and opt-in policies arrive with the fleet issue.
