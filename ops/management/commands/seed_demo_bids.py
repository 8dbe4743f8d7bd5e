"""Give the demo customers a test card, a $10.00 top-up of their prepaid balance and a bid each on the catalogue
models, so the first rounds have something to sell. Needs the (local) Stripe server: the top-up is charged to the card.
Each bid reserves an honest budget ($1.00) from the balance and is charged exactly what its validated work is worth, at
the catalogue's own CH per item: a fraction of a cent, to the n¢. Safe to run again: a customer with a card gets no
other, one with a top-up (booked or being charged) no other top-up, and one with an open or paused bid no other bid."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from accounts.models import User
from billing.models import BillingProfile, TopUp
from billing.services.cards import card_save
from billing.services.topups import topup_create
from core.exceptions import ApplicationError
from core.money import usd_cents
from marketplace import services
from marketplace.models import Bid, InferenceModel

DEMO_BIDS = [
    # (customer, catalogue model kind, max price in m¢ per CH)
    ("alice", InferenceModel.Kind.TEXT, 6000),
    ("bob", InferenceModel.Kind.TENSOR, 4000),
]
TOPUP_CENTS = 1000  # $10.00 on each demo customer's balance
BUDGET_CENTS = 100  # $1.00 per demo bid: far more than the work costs, and what it does not use goes back


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        for username, kind, price in DEMO_BIDS:
            customer = User.objects.filter(username=username).first()
            model = InferenceModel.objects.filter(is_catalogue=True, kind=kind, status="ready").first()
            if customer is None or model is None:
                self.stdout.write(f"skipped {username}'s demo bid: run seed_demo and catalogue_sync first")
                continue
            if Bid.objects.filter(customer=customer, status__in=[*Bid.OPEN_STATUSES, Bid.Status.PAUSED]).exists():
                continue
            try:
                self._fund(customer)
                bid = services.bid_place(
                    customer=customer,
                    inference_model=model,
                    dataset=model.datasets.filter(owner__isnull=True).first(),
                    precision="auto",
                    max_price_mcents_per_ch=price,
                    budget_cents=BUDGET_CENTS,
                    deadline=timezone.now() + timedelta(hours=6),
                    funding=Bid.Funding.BALANCE,
                )
            except ApplicationError as error:
                self.stdout.write(f"skipped {username}'s demo bid: {error.message}")
                continue
            self.stdout.write(
                f"{username} bids for {bid.items} items of {model.name}, {usd_cents(BUDGET_CENTS)} from the balance"
            )

    def _fund(self, customer: User) -> None:
        """A test card, and once a top-up of the prepaid balance charged to it. A top-up still being charged counts:
        the billing sweeper books it, and a second would put twice the money on the balance."""
        if not BillingProfile.objects.filter(user=customer).exclude(payment_method_id="").exists():
            card_save(user=customer, payment_method="pm_card_visa")
        booked = (TopUp.Status.SUCCEEDED, TopUp.Status.PENDING)
        if not TopUp.objects.filter(customer=customer, status__in=booked).exists():
            topup_create(customer=customer, amount_cents=TOPUP_CENTS)
            self.stdout.write(f"{customer.username} tops up the prepaid balance with {usd_cents(TOPUP_CENTS)}")
