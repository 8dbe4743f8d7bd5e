from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace"

    def ready(self) -> None:
        from fleet.signals import vehicle_stopped_working

        from .dispatch import vehicle_stopped_working_received
        from .signals import model_check_wanted, units_cut_wanted, variant_build_wanted
        from .tasks import model_check_wanted_received, units_cut_wanted_received, variant_build_wanted_received

        vehicle_stopped_working.connect(vehicle_stopped_working_received, dispatch_uid="marketplace-release-units")
        # The services ask for work in a worker by these signals; the tasks queue it (the services never import them).
        model_check_wanted.connect(model_check_wanted_received, dispatch_uid="marketplace-check-model")
        variant_build_wanted.connect(variant_build_wanted_received, dispatch_uid="marketplace-build-variant")
        units_cut_wanted.connect(units_cut_wanted_received, dispatch_uid="marketplace-cut-units")
