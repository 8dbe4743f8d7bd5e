from django import forms

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
