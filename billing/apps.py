from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Billing sits above the marketplace: it listens to the marketplace's events, which never import billing.
        from marketplace.signals import bid_audited, bid_charges_wanted, bid_closed, bid_placed, bid_placing

        from .tasks import (
            bid_audited_received,
            bid_charges_received,
            bid_closed_received,
            bid_placed_received,
            bid_placing_received,
        )

        bid_placing.connect(bid_placing_received, dispatch_uid="billing-prepare-bid-authorization")
        bid_placed.connect(bid_placed_received, dispatch_uid="billing-confirm-bid-authorization")
        bid_closed.connect(bid_closed_received, dispatch_uid="billing-settle-closed-bid")
        bid_audited.connect(bid_audited_received, dispatch_uid="billing-correct-audited-bid")
        bid_charges_wanted.connect(bid_charges_received, dispatch_uid="billing-bid-charges")
