from django.contrib import admin

from accounts.policy_admin import AppendOnlyPolicyAdmin
from core.admin import LargeTableAdmin, ReadOnlyAdmin

from .models import (
    Bid,
    Dataset,
    InferenceModel,
    PrecisionVariant,
    PricingPolicy,
    ResultAudit,
    ResultFault,
    Round,
    RoundSale,
    SelfTest,
    VariantAccuracy,
    WorkUnit,
)
from .selectors import pricing_current, regions_known


class PrecisionVariantInline(admin.TabularInline):
    model = PrecisionVariant
    extra = 0
    can_delete = False
    fields = (
        "precision", "dataset", "status", "retired_at", "progress", "size_bytes", "ch_per_item", "metrics",
        "items_per_s", "emulated",
    )  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(InferenceModel)
class InferenceModelAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "kind", "is_catalogue", "status", "onnx_size", "metric", "tolerance", "created_at")
    list_filter = ("status", "kind", "is_catalogue", "metric")
    search_fields = ("name", "owner__username", "onnx_sha256")
    list_select_related = ("owner",)
    readonly_fields = ("onnx_sha256", "onnx_size", "tokenizer_sha256", "inputs", "outputs", "opset", "macs_per_item")
    inlines = [PrecisionVariantInline]


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "inference_model", "format", "item_count", "size_bytes", "created_at")
    list_filter = ("format", "status")
    search_fields = ("name", "owner__username", "inference_model__name")
    list_select_related = ("owner", "inference_model")
    readonly_fields = ("sha256", "size_bytes", "item_count", "holdout_count")


@admin.register(PrecisionVariant)
class PrecisionVariantAdmin(admin.ModelAdmin):
    list_display = ("inference_model", "precision", "status", "progress", "size_bytes", "ch_per_item", "emulated")
    list_filter = ("precision", "status", "emulated")
    list_select_related = ("inference_model",)


@admin.register(ResultFault)
class ResultFaultAdmin(admin.ModelAdmin):
    """Evidence against cars (read-only): what suspended them."""

    list_display = ("created_at", "vehicle", "kind", "unit")
    list_filter = ("kind", ("created_at", admin.DateFieldListFilter))
    search_fields = ("vehicle__display_name", "vehicle__owner__username")
    list_select_related = ("vehicle", "unit")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ResultAudit)
class ResultAuditAdmin(ReadOnlyAdmin):
    """A caught car's unchecked results in one job, run again on other cars (read-only): what was found and
    replaced. Billing's corrections follow each closed audit."""

    list_display = ("opened_at", "vehicle", "bid", "evidence", "items_checked", "units_wrong", "items_replaced",
                    "items_removed", "result_version", "closed_at")  # fmt: skip
    list_filter = ("evidence", ("closed_at", admin.EmptyFieldListFilter), ("opened_at", admin.DateFieldListFilter))
    search_fields = ("vehicle__display_name", "vehicle__owner__username", "bid__customer__username")
    list_select_related = ("vehicle", "bid__inference_model")


class RegionFilter(admin.SimpleListFilter):
    """The market regions of the moment (selectors.regions_known) and the blank one: fixed choices, not a DISTINCT
    over a big table (LargeTableAdmin)."""

    title = "region"
    parameter_name = "region"
    BLANK = "-"  # never a region code, which starts with a letter or digit
    blank_label = "No region"

    def lookups(self, request, model_admin):
        return [(self.BLANK, self.blank_label), *((code, code) for code in regions_known())]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(region="" if value == self.BLANK else value)


class BidRegionFilter(RegionFilter):
    blank_label = "Any region (not pinned)"


@admin.register(Bid)
class BidAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("pk", "customer", "inference_model", "pool", "region", "status", "items",
                    "max_price_mcents_per_ch", "ch_allocated", "ch_total", "deadline", "created_at")  # fmt: skip
    list_filter = ("status", "pool", BidRegionFilter, ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "customer__username")
    list_select_related = ("customer", "inference_model")
    ordering = ("-pk",)  # the order bids were placed in, read from the primary key's index


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("slot", "region", "cars_offered", "bids_considered", "seconds", "platform_fee_pct", "finished_at")
    list_filter = (RegionFilter, ("slot", admin.DateFieldListFilter))


@admin.register(RoundSale)
class RoundSaleAdmin(ReadOnlyAdmin, LargeTableAdmin):
    """A round's sales to a batch of bids, packed until the dispatch queue cuts them: a batch left unstored for
    more than a minute is a cutting task that keeps failing (the sweep queues it again every 30 s)."""

    list_display = ("pk", "round", "bid_min", "bid_max", "allocations", "ends_max", "stored")
    list_filter = ("stored",)
    search_fields = ("=round__id",)
    list_select_related = ("round",)
    exclude = ("rows",)


@admin.register(WorkUnit)
class WorkUnitAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("pk", "bid_id", "index", "status", "verification", "canonical", "assigned_vehicle", "attempts",
                    "lease_expires_at", "completed_at")  # fmt: skip
    list_filter = ("status", "verification")
    search_fields = ("=bid__id",)
    list_select_related = ("assigned_vehicle",)


@admin.register(SelfTest)
class SelfTestAdmin(ReadOnlyAdmin, LargeTableAdmin):
    """Each car's first run of a variant: its speed and the variant's accuracy on its hardware."""

    list_display = ("leased_at", "vehicle", "variant", "status", "compute_class", "seconds", "runtime_version")
    list_filter = ("status", "compute_class", ("leased_at", admin.DateFieldListFilter))
    search_fields = ("vehicle__display_name", "variant__inference_model__name")
    list_select_related = ("vehicle", "variant__inference_model")


@admin.register(VariantAccuracy)
class VariantAccuracyAdmin(ReadOnlyAdmin):
    """A variant's accuracy per compute class: the platform's CPU, and the worst of the cars' self-tests."""

    list_display = ("variant", "compute_class", "passes", "cars_tested", "cars_failed", "platform", "measured_at")
    list_filter = ("passes", "compute_class", "platform")
    search_fields = ("variant__inference_model__name",)
    list_select_related = ("variant__inference_model",)


@admin.register(PricingPolicy)
class PricingPolicyAdmin(AppendOnlyPolicyAdmin):
    list_display = (
        "created_at", "created_by", "platform_fee_pct", "reserve_int8_mcents", "reserve_fp8_mcents",
        "reserve_fp16_mcents", "reserve_fp32_mcents", "price_ceiling_mcents", "auction_interval_seconds", "note",
    )  # fmt: skip
    # Only the staff who made a version, not every user of the platform.
    list_filter = (("created_by", admin.RelatedOnlyFieldListFilter),)
    fieldsets = (
        ("Market", {"fields": ("platform_fee_pct", "price_ceiling_mcents", "auction_interval_seconds")}),
        (
            "Reserve prices (m¢ per CH; 1 ¢ = 1000 m¢)",
            {"fields": ("reserve_int8_mcents", "reserve_fp8_mcents", "reserve_fp16_mcents", "reserve_fp32_mcents")},
        ),
        ("Change", {"fields": ("note", "created_by", "created_at")}),
    )
    audit_action = "pricing.change"

    def defaults_in_force(self) -> dict:
        pricing = pricing_current()
        return {
            "platform_fee_pct": pricing.platform_fee_pct,
            "price_ceiling_mcents": pricing.price_ceiling_mcents,
            "auction_interval_seconds": pricing.auction_interval_seconds,
            **{f"reserve_{pool}_mcents": value for pool, value in pricing.reserves.items()},
        }
