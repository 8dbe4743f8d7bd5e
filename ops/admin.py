from django.contrib import admin

from .models import AuditEvent, PlatformHeartbeat


@admin.register(PlatformHeartbeat)
class PlatformHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("worker", "last_seen_at", "ticks", "first_seen_at")
    readonly_fields = ("worker", "last_seen_at", "ticks", "first_seen_at")
    search_fields = ("worker",)

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is appended to by ops.audit.audit_record and never edited."""

    list_display = ("created_at", "actor_username", "action", "target_type", "target_id", "target_repr")
    list_filter = (
        "action",
        "target_type",
        ("created_at", admin.DateFieldListFilter),
        ("actor", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("actor_username", "action", "target_id", "target_repr")
    date_hierarchy = "created_at"
    list_select_related = ("actor",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
