import signal
import time
import urllib.request

from django.core.management.base import BaseCommand

from ops.demo import banner


class Command(BaseCommand):
    help = "Wait until the web server answers, print where to log in, then wait for Ctrl-C (used by `make demo`)."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--timeout", type=float, default=120.0)

    def handle(self, *args, url: str, timeout: float, **options):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz/", timeout=2):  # noqa: S310 - our own local URL
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stderr.write(f"the web server did not answer at {url} within {timeout:.0f} s")
                    return
                time.sleep(0.5)
        self.stdout.write(banner(url))
        self.stdout.flush()
        # The process manager stops everything when one process exits, so stay until it stops us.
        signal.pause()
