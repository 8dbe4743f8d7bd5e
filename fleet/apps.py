from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from . import schema  # noqa: F401 - registers the agent's security scheme with drf-spectacular
        from .models import OptInPolicy, ParkingSession, Vehicle, VehicleThroughput
        from .signals import offer_inputs_changed

        # A saved or deleted row that a car's offer depends on: its offer in the supply book is rebuilt (fleet.book).
        for model in (Vehicle, OptInPolicy, ParkingSession, VehicleThroughput):
            post_save.connect(offer_inputs_changed, sender=model, dispatch_uid=f"book-{model.__name__}-saved")
            post_delete.connect(offer_inputs_changed, sender=model, dispatch_uid=f"book-{model.__name__}-deleted")
