from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace"

    def ready(self) -> None:
        from fleet.signals import vehicle_stopped_working

        from .dispatch import vehicle_stopped_working_received

        vehicle_stopped_working.connect(vehicle_stopped_working_received, dispatch_uid="marketplace-release-units")
