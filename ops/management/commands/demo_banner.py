import signal
import time
import urllib.request

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from ops.demo import banner


class Command(BaseCommand):
    help = (
        "Wait until the web server and the local Stripe server answer, place the demo bids, print where to log in, "
        "then wait for Ctrl-C (used by `make demo`)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--timeout", type=float, default=120.0)

    def handle(self, *args, url: str, timeout: float, **options):
        deadline = time.monotonic() + timeout
        if not self._wait(f"{url}/healthz/", deadline):
            self.stderr.write(f"the web server did not answer at {url} within {timeout:.0f} s")
            return
        if settings.STRIPE_API_BASE:
            if self._wait(f"{settings.STRIPE_API_BASE}/_dev/health", deadline):
                # Bids hold their budget on a card: they can only be placed once Stripe answers; and only for work
                # the fleet can run, so once the simulated cars are registered and have said what they compute on.
                if not self._fleet_ready(deadline):
                    self.stderr.write("the simulated fleet did not report within the timeout: bidding anyway")
                call_command("seed_demo_bids", stdout=self.stdout)
            else:
                self.stderr.write(f"the local Stripe server did not answer at {settings.STRIPE_API_BASE}")
        self.stdout.write(banner(url))
        self.stdout.flush()
        # The process manager stops everything when one process exits, so stay until it stops us.
        signal.pause()

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
