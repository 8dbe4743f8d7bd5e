import signal
import time
import urllib.request

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from ops.demo import banner

# How often the demo customers bid again once their last job has ended: within the auction's round (60 s by default).
REBID_EVERY_S = 30.0


class Command(BaseCommand):
    help = (
        "Wait until the web server and the local Stripe server answer, place the demo bids (paid from the demo "
        "customers' prepaid balances), print where to log in, then bid again whenever a demo job has ended, until "
        "Ctrl-C (used by `make demo`)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--timeout", type=float, default=120.0)

    def handle(self, *args, url: str, timeout: float, **options):
        deadline = time.monotonic() + timeout
        if not self._wait(f"{url}/healthz/", deadline):
            self.stderr.write(f"the web server did not answer at {url} within {timeout:.0f} s")
            return
        bidding = False
        if settings.STRIPE_API_BASE:
            if self._wait(f"{settings.STRIPE_API_BASE}/_dev/health", deadline):
                # The demo customers' bids reserve their budget from a prepaid balance topped up by charging a test
                # card: they can only be placed once Stripe answers; and only for work the fleet can run, so once the
                # simulated cars are registered and have said what they compute on.
                if not self._fleet_ready(deadline):
                    self.stderr.write("the simulated fleet did not report within the timeout: bidding anyway")
                call_command("seed_demo_bids", stdout=self.stdout)
                bidding = True
            else:
                self.stderr.write(f"the local Stripe server did not answer at {settings.STRIPE_API_BASE}")
        self.stdout.write(banner(url))
        self.stdout.flush()
        # The process manager stops everything when one process exits, so stay until it stops us.
        if not bidding:
            signal.pause()
        # Meanwhile the demo customers bid again whenever their last job has ended. An honest job is a fraction of a
        # cent of one car's time, so a single pair of bids pays one car's owner, once; a steady trickle lets the cars
        # that come and go through the simulated day earn too, and keeps the market's price history moving.
        while True:
            time.sleep(REBID_EVERY_S)
            close_old_connections()  # a long-lived process: a dropped database connection is opened afresh
            try:
                call_command("seed_demo_bids", stdout=self.stdout)
            except Exception as error:  # a busy SQLite file, a Stripe hiccup: the next try may pass
                self.stderr.write(f"the demo customers could not bid again: {error}")
            self.stdout.flush()

    @staticmethod
    def _fleet_ready(deadline: float) -> bool:
        from fleet.models import Vehicle

        while not Vehicle.objects.filter(is_simulated=True, compute_reported_at__isnull=False).exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    @staticmethod
    def _wait(address: str, deadline: float) -> bool:
        while True:
            try:
                with urllib.request.urlopen(address, timeout=2):  # noqa: S310 - our own local URLs
                    return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)
