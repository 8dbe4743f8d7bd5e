"""Reconcile the ledger with Stripe, for a scheduler or monitoring: exit 0 when the books reconcile, 1 on any
difference (or an unbalanced transaction), 2 when Stripe could not be read."""

from django.core.management.base import BaseCommand, CommandError

from billing.reconciliation import reconciliation_report
from core.money import usd


class Command(BaseCommand):
    help = "Compare Stripe's captures, top-ups, refunds and transfers with the ledger, object by object; exit 1 on any."

    def add_arguments(self, parser):
        parser.add_argument("--currency", default="usd")

    def handle(self, *args, currency: str, **options):
        report = reconciliation_report(currency=currency)
        for total in report.totals:
            stripe_side = "unreadable" if total.stripe_nc is None else usd(total.stripe_nc, currency)
            self.stdout.write(f"{total.label}: Stripe {stripe_side}, ledger {usd(total.ledger_nc, currency)}")
        for difference in report.differences:
            self.stdout.write(
                f"DIFFERENCE {difference.what} {difference.object_id or '(no Stripe id)'}: "
                f"{difference.problem_display} (Stripe {usd(difference.stripe_nc, currency)}, "
                f"ledger {usd(difference.ledger_nc, currency)})"
            )
        if report.unbalanced_transaction_ids:
            ids = ", ".join(str(pk) for pk in report.unbalanced_transaction_ids)
            self.stdout.write(f"UNBALANCED ledger transactions: {ids}")
        for error in report.stripe_errors:
            self.stderr.write(error)
        if report.differences or report.unbalanced_transaction_ids:
            count = len(report.differences) + len(report.unbalanced_transaction_ids)
            raise CommandError(f"The books do not reconcile: {count} difference(s).", returncode=1)
        if report.stripe_errors:
            raise CommandError("Stripe could not be read: the books were not reconciled.", returncode=2)
        self.stdout.write(self.style.SUCCESS("Books reconcile: no difference."))
