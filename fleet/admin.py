from django.contrib import admin
from django.db import transaction

from accounts.audit import audit_record
from accounts.policy_admin import AppendOnlyPolicyAdmin
from core.admin import LargeTableAdmin, ReadOnlyAdmin

from .models import (
    FleetPolicy,
    HardwareProfile,
    OptInPolicy,
    ParkingSession,
    Vehicle,
    VehicleCredential,
    VehicleState,
    VehicleThroughput,
    VehicleWorkDay,
)
from .selectors import energy_price_default


@admin.register(HardwareProfile)
class HardwareProfileAdmin(admin.ModelAdmin):
    list_display = (
        "name", "int8_tops", "factor_int8", "factor_fp8", "factor_fp16", "factor_fp32",
        "typical_power_w", "max_power_w", "runtime_version", "is_assumed", "updated_at",
    )  # fmt: skip
    list_filter = ("is_assumed", "runtime_version")
    search_fields = ("name", "notes")
    fieldsets = (
        (None, {"fields": ("name", "is_assumed", "notes")}),
        ("Throughput", {"fields": ("int8_tops", "factor_int8", "factor_fp8", "factor_fp16", "factor_fp32")}),
        ("Power and software", {"fields": ("typical_power_w", "max_power_w", "runtime_version")}),
    )


class OptInPolicyInline(admin.StackedInline):
    model = OptInPolicy
    can_delete = False


class VehicleCredentialInline(admin.TabularInline):
    model = VehicleCredential
    extra = 0
    fields = ("key_id", "created_at", "last_used_at", "revoked_at")
    # Revoked by the "Revoke the selected vehicles' keys" action, which tells every web process at once (an edit
    # here would not: fleet/authentication.py).
    readonly_fields = ("key_id", "created_at", "last_used_at", "revoked_at")
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are made by the owner's page, which shows the private half once


@admin.register(Vehicle)
class VehicleAdmin(LargeTableAdmin):
    list_display = (
        "display_name", "owner", "hardware", "compute_class", "status", "time_zone", "is_simulated", "created_at",
    )  # fmt: skip
    list_filter = ("status", "hardware", "compute_class", "is_simulated", "time_zone", "region")
    search_fields = ("display_name", "owner__username", "owner__email", "vin_last4")
    list_select_related = ("owner", "hardware")
    readonly_fields = ("vin_hash", "vin_last4", "created_at", "compute", "compute_class", "compute_reported_at")
    raw_id_fields = ("owner",)
    inlines = [OptInPolicyInline, VehicleCredentialInline]
    actions = ["suspend", "reactivate", "keys_revoke"]

    @admin.action(description="Suspend the selected vehicles")
    def suspend(self, request, queryset):
        # The service releases the car's work to other cars, tells its owner and records it in the audit log.
        from .services import vehicle_suspend

        vehicles = list(queryset.exclude(status=Vehicle.Status.SUSPENDED))
        for vehicle in vehicles:
            vehicle_suspend(vehicle=vehicle, reason="Suspended by staff.", actor=request.user)
        self.message_user(request, f"Suspended {len(vehicles)} vehicle(s).")

    @admin.action(description="Reactivate the selected vehicles")
    def reactivate(self, request, queryset):
        count = self._set_status(request, queryset, Vehicle.Status.ACTIVE, "", "vehicle.reactivate")
        self.message_user(request, f"Reactivated {count} vehicle(s).")

    @admin.action(description="Revoke the selected vehicles' keys")
    def keys_revoke(self, request, queryset):
        from .services import credential_revoke

        credentials = list(VehicleCredential.objects.filter(vehicle__in=queryset, revoked_at__isnull=True))
        with transaction.atomic():
            for credential in credentials:
                credential_revoke(credential=credential)
                audit_record(actor=request.user, action="vehicle.key_revoke", target=credential.vehicle,
                             details={"key_id": credential.key_id})  # fmt: skip
        self.message_user(request, f"Revoked {len(credentials)} key(s): those cars' agents stop until re-paired.")

    def _set_status(self, request, queryset, status: str, reason: str, action: str) -> int:
        """Change the cars that are not in `status` already, and record each change in the audit log."""
        with transaction.atomic():
            vehicles = list(queryset.select_for_update(of=("self",)).exclude(status=status))
            for vehicle in vehicles:
                previous = vehicle.status
                vehicle.status, vehicle.status_reason = status, reason
                vehicle.save(update_fields=["status", "status_reason"])
                details = {"previous_status": previous, "reason": reason}
                audit_record(actor=request.user, action=action, target=vehicle, details=details)
        return len(vehicles)


@admin.register(ParkingSession)
class ParkingSessionAdmin(LargeTableAdmin):
    list_display = ("vehicle", "arrived_at", "departed_at", "departure_announced")
    list_filter = (
        "departure_announced",
        ("departed_at", admin.EmptyFieldListFilter),
        ("arrived_at", admin.DateFieldListFilter),
    )
    search_fields = ("vehicle__display_name",)
    list_select_related = ("vehicle",)


@admin.register(VehicleState)
class VehicleStateAdmin(LargeTableAdmin):
    list_display = ("vehicle", "received_at", "parked", "plugged_in", "battery_pct", "network", "computing")
    list_filter = ("parked", "plugged_in", "network", "computing")
    list_select_related = ("vehicle",)
    search_fields = ("vehicle__display_name",)


@admin.register(VehicleThroughput)
class VehicleThroughputAdmin(ReadOnlyAdmin, LargeTableAdmin):
    """What each car was measured doing (read-only): its self-tests, then every unit's timing."""

    list_display = ("vehicle", "precision", "workload_short", "items_per_s", "ch_per_hour_shown", "wh_per_ch_shown",
                    "samples", "compute_class", "measured_at")  # fmt: skip
    list_filter = ("precision", "compute_class", ("measured_at", admin.DateFieldListFilter))
    search_fields = ("vehicle__display_name", "=workload")
    list_select_related = ("vehicle",)

    @admin.display(description="workload")
    def workload_short(self, obj) -> str:
        return obj.workload[:12]

    @admin.display(description="CH per hour")
    def ch_per_hour_shown(self, obj) -> str:
        return f"{obj.ch_per_hour:.3g}"

    @admin.display(description="Wh per CH")
    def wh_per_ch_shown(self, obj) -> str:
        return f"{obj.wh_per_ch:.3g}"


@admin.register(VehicleWorkDay)
class VehicleWorkDayAdmin(ReadOnlyAdmin, LargeTableAdmin):
    """Each car's work per day of its own calendar, as it measured it (read-only)."""

    list_display = ("vehicle", "day", "units", "items", "seconds", "energy_wh")
    list_filter = (("day", admin.DateFieldListFilter),)
    search_fields = ("vehicle__display_name",)
    list_select_related = ("vehicle",)


@admin.register(FleetPolicy)
class FleetPolicyAdmin(AppendOnlyPolicyAdmin):
    list_display = ("created_at", "created_by", "default_energy_price_cents_per_kwh", "note")
    list_filter = (("created_by", admin.RelatedOnlyFieldListFilter),)
    fieldsets = (
        ("New cars", {"fields": ("default_energy_price_cents_per_kwh",)}),
        ("Change", {"fields": ("note", "created_by", "created_at")}),
    )
    audit_action = "fleet_policy.change"

    def defaults_in_force(self) -> dict:
        return {"default_energy_price_cents_per_kwh": energy_price_default()}
