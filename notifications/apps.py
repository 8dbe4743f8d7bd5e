from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # Notifications sit above the marketplace: they listen to its events, which never import this app.
        from marketplace.signals import bid_audited, bid_closed, bid_progressed, bid_won

        from .signals import delivery_wanted, email_wanted
        from .tasks import (
            bid_audited_received,
            bid_closed_received,
            bid_progressed_received,
            bid_won_received,
            delivery_wanted_received,
            email_wanted_received,
        )

        bid_won.connect(bid_won_received, dispatch_uid="notifications-bid-won")
        bid_progressed.connect(bid_progressed_received, dispatch_uid="notifications-bid-progressed")
        bid_closed.connect(bid_closed_received, dispatch_uid="notifications-bid-closed")
        bid_audited.connect(bid_audited_received, dispatch_uid="notifications-bid-audited")
        # The services ask for work in a worker by these signals; the tasks queue it (the services never import them).
        delivery_wanted.connect(delivery_wanted_received, dispatch_uid="notifications-deliver")
        email_wanted.connect(email_wanted_received, dispatch_uid="notifications-email")
