from django.contrib import admin

from .models import HardwareProfile, OptInPolicy, ParkingSession, Vehicle, VehicleCredential, VehicleState


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
    readonly_fields = ("key_id", "created_at", "last_used_at")
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are made by the owner's page, which shows the private half once


@admin.register(Vehicle)
class VehicleAdmin(admin.ModelAdmin):
    list_display = ("display_name", "owner", "hardware", "status", "time_zone", "is_simulated", "created_at")
    list_filter = ("status", "hardware", "is_simulated", "time_zone", "region")
    search_fields = ("display_name", "owner__username", "owner__email", "vin_last4")
    list_select_related = ("owner", "hardware")
    readonly_fields = ("vin_hash", "vin_last4", "created_at")
    raw_id_fields = ("owner",)
    inlines = [OptInPolicyInline, VehicleCredentialInline]
    actions = ["suspend", "reactivate"]

    @admin.action(description="Suspend the selected vehicles")
    def suspend(self, request, queryset):
        count = queryset.update(status=Vehicle.Status.SUSPENDED, status_reason="Suspended by staff.")
        self.message_user(request, f"Suspended {count} vehicle(s).")

    @admin.action(description="Reactivate the selected vehicles")
    def reactivate(self, request, queryset):
        count = queryset.update(status=Vehicle.Status.ACTIVE, status_reason="")
        self.message_user(request, f"Reactivated {count} vehicle(s).")


@admin.register(ParkingSession)
class ParkingSessionAdmin(admin.ModelAdmin):
    list_display = ("vehicle", "arrived_at", "departed_at", "departure_announced")
    list_filter = ("departure_announced", ("departed_at", admin.EmptyFieldListFilter))
    search_fields = ("vehicle__display_name",)
    list_select_related = ("vehicle",)
    date_hierarchy = "arrived_at"


@admin.register(VehicleState)
class VehicleStateAdmin(admin.ModelAdmin):
    list_display = ("vehicle", "received_at", "parked", "plugged_in", "battery_pct", "network", "computing")
    list_filter = ("parked", "plugged_in", "network", "computing")
    list_select_related = ("vehicle",)
    search_fields = ("vehicle__display_name",)
