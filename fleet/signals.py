"""Events the fleet announces, for the apps above it to act on (the fleet never imports them).

`vehicle_stopped_working(vehicle, reason)`: the car can no longer run the work it holds: it announced its departure,
its owner paused it, the platform suspended it, a heartbeat said it is driving or off WiFi, or it went silent. The
marketplace releases the car's work units (marketplace.apps), and returns how many.
"""

from django.dispatch import Signal

vehicle_stopped_working = Signal()
