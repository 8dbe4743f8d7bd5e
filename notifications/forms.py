from django import forms


class WebhookEndpointForm(forms.Form):
    # Checked by the service (notifications.services.webhook_url_check), which the API shares.
    url = forms.CharField(
        label="URL", max_length=500,
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/idlefleet/webhook"}),
        help_text="Events are POSTed here as JSON, signed with the endpoint's secret.",
    )  # fmt: skip
    description = forms.CharField(max_length=200, required=False, help_text="Optional: what this endpoint is for.")
