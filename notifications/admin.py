from django.contrib import admin

from core.admin import LargeTableAdmin

from .models import BidEvent, WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("url", "customer", "description", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "customer__username", "customer__email")
    raw_id_fields = ("customer",)
    list_select_related = ("customer",)
    # The signing secret is the customer's: staff never read it.
    exclude = ("secret",)
    readonly_fields = ("created_at",)


class EventTypeFilter(admin.SimpleListFilter):
    """The event types as fixed choices: the column's distinct values would read the whole table."""

    title = "event type"
    parameter_name = "event_type"

    def lookups(self, request, model_admin):
        return [*BidEvent.Type.choices, ("ping", "Ping")]

    def queryset(self, request, queryset):
        return queryset.filter(event_type=self.value()) if self.value() else queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(LargeTableAdmin):
    list_display = ("created_at", "event_type", "endpoint", "bid", "status", "attempts", "last_status_code",
                    "last_error")  # fmt: skip
    list_filter = ("status", EventTypeFilter)
    search_fields = ("event_id", "endpoint__url")
    raw_id_fields = ("endpoint", "bid")
    list_select_related = ("endpoint", "bid__inference_model")
    readonly_fields = ("event_id", "event_type", "payload", "created_at", "delivered_at")


@admin.register(BidEvent)
class BidEventAdmin(LargeTableAdmin):
    list_display = ("created_at", "type", "bid", "milestone", "event_id", "emailed_at")
    list_filter = ("type",)
    search_fields = ("event_id",)
    raw_id_fields = ("bid",)
    list_select_related = ("bid__inference_model",)
    readonly_fields = ("event_id", "bid", "type", "milestone", "payload", "created_at", "emailed_at")
