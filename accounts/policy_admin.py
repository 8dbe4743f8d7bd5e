"""The admin of a policy that staff set and that is never edited: the market's pricing (marketplace), the payout
rules (billing), the fleet's defaults (fleet). Each app registers its own model with this class."""

from __future__ import annotations

from django.contrib import admin
from django.db import transaction

from .audit import audit_record


class AppendOnlyPolicyAdmin(admin.ModelAdmin):
    """Append-only: "change" saves a new version (the history keeps who changed what, and when), and the change is
    written to the audit log in the same transaction as `audit_action`. A new version starts from the one in force,
    or from `defaults_in_force()` (the settings' values) before staff ever saved one."""

    audit_action = ""
    readonly_fields = ("created_by", "created_at")

    def defaults_in_force(self) -> dict:
        return {}

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_changeform_initial_data(self, request):
        current = self.model.objects.order_by("-created_at", "-pk").first()
        if current is None:
            return self.defaults_in_force()
        skip = ("id", "created_by", "created_at", "note")
        return {f.name: getattr(current, f.name) for f in self.model._meta.fields if f.name not in skip}

    def save_model(self, request, obj, form, change):
        # Never edit history: a change is saved as a new version.
        obj.pk = None
        obj.created_by = request.user
        with transaction.atomic():
            super().save_model(request, obj, form, False)
            changes = {name: [form.initial.get(name), form.cleaned_data.get(name)] for name in form.changed_data}
            audit_record(actor=request.user, action=self.audit_action, target=obj, details={"changes": changes})
