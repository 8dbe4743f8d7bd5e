from django import forms

from core.exceptions import ApplicationError

from .services import TEST_CARDS


class CardForm(forms.Form):
    """Add or replace the saved card. In test mode (the demo, Stripe's test keys) a customer picks one of Stripe's
    test payment methods: no card number ever reaches this site."""

    payment_method = forms.ChoiceField(
        label="Test card",
        choices=list(TEST_CARDS.items()),
        initial="pm_card_visa",
        help_text="Stripe's test payment methods: the declined ones let you see what a refused card does to a bid.",
    )

    def add_application_error(self, error: ApplicationError) -> None:
        """Show a service's refusal on the fields it names (the rest above the form)."""
        if not error.fields:
            self.add_error(None, error.message)
        for field, messages in error.fields.items():
            for message in messages:
                self.add_error(field if field in self.fields else None, message)
