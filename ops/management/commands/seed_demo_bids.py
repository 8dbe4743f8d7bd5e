"""Give the demo customers a test card and a bid each on the catalogue models, so the first rounds have something to
sell. Needs the (local) Stripe server: bids hold their budget on the card. Safe to run again: a customer with a card
gets no other, and one with an open bid gets no other bid."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from accounts.models import User
from billing.models import BillingProfile
from billing.services.cards import card_save
from core.exceptions import ApplicationError
from marketplace import services
from marketplace.models import Bid, InferenceModel

DEMO_BIDS = [
    # (customer, catalogue model kind, max price in m¢ per CH)
    ("alice", InferenceModel.Kind.TEXT, 6000),
    ("bob", InferenceModel.Kind.TENSOR, 4000),
]


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        for username, kind, price in DEMO_BIDS:
            customer = User.objects.filter(username=username).first()
            model = InferenceModel.objects.filter(is_catalogue=True, kind=kind, status="ready").first()
            if customer is None or model is None:
                self.stdout.write(f"skipped {username}'s demo bid: run seed_demo and catalogue_sync first")
                continue
            if Bid.objects.filter(customer=customer, status__in=Bid.OPEN_STATUSES).exists():
                continue
            try:
                if not BillingProfile.objects.filter(user=customer).exclude(payment_method_id="").exists():
                    card_save(user=customer, payment_method="pm_card_visa")
                bid = services.bid_place(
                    customer=customer,
                    inference_model=model,
                    dataset=model.datasets.filter(owner__isnull=True).first(),
                    precision="auto",
                    max_price_mcents_per_ch=price,
                    budget_cents=500,
                    deadline=timezone.now() + timedelta(hours=6),
                )
            except ApplicationError as error:
                self.stdout.write(f"skipped {username}'s demo bid: {error.message}")
                continue
            self.stdout.write(f"{username} bids for {bid.items} items of {model.name}")
