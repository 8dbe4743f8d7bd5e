from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from marketplace.signals import bid_closed

        from .tasks import bid_closed_received

        bid_closed.connect(bid_closed_received, dispatch_uid="billing-settle-closed-bid")
