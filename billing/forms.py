from decimal import Decimal

from django import forms

from core.money import dollars_to_cents

from .services.cards import TEST_CARDS


class CardForm(forms.Form):
    """Add or replace the saved card. In test mode (the demo, Stripe's test keys) a customer picks one of Stripe's
    test payment methods: no card number ever reaches this site."""

    payment_method = forms.ChoiceField(
        label="Test card",
        choices=list(TEST_CARDS.items()),
        initial="pm_card_visa",
        help_text="Stripe's test payment methods: the declined ones let you see what a refused card does to a bid.",
    )


class TopUpForm(forms.Form):
    """Add money to the prepaid balance, charged to the saved card at once. Dollars, like every amount on the site."""

    amount = forms.DecimalField(
        label="Amount ($)", min_value=Decimal("0.01"), max_digits=10, decimal_places=2, initial=10,
        help_text="Charged to your card now. Bids reserve their budget from the balance and draw exactly what their "
        "validated work costs; what they do not use comes back to it.",
    )  # fmt: skip

    def amount_cents(self) -> int:
        return dollars_to_cents(self.cleaned_data["amount"])
