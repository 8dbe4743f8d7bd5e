from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import ApiToken, Role, User
from .services import SELF_SERVICE_ROLES


class SignUpForm(UserCreationForm):
    role = forms.ChoiceField(
        label="I want to",
        choices=[
            (Role.CUSTOMER, "Buy compute: run inference jobs on the fleet"),
            (Role.OWNER, "Earn money: rent out my parked car's computer"),
        ],
        widget=forms.RadioSelect,
        initial=Role.CUSTOMER,
    )
    email = forms.EmailField(help_text="Receipts and payout notices go here.")

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email already exists. Log in instead?")
        return email

    def clean_role(self) -> str:
        role = self.cleaned_data["role"]
        if role not in SELF_SERVICE_ROLES:
            raise forms.ValidationError("Choose customer or owner.")
        return role


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        max_length=ApiToken._meta.get_field("name").max_length,
        help_text="What it is for, so you know which to revoke later, e.g. “nightly batch script”.",
    )
