from django.contrib import admin

from .models import PlatformHeartbeat


@admin.register(PlatformHeartbeat)
class PlatformHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("worker", "last_seen_at", "ticks", "first_seen_at")
    readonly_fields = ("worker", "last_seen_at", "ticks", "first_seen_at")
    search_fields = ("worker",)

    def has_add_permission(self, request) -> bool:
        return False
