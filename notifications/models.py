"""Job events delivered to customers: the events recorded once each, the customers' webhook endpoints, and each
delivery of an event to an endpoint with its attempts (notifications/services.py saves them all)."""

from django.conf import settings
from django.db import models


class WebhookEndpoint(models.Model):
    """A URL of the customer's that receives their jobs' events, signed with `secret` (notifications/signing.py).
    The secret is shown to the customer once, when the endpoint is created, and kept here to sign with."""

    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=80)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True, help_text="A disabled endpoint gets no new events.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.url


class BidEvent(models.Model):
    """Something that happened to a customer's bid, recorded once: the unique (bid, type, milestone) makes an event
    announced twice (a retried task, a round run again) deliver nothing twice."""

    class Type(models.TextChoices):
        WON = "bid.won", "Won compute"
        PROGRESS = "bid.progress", "Progress"
        COMPLETED = "bid.completed", "Completed"
        FAILED = "bid.failed", "Failed"
        EXPIRED = "bid.expired", "Expired"
        CANCELLED = "bid.cancelled", "Cancelled"
        RESULTS_CORRECTED = "bid.results_corrected", "Results corrected"

    event_id = models.CharField(max_length=40, unique=True)
    bid = models.ForeignKey("marketplace.Bid", on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32, choices=Type.choices)
    milestone = models.PositiveIntegerField(
        default=0, help_text="The percent validated for progress, the last audit's id for corrected results, else 0."
    )
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    emailed_at = models.DateTimeField(null=True, blank=True, help_text="When the customer was emailed about it.")

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["bid", "type", "milestone"], name="one_event_per_bid_type_milestone")
        ]

    def __str__(self) -> str:
        return f"{self.type} of bid {self.bid_id}"


class WebhookDelivery(models.Model):
    """One event sent to one endpoint: POSTed until it is answered 2xx, retried with backoff
    (settings.WEBHOOK_RETRY_DELAYS), and failed after the last try."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=40)
    event_type = models.CharField(max_length=32)
    bid = models.ForeignKey(
        "marketplace.Bid", on_delete=models.SET_NULL, null=True, blank=True, related_name="webhook_deliveries"
    )
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="When a pending delivery is tried next (the sweep queues it once passed)."
    )
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_id"], name="one_delivery_per_endpoint")]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} to {self.endpoint}"
