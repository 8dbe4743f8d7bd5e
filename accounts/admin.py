from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from knox.admin import AuthTokenAdmin as KnoxAuthTokenAdmin
from knox.models import AuthToken

from core.admin import LargeTableAdmin, ReadOnlyAdmin

from .models import AuditEvent, IdempotentRequest, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "email", "role", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("role", "is_active", "is_staff", "date_joined")
    search_fields = ("username", "email", "first_name", "last_name")
    # Staff raise a trusted customer's exposure cap here (empty: the platform's default).
    fieldsets = (*DjangoUserAdmin.fieldsets, ("Idlefleet", {"fields": ("role", "exposure_cap_cents")}))
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("username", "email", "role", "password1", "password2")}),)


@admin.register(IdempotentRequest)
class IdempotentRequestAdmin(admin.ModelAdmin):
    list_display = ("created_at", "user", "method", "path", "status_code", "key")
    list_select_related = ("user",)
    list_filter = ("method", "status_code")
    search_fields = ("key", "user__username", "path")
    readonly_fields = ("user", "key", "method", "path", "fingerprint", "status_code", "response", "created_at")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin, LargeTableAdmin):
    """Read-only: the audit log is appended to by accounts.audit.audit_record and never edited."""

    list_display = ("created_at", "actor_username", "action", "target_type", "target_id", "target_repr")
    list_filter = (
        "action",
        "target_type",
        ("created_at", admin.DateFieldListFilter),
        ("actor", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("actor_username", "action", "target_id", "target_repr")
    list_select_related = ("actor",)


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class AuthTokenAdmin(KnoxAuthTokenAdmin):
    """knox's list of API tokens, with the names their owners gave them and their last use. Staff revoke one by
    deleting it; they make none (people make their own on their tokens page: a token staff made would be someone
    else's credential in staff's hands)."""

    list_display = ("name", "user", "created", "last_used", "expiry", "digest")
    list_select_related = ("user", "api_token")
    search_fields = [*KnoxAuthTokenAdmin.search_fields, "api_token__name"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="name", ordering="api_token__name")
    def name(self, obj: AuthToken) -> str | None:
        api_token = getattr(obj, "api_token", None)  # none for a token made outside accounts.services
        return api_token.name if api_token else None

    @admin.display(description="last used", ordering="api_token__last_used_at")
    def last_used(self, obj: AuthToken):
        api_token = getattr(obj, "api_token", None)
        return api_token.last_used_at if api_token else None
