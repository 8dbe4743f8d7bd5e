from celery import shared_task

from .selectors import OVERVIEW_FRESH_S
from .selectors import fleet_overview_refresh as overview_refresh
from .services import credentials_last_used_record
from .services import vehicle_states_snapshot as snapshot


@shared_task(ignore_result=True)
def vehicle_states_snapshot() -> None:
    """What heartbeats keep in Redis, copied to the database: the cars' live states and their keys' last uses."""
    snapshot()
    credentials_last_used_record()


@shared_task(ignore_result=True, soft_time_limit=OVERVIEW_FRESH_S * 4, time_limit=OVERVIEW_FRESH_S * 4 + 5)
def fleet_overview_refresh() -> None:
    """Keep the fleet overview (market and staff pages) fresh in the cache, so that no page view computes it."""
    overview_refresh()
