"""Events the fleet announces, for the apps above it to act on (the fleet never imports them).

`vehicle_stopped_working(vehicle, reason)`: the car can no longer run the work it holds: it announced its departure,
its owner paused it, the platform suspended it, a heartbeat said it is driving or off WiFi, or it went silent. The
marketplace releases the car's work units (marketplace.apps), and returns how many.

`offer_inputs_changed` is not an announcement but a receiver of Django's own signals (wired in fleet.apps): it keeps
the supply book (fleet.book) in step with the rows a car's offer is computed from.
"""

from django.dispatch import Signal

vehicle_stopped_working = Signal()


def offer_inputs_changed(sender, instance, **kwargs) -> None:
    """A car, its policy, a stay or a measured speed was saved or deleted: the car's offer is rebuilt (fleet.book).
    Writes in bulk (QuerySet.update) send no signal: the services that make them call fleet.book.vehicle_refresh."""
    from . import book

    vehicle_id = instance.pk if sender.__name__ == "Vehicle" else instance.vehicle_id
    if vehicle_id is not None:
        book.vehicle_refresh(vehicle_id)
