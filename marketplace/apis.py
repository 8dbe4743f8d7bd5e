"""The customer's REST API for inference models and datasets."""

from __future__ import annotations

import re
from base64 import urlsafe_b64decode, urlsafe_b64encode
from decimal import Decimal

from django.db.models import Prefetch, Q
from django.http import FileResponse, Http404
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.validators import ProhibitSurrogateCharactersValidator
from rest_framework.views import APIView

from accounts.idempotency import IDEMPOTENCY_KEY, idempotent
from accounts.models import Role
from accounts.permissions import HasRole
from core.exceptions import ApplicationError, ErrorSerializer
from core.money import (
    MAX_AUTHORIZATION_CENTS,
    dollars_to_cents,
    dollars_to_mcents,
    per_million_nc,
    usd_cents,
    usd_text_from_cents,
    usd_text_from_mcents,
    usd_text_from_nc,
)
from core.throttling import PublicApiRateThrottle
from fleet.apis import AgentApi
from fleet.models import Precision

from . import dispatch, selectors, services, storage
from .downloads import bid_result_response
from .models import Bid, Dataset, InferenceModel, PrecisionVariant, SelfTest, VariantAccuracy, WorkUnit
from .signals import bid_charges

IsCustomer = HasRole.of(Role.CUSTOMER)
MODEL_ID = OpenApiParameter("model_id", int, OpenApiParameter.PATH)


class VariantAccuracySerializer(serializers.ModelSerializer):
    class Meta:
        model = VariantAccuracy
        fields = ("compute_class", "passes", "metrics", "cars_tested", "cars_failed", "platform", "measured_at")
        read_only_fields = fields


class VariantOutputSerializer(serializers.ModelSerializer):
    meets_tolerance = serializers.SerializerMethodField()
    accuracy_by_class = VariantAccuracySerializer(
        source="accuracies", many=True, read_only=True,
        help_text="Accuracy against FP32 per compute class: the platform's CPU, and the cars' self-tests.",
    )  # fmt: skip

    class Meta:
        model = PrecisionVariant
        fields = (
            "id", "precision", "method", "status", "progress", "sha256", "size_bytes", "ch_per_item", "emulated",
            "metrics", "items_per_s", "error", "meets_tolerance", "accuracy_by_class",
        )  # fmt: skip
        read_only_fields = fields

    def get_meets_tolerance(self, variant) -> bool | None:
        return selectors.variant_passes(variant)


class PoolOutlookSerializer(serializers.Serializer):
    precision = serializers.CharField()
    runnable = serializers.BooleanField()
    cars = serializers.IntegerField(help_text="Active, opted-in cars that run it, outside classes it fails on.")
    ch_on_offer = serializers.FloatField(help_text="CH the cars available now offer in this pool.")
    reserve_usd_per_ch = serializers.CharField(help_text="The pool's reserve price, dollars per CH.")
    problem = serializers.CharField(help_text="Why it cannot run; empty when it can.")


class InferenceModelOutputSerializer(serializers.ModelSerializer):
    variants = serializers.SerializerMethodField()
    auto_precision = serializers.SerializerMethodField()
    outlook = serializers.SerializerMethodField()

    class Meta:
        model = InferenceModel
        fields = (
            "id", "name", "description", "kind", "is_catalogue", "onnx_sha256", "onnx_size", "output_name", "inputs",
            "outputs", "opset", "metric", "tolerance", "status", "rejection_reason", "created_at", "variants",
            "auto_precision", "outlook",
        )  # fmt: skip
        read_only_fields = fields

    def _outlook(self, model) -> list[selectors.PoolOutlook]:
        # The fleet's capability is read once per response, however many models it lists.
        if "fleet" not in self.context:
            self.context["fleet"] = selectors.fleet_capability()
        cached = self.context.setdefault("outlooks", {})
        if model.pk not in cached:
            cached[model.pk] = selectors.pools_outlook(model=model, fleet=self.context["fleet"])
        return cached[model.pk]

    @extend_schema_field(VariantOutputSerializer(many=True))
    def get_variants(self, model) -> list[dict]:
        """The model's shared builds in force, one per precision (a customer's own dataset's are on the dataset)."""
        return VariantOutputSerializer(_by_precision(selectors.variants_in_force(model=model)), many=True).data

    def get_auto_precision(self, model) -> str | None:
        """What "auto" would run now: the cheapest precision the fleet's cars run within the tolerance (None:
        nothing can run)."""
        pool = selectors.auto_pick(self._outlook(model))
        return pool.precision if pool else None

    @extend_schema_field(PoolOutlookSerializer(many=True))
    def get_outlook(self, model) -> list[dict]:
        """Per precision, cheapest first: whether the fleet can run this model's variant, and why not."""
        return [
            {"precision": p.precision, "runnable": p.runnable, "cars": p.cars, "ch_on_offer": p.ch_on_offer,
             "reserve_usd_per_ch": usd_text_from_mcents(p.reserve_mcents), "problem": p.problem}
            for p in self._outlook(model)
        ]  # fmt: skip


def _by_precision(variants: dict) -> list:
    from .inference.costing import AUTO_ORDER

    return [variants[precision] for precision in AUTO_ORDER if precision in variants]


class DatasetOutputSerializer(serializers.ModelSerializer):
    own_variants = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = (
            "id", "name", "format", "item_count", "holdout_count", "size_bytes", "sha256", "created_at", "own_variants",
        )  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(VariantOutputSerializer(many=True))
    def get_own_variants(self, dataset) -> list[dict]:
        """A customer's dataset of a catalogue model: the builds calibrated and judged on its own items (its accuracy
        report); empty for a dataset that runs the model's shared builds."""
        if selectors.variant_scope(model=dataset.inference_model, dataset=dataset) is None:
            return []
        rows = getattr(dataset, "builds_not_retired", None)  # prefetched for a list (DatasetListApi)
        if rows is None:
            rows = dataset.own_variants.filter(retired_at__isnull=True).prefetch_related("accuracies")
        return VariantOutputSerializer(_by_precision(selectors.builds_in_force(rows)), many=True).data


class InferenceModelListApi(APIView):
    permission_classes = [IsCustomer]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema_serializer(component_name="InferenceModelUpload")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120)
        onnx_file = serializers.FileField()
        tokenizer_file = serializers.FileField(required=False)
        output_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        metric = serializers.ChoiceField(choices=InferenceModel.Metric.choices, default=InferenceModel.Metric.COSINE)
        tolerance = serializers.FloatField(default=0.99, min_value=0)
        description = serializers.CharField(required=False, allow_blank=True, default="")

    @extend_schema(responses={200: InferenceModelOutputSerializer(many=True)})
    def get(self, request):
        models = selectors.inference_models_visible(user=request.user)
        return Response(InferenceModelOutputSerializer(models, many=True).data)

    @extend_schema(
        parameters=[IDEMPOTENCY_KEY],
        request=InputSerializer,
        responses={
            202: InferenceModelOutputSerializer, 400: ErrorSerializer, 409: ErrorSerializer, 413: ErrorSerializer,
            422: ErrorSerializer,
        },
    )  # fmt: skip
    @idempotent
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        model = services.inference_model_upload(owner=request.user, **serializer.validated_data)
        return Response(InferenceModelOutputSerializer(model).data, status=status.HTTP_202_ACCEPTED)


class InferenceModelDetailApi(APIView):
    permission_classes = [IsCustomer]

    @extend_schema(parameters=[MODEL_ID], responses={200: InferenceModelOutputSerializer, 404: ErrorSerializer})
    def get(self, request, model_id: int):
        model = selectors.inference_model_get(user=request.user, model_id=model_id)
        return Response(InferenceModelOutputSerializer(model).data)


class DatasetListApi(APIView):
    permission_classes = [IsCustomer]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema_serializer(component_name="DatasetUpload")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")
        file = serializers.FileField()

    @extend_schema(parameters=[MODEL_ID], responses={200: DatasetOutputSerializer(many=True), 404: ErrorSerializer})
    def get(self, request, model_id: int):
        model = selectors.inference_model_get(user=request.user, model_id=model_id)
        builds = PrecisionVariant.objects.filter(retired_at__isnull=True).prefetch_related("accuracies")
        datasets = selectors.datasets_visible(user=request.user, model=model).prefetch_related(
            Prefetch("own_variants", queryset=builds, to_attr="builds_not_retired")
        )
        return Response(DatasetOutputSerializer(datasets, many=True).data)

    @extend_schema(
        parameters=[MODEL_ID, IDEMPOTENCY_KEY],
        request=InputSerializer,
        responses={
            201: DatasetOutputSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer,
            413: ErrorSerializer, 422: ErrorSerializer,
        },
    )  # fmt: skip
    @idempotent
    def post(self, request, model_id: int):
        model = selectors.inference_model_get(user=request.user, model_id=model_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dataset = services.dataset_upload(owner=request.user, inference_model=model, **serializer.validated_data)
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class AgentArtifactApi(AgentApi):
    """A car downloads a model variant or tokenizer by sha256 (signed GET): only the files of a unit it holds under a
    lease, never an arbitrary stored file or another customer's model."""

    @extend_schema(
        parameters=[OpenApiParameter("sha256", str, OpenApiParameter.PATH)],
        responses={(200, "application/octet-stream"): bytes, 404: ErrorSerializer},
    )
    def get(self, request, sha256: str):
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):  # not a digest (and no NUL byte for PostgreSQL to choke on)
            raise Http404("No such artifact.")
        # Only what this car needs for a unit or self-test it holds: a customer's model is not for every car to fetch.
        vehicle = request.user.vehicle
        leased = WorkUnit.objects.filter(assigned_vehicle=vehicle, status=WorkUnit.Status.LEASED)
        tests = SelfTest.objects.filter(vehicle=vehicle, status=SelfTest.Status.LEASED)
        servable = (
            leased.filter(variant__sha256=sha256).exists()
            or leased.filter(bid__inference_model__tokenizer_sha256=sha256).exists()
            or tests.filter(Q(variant__sha256=sha256) | Q(variant__inference_model__tokenizer_sha256=sha256)).exists()
        )
        if not servable or not storage.artifact_exists(sha256):
            raise Http404("No such artifact.")
        response = FileResponse(storage.artifact_open(sha256), content_type="application/octet-stream")
        response["X-Content-SHA256"] = sha256
        return response


class BidAllocationSerializer(serializers.Serializer):
    """Compute a round sold to the bid: how many CH of which pool, at the round's uniform clearing price."""

    round = serializers.DateTimeField(source="round.slot", help_text="The round's slot (start).")
    pool = serializers.CharField()
    ch = serializers.FloatField()
    price_usd_per_ch = serializers.SerializerMethodField()

    def get_price_usd_per_ch(self, allocation) -> str:
        return usd_text_from_mcents(allocation.price_mcents_per_ch)


class BidOutputSerializer(serializers.ModelSerializer):
    """A bid. Money is US dollars as exact decimal strings, as in every field of the API.

    Made from `selectors.bids_with_progress` rows, with the bids' charges (`signals.bid_charges`) in the context
    under "charges" (see `bids_output`)."""

    precision = serializers.CharField(source="pool", read_only=True)
    model_name = serializers.CharField(source="inference_model.name", read_only=True)
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    max_price_usd_per_ch = serializers.SerializerMethodField()
    budget_usd = serializers.SerializerMethodField()
    items_total = serializers.IntegerField(source="items", read_only=True, help_text="Items in the dataset.")
    items_done = serializers.IntegerField(
        read_only=True, help_text="Items whose result is validated and yours (each slice of items counted once)."
    )
    charged_usd = serializers.SerializerMethodField(
        help_text="What the job has cost so far: its validated work at the prices it cleared at while it runs (never "
        "above the budget), the final charge net of refunds once it is settled."
    )  # fmt: skip
    allocations = BidAllocationSerializer(
        source="allocations_won", many=True, read_only=True,
        help_text="The compute rounds sold you for this bid, oldest first (checks the platform bought not included).",
    )  # fmt: skip

    class Meta:
        model = Bid
        fields = (
            "id", "inference_model", "model_name", "dataset", "dataset_name", "precision_requested", "precision",
            "max_price_usd_per_ch",
            "budget_usd", "funding", "currency", "deadline", "all_or_none", "region", "items", "items_total",
            "items_done", "charged_usd", "ch_total", "ch_allocated", "status", "created_at", "closed_at",
            "result_version", "allocations",
        )  # fmt: skip
        read_only_fields = fields

    def get_max_price_usd_per_ch(self, bid) -> str:
        return usd_text_from_mcents(bid.max_price_mcents_per_ch)

    def get_budget_usd(self, bid) -> str:
        return usd_text_from_cents(bid.budget_cents)

    def get_charged_usd(self, bid) -> str:
        return usd_text_from_nc(self.context.get("charges", {}).get(bid.pk, 0))


def bids_output(bids, *, many: bool = False) -> dict | list:
    """Bids as the API gives them (rows of `selectors.bids_with_progress`), with what each has cost so far."""
    rows = list(bids) if many else [bids]
    return BidOutputSerializer(bids, many=many, context={"charges": bid_charges(rows)}).data


def bid_output(user, bid_id: int) -> dict:
    return bids_output(selectors.bid_get_for_customer(user=user, bid_id=bid_id, progress=True))


class BidListApi(APIView):
    """Your bids (newest first), and placing one. Money is US dollars as exact decimal strings ("0.015" per CH)."""

    permission_classes = [IsCustomer]

    @extend_schema_serializer(component_name="BidPlace")
    class InputSerializer(serializers.Serializer):
        # Ids and prices as large as the database holds (a larger one would overflow it: a 500); money up to Stripe's
        # largest amount.
        inference_model = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
        dataset = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
        precision = serializers.ChoiceField(choices=["auto", *Precision.values], default="auto")
        max_price_usd_per_ch = serializers.DecimalField(
            max_digits=18, decimal_places=5, min_value=Decimal("0.00001"),
            help_text="Dollars per CH, to $0.00001: you never pay more.",
        )  # fmt: skip
        budget_usd = serializers.DecimalField(
            max_digits=20, decimal_places=2, min_value=Decimal("0.01"),
            max_value=Decimal(MAX_AUTHORIZATION_CENTS) / 100,
            help_text="Dollars: the most the job may cost, set aside while it runs.",
            error_messages={"max_value": f"At most {usd_cents(MAX_AUTHORIZATION_CENTS)}: the largest payment."},
        )  # fmt: skip
        funding = serializers.ChoiceField(
            choices=Bid.Funding.choices, required=False,
            help_text="Where the budget is set aside. Omitted: the prepaid balance if it covers the budget, else the "
            "card on file. A bid the balance cannot cover yet is placed paused, and starts once a top-up covers it.",
        )  # fmt: skip
        deadline = serializers.DateTimeField()
        all_or_none = serializers.BooleanField(default=False)
        region = serializers.CharField(
            required=False, allow_blank=True, default="",
            help_text="Pin the job to one market region's cars, e.g. DE, so its data stays there: a region cars sell "
            "in (GET /api/v1/market/ lists the markets). Omitted or empty: any region, the cheapest.",
        )  # fmt: skip

    @extend_schema(responses={200: BidOutputSerializer(many=True)})
    def get(self, request):
        bids = selectors.bids_with_progress(selectors.bids_for_customer(user=request.user))[:200]
        return Response(bids_output(bids, many=True))

    @extend_schema(
        parameters=[IDEMPOTENCY_KEY],
        request=InputSerializer,
        responses={
            201: BidOutputSerializer, 400: ErrorSerializer, 402: ErrorSerializer, 409: ErrorSerializer,
            422: ErrorSerializer,
        },
    )  # fmt: skip
    @idempotent
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        # The error names the field at fault: the model first (without it, no dataset can be judged), then the dataset.
        try:
            model = selectors.inference_model_get(user=request.user, model_id=data.pop("inference_model"))
        except Http404:
            raise ApplicationError.for_field("inference_model", "No such model that you can use.") from None
        try:
            dataset = selectors.datasets_visible(user=request.user, model=model).get(pk=data.pop("dataset"))
        except Dataset.DoesNotExist:
            raise ApplicationError.for_field("dataset", "Not a dataset of this model that you can use.") from None
        data["max_price_mcents_per_ch"] = dollars_to_mcents(data.pop("max_price_usd_per_ch"))
        data["budget_cents"] = dollars_to_cents(data.pop("budget_usd"))
        bid = services.bid_place(customer=request.user, inference_model=model, dataset=dataset, **data)
        return Response(bid_output(request.user, bid.pk), status=status.HTTP_201_CREATED)


BID_ID = OpenApiParameter("bid_id", int, OpenApiParameter.PATH)


class BidDetailApi(APIView):
    """A bid with its progress and cost so far; PATCH raises its maximum price."""

    permission_classes = [IsCustomer]

    @extend_schema_serializer(component_name="BidPriceRaise")
    class InputSerializer(serializers.Serializer):
        max_price_usd_per_ch = serializers.DecimalField(
            max_digits=18, decimal_places=5, min_value=Decimal("0.00001"),
            help_text="The new maximum, dollars per CH: above the current one, and within the budget set aside.",
        )  # fmt: skip

    @extend_schema(parameters=[BID_ID], responses={200: BidOutputSerializer, 404: ErrorSerializer})
    def get(self, request, bid_id: int):
        return Response(bid_output(request.user, bid_id))

    @extend_schema(
        parameters=[BID_ID],
        request=InputSerializer,
        responses={200: BidOutputSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def patch(self, request, bid_id: int):
        bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        price = dollars_to_mcents(serializer.validated_data["max_price_usd_per_ch"])
        services.bid_price_raise(bid=bid, max_price_mcents_per_ch=price)
        return Response(bid_output(request.user, bid_id))


class BidCancelApi(APIView):
    """Cancel a waiting or running bid: nothing more is bought, cars stop its units, you pay for the work validated
    so far and the rest of the budget is released."""

    permission_classes = [IsCustomer]

    @extend_schema(
        parameters=[BID_ID],
        request=None,
        responses={200: BidOutputSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request, bid_id: int):
        services.bid_cancel(bid=selectors.bid_get_for_customer(user=request.user, bid_id=bid_id))
        return Response(bid_output(request.user, bid_id))


class MarketPoolSerializer(serializers.Serializer):
    """One pool as the last round published it, and the pool's last trade (documentation of `latest`)."""

    clearing_price_usd_per_ch = serializers.CharField(
        allow_null=True, help_text="Dollars per CH in the last round; null when nothing traded in it."
    )
    reserve_usd_per_ch = serializers.CharField()
    index_usd_per_ch = serializers.CharField(
        allow_null=True, help_text="The smoothed price index; null before a trade."
    )
    volume_ch = serializers.FloatField()
    unfilled_demand_ch = serializers.FloatField()
    supply_ch = serializers.FloatField()
    round = serializers.DateTimeField(help_text="The last round's slot.")
    last_trade_usd_per_ch = serializers.CharField(
        allow_null=True, help_text="The pool's last clearing price, in whatever round it traded; null if it never did."
    )
    last_trade_at = serializers.DateTimeField(allow_null=True, help_text="The slot of the round of the last trade.")


REGION_HELP = (
    "The market region, e.g. DE (each region's cars sell in its own rounds, at its own prices); empty: the market of "
    "cars without a region. Omitted: the blank region's market if it is running, else the first region's."
)


class MarketRegionQuery(serializers.Serializer):
    region = serializers.CharField(required=False, allow_blank=True, help_text=REGION_HELP)


class MarketApi(APIView):
    """Public: one market region's prices (`region`; `regions` lists the markets running): per pool, the last round's
    clearing price, volume and unfilled demand, the pool's last trade, and the price history of the last rounds (the
    smoothed index in `series`, the clearing prices in `prices`, null where nothing traded). The full history, with
    volumes and a time range: GET /api/v1/market/history/."""

    permission_classes = [AllowAny]
    throttle_classes = [PublicApiRateThrottle]

    @extend_schema(
        parameters=[MarketRegionQuery],
        responses={
            200: inline_serializer(
                "Market",
                {
                    "region": serializers.CharField(help_text="The market region shown; empty: cars without one."),
                    "regions": serializers.ListField(
                        child=serializers.CharField(allow_blank=True),
                        help_text="The market regions with a round in the last 24 hours, sorted (empty first).",
                    ),
                    "latest": serializers.DictField(child=MarketPoolSerializer()),
                    "history": serializers.DictField(),
                },
            ),
            400: ErrorSerializer,
        },
    )
    def get(self, request):
        query = MarketRegionQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        regions = selectors.market_regions()
        region = selectors.market_region_get(query.validated_data.get("region"), regions=regions)
        latest = {
            pool: {
                "clearing_price_usd_per_ch": usd_text_from_mcents(p["clearing_price_mcents"]),
                "reserve_usd_per_ch": usd_text_from_mcents(p["reserve_mcents"]),
                "index_usd_per_ch": usd_text_from_mcents(p["index_mcents"]),
                **{key: p[key] for key in ("volume_ch", "unfilled_demand_ch", "supply_ch", "round")},
                "last_trade_usd_per_ch": usd_text_from_mcents(p["last_trade_mcents"]),
                "last_trade_at": p["last_trade_at"],
            }
            for pool, p in selectors.market_latest(region=region).items()
        }
        history = selectors.market_history(region=region)
        for key in ("series", "prices"):
            history[key] = {
                pool: [usd_text_from_mcents(value) for value in values] for pool, values in history[key].items()
            }
        return Response({"region": region, "regions": regions, "latest": latest, "history": history})


MAX_HISTORY_PAGE = 1000


class MarketHistoryPagination(CursorPagination):
    """Newest round first, then by pool; `limit` rows a page; `next` and `previous` are links with a `cursor`.

    Keyset pagination on (slot, pool): a cursor is the position of a row, and a page is the rows strictly after it
    (or, going back, strictly before it), found on the indexes in one query however deep the page. Rounds that
    clear while a client walks the pages shift nothing: no row is skipped or seen twice. (DRF's own CursorPagination
    keys on the first ordering field alone, and a round's four rows share their slot: going back it lost rows.)"""

    page_size = 100
    page_size_query_param = "limit"
    max_page_size = MAX_HISTORY_PAGE
    invalid_cursor = "Not a cursor of this list: follow the `next` and `previous` links."

    def paginate_queryset(self, queryset, request, view=None):
        self.base_url = request.build_absolute_uri()
        limit = self.get_page_size(request)
        cursor = self.decode_cursor(request)
        self.cursor = cursor
        if cursor is None:
            rows = queryset.order_by("-slot", "pool")
        else:
            slot, pool, backwards = cursor
            if backwards:  # the rows before the position, nearest first: newer rounds, or the same round's pools before
                rows = queryset.filter(slot__gte=slot).filter(Q(slot__gt=slot) | Q(pool__lt=pool))
                rows = rows.order_by("slot", "-pool")
            else:
                rows = queryset.filter(slot__lte=slot).filter(Q(slot__lt=slot) | Q(pool__gt=pool))
                rows = rows.order_by("-slot", "pool")
        page = list(rows[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        backwards = cursor is not None and cursor[2]
        if backwards:
            page.reverse()
        self.page = page
        self.has_next = bool(page) and (backwards or more)
        self.has_previous = bool(page) and (more if backwards else cursor is not None)
        return page

    def get_paginated_response_schema(self, schema):
        paginated = super().get_paginated_response_schema(schema)
        paginated["properties"] = {
            "region": {"type": "string", "description": "The market region of the rows; empty: cars without one."},
            "regions": {
                "type": "array", "items": {"type": "string"},
                "description": "The market regions with a round in the last 24 hours, sorted (empty first).",
            },
            **paginated["properties"],
        }  # fmt: skip
        return paginated

    def get_page_size(self, request) -> int:
        try:
            return min(int(request.query_params.get(self.page_size_query_param, self.page_size)), self.max_page_size)
        except ValueError:
            return self.page_size  # the view refuses it with a 400 before this is asked

    def _link(self, row: dict, *, backwards: bool) -> str:
        text = f"{row['slot'].isoformat()}|{row['pool']}|{int(backwards)}"
        encoded = urlsafe_b64encode(text.encode()).decode()
        return replace_query_param(self.base_url, self.cursor_query_param, encoded)

    def get_next_link(self):
        return self._link(self.page[-1], backwards=False) if self.has_next else None

    def get_previous_link(self):
        return self._link(self.page[0], backwards=True) if self.has_previous else None

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            slot, pool, backwards = urlsafe_b64decode(encoded.encode("ascii")).decode().split("|")
            moment = parse_datetime(slot)
        except ValueError:  # bad base64, not ASCII, not three parts, a date that does not exist
            moment = None
        if moment is None or moment.tzinfo is None or pool not in Precision.values or backwards not in ("0", "1"):
            raise serializers.ValidationError({self.cursor_query_param: [self.invalid_cursor]})
        return moment, pool, backwards == "1"


class MarketHistoryRowSerializer(serializers.Serializer):
    round = serializers.DateTimeField(source="slot", help_text="The round's slot (when it cleared), ISO 8601.")
    region = serializers.CharField(help_text="The round's market region; empty: the cars without one.")
    pool = serializers.CharField(help_text=f"The precision pool: one of {', '.join(Precision.values)}.")
    clearing_price_usd_per_ch = serializers.SerializerMethodField(help_text="Dollars per CH; null: nothing traded.")
    reserve_usd_per_ch = serializers.SerializerMethodField(help_text="The pool's reserve in that round.")
    index_usd_per_ch = serializers.SerializerMethodField(
        help_text="The smoothed price index after that round; null before the pool's first trade."
    )
    volume_ch = serializers.FloatField(help_text="CH sold.")
    unfilled_demand_ch = serializers.FloatField(help_text="CH wanted at or above the reserve that was not sold.")
    supply_ch = serializers.FloatField(help_text="CH the cars still unsold offered in the pool.")

    def get_clearing_price_usd_per_ch(self, row) -> str | None:
        return usd_text_from_mcents(row["clearing_price_mcents"])

    def get_reserve_usd_per_ch(self, row) -> str:
        return usd_text_from_mcents(row["reserve_mcents"])

    def get_index_usd_per_ch(self, row) -> str | None:
        index = row["index_mcents"]
        return None if index is None else usd_text_from_mcents(round(index))


class MarketHistoryApi(ListAPIView):
    """Public: one market region's price history, like a spot market's: one row per round and pool, newest first,
    with the clearing price, the reserve, the smoothed index, the volume, the unfilled demand and the supply. Choose
    the market with `region` (the answer names it, and lists the markets in `regions`); filter by a time range
    (`start` inclusive, `end` exclusive) and by pool; walk the pages with the `next` links, which keep the region."""

    permission_classes = [AllowAny]
    throttle_classes = [PublicApiRateThrottle]
    pagination_class = MarketHistoryPagination
    serializer_class = MarketHistoryRowSerializer

    class InputSerializer(serializers.Serializer):
        start = serializers.DateTimeField(
            required=False,
            help_text="Rounds at or after this time (ISO 8601; encode a `+` offset as %2B, or write `Z`).",
        )
        end = serializers.DateTimeField(required=False, help_text="Rounds before this time (exclusive).")
        pool = serializers.ListField(
            child=serializers.CharField(), required=False,
            help_text=f"Only these pools ({', '.join(Precision.values)}): repeat the parameter or separate them with "
            "commas. All when omitted.",
        )  # fmt: skip
        limit = serializers.IntegerField(
            min_value=1, max_value=MAX_HISTORY_PAGE, required=False, help_text="Rows a page: 100 when omitted."
        )
        region = serializers.CharField(required=False, allow_blank=True, help_text=REGION_HELP)

        def validate_pool(self, value: list[str]) -> list[str]:
            unknown = [name for name in value if name not in Precision.values]
            if unknown:
                raise serializers.ValidationError(
                    f"No pool {', '.join(unknown)}: the pools are {', '.join(Precision.values)}."
                )
            return value

        def validate(self, attrs):
            if "start" in attrs and "end" in attrs and attrs["start"] > attrs["end"]:
                raise serializers.ValidationError({"end": ["Must not be before start."]})
            return attrs

    def _query(self) -> dict:
        params = self.request.query_params
        data = {key: params[key] for key in ("start", "end", "limit", "region") if key in params}
        if "pool" in params:
            names = [name.strip() for value in params.getlist("pool") for name in value.split(",")]
            data["pool"] = [name for name in names if name] or ["(empty)"]
        serializer = self.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def get_queryset(self):
        query = self._query()
        # Two queries a page, however long the history: the markets running (which the answer lists), and the rows.
        self.regions = selectors.market_regions()
        self.region = selectors.market_region_get(query.get("region"), regions=self.regions)
        return selectors.market_history_rows(
            start=query.get("start"), end=query.get("end"), pools=query.get("pool"), region=self.region
        ).values(
            "slot", "region", "pool", "clearing_price_mcents", "reserve_mcents", "index_mcents", "volume_ch",
            "unfilled_demand_ch", "supply_ch",
        )  # fmt: skip

    def get_paginated_response(self, data):
        # The links name the region even when the first page asked for the default one: the pages of one walk are
        # one market's, whatever markets start or stop while it goes on.
        self.paginator.base_url = replace_query_param(self.paginator.base_url, "region", self.region)
        response = super().get_paginated_response(data)
        response.data = {"region": self.region, "regions": self.regions, **response.data}
        return response

    @extend_schema(
        parameters=[InputSerializer], responses={200: MarketHistoryRowSerializer(many=True), 400: ErrorSerializer}
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class PoolEstimateSerializer(serializers.Serializer):
    precision = serializers.CharField()
    runnable = serializers.BooleanField()
    ch = serializers.FloatField(allow_null=True, help_text="CH the whole dataset takes in this precision.")
    price_usd_per_ch = serializers.CharField(help_text="The pool's last clearing price, else its reserve.")
    price_is_reserve = serializers.BooleanField(help_text="The last round set no price here: the reserve is quoted.")
    price_per_million_usd = serializers.CharField(allow_null=True, help_text="Dollars for 1,000,000 items.")
    cost_usd = serializers.CharField(allow_null=True, help_text="The whole dataset at `price_usd_per_ch`.")
    ch_on_offer = serializers.FloatField(help_text="CH the cars available now offer in this pool.")
    covers = serializers.BooleanField(help_text="Whether the CH on offer now would do the whole job.")
    warning = serializers.CharField(help_text="Why a bid here would not get work done now; empty when it would.")


@extend_schema_serializer(component_name="BidEstimate")
class BidEstimateOutputSerializer(serializers.Serializer):
    dataset = serializers.IntegerField(source="dataset.pk")
    items = serializers.IntegerField(source="dataset.item_count")
    precision_requested = serializers.CharField(source="precision")
    precision = serializers.SerializerMethodField(
        help_text="The pool a bid would run in now (auto's pick); null when nothing can run it."
    )
    cost_usd = serializers.SerializerMethodField(help_text="The whole dataset in that pool.")
    max_price_usd_per_ch = serializers.SerializerMethodField(
        help_text="The price the suggested budget is priced at: yours, else twice the estimate's (within the ceiling)."
    )
    suggested_budget_usd = serializers.SerializerMethodField(help_text="Covers every item at `max_price_usd_per_ch`.")
    below_reserve = serializers.BooleanField(help_text="Your maximum is below the pool's reserve: it never trades.")
    nothing_runs = serializers.CharField(help_text="Why no precision can run the model now; empty when one can.")
    pools = serializers.SerializerMethodField()

    def get_precision(self, estimate) -> str | None:
        return estimate.chosen.precision if estimate.chosen else None

    def get_cost_usd(self, estimate) -> str | None:
        return usd_text_from_nc(estimate.chosen.cost_nc) if estimate.chosen else None

    def get_max_price_usd_per_ch(self, estimate) -> str:
        return usd_text_from_mcents(estimate.max_price_mcents)

    def get_suggested_budget_usd(self, estimate) -> str | None:
        return usd_text_from_cents(estimate.suggested_budget_cents)

    @extend_schema_field(PoolEstimateSerializer(many=True))
    def get_pools(self, estimate) -> list[dict]:
        """Every precision's pool, cheapest first."""
        return [
            {"precision": row.precision, "runnable": row.runnable, "ch": row.ch,
             "price_usd_per_ch": usd_text_from_mcents(row.price_mcents), "price_is_reserve": row.price_is_reserve,
             "price_per_million_usd":
                 usd_text_from_nc(per_million_nc(row.price_mcents, row.ch_per_item)) if row.ch_per_item else None,
             "cost_usd": usd_text_from_nc(row.cost_nc), "ch_on_offer": row.ch_on_offer, "covers": row.supply_covers,
             "warning": row.warning}
            for row in estimate.pools
        ]  # fmt: skip


class BidEstimateApi(APIView):
    """What a bid on one of your datasets would cost in each precision's pool (at its last clearing price, else its
    reserve), the pool it would run in now, and a budget that covers its worst case: the bid form's estimate."""

    permission_classes = [IsCustomer]

    @extend_schema_serializer(component_name="BidEstimateQuery")
    class InputSerializer(serializers.Serializer):
        dataset = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
        precision = serializers.ChoiceField(choices=["auto", *Precision.values], default="auto")
        max_price_usd_per_ch = serializers.DecimalField(
            max_digits=18, decimal_places=5, min_value=Decimal("0.00001"), required=False,
            help_text="Dollars per CH: the suggested budget covers every item at it. Omitted: twice the estimate's.",
        )  # fmt: skip

    @extend_schema(
        parameters=[MODEL_ID, InputSerializer],
        responses={200: BidEstimateOutputSerializer, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request, model_id: int):
        model = selectors.inference_model_get(user=request.user, model_id=model_id)
        serializer = self.InputSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        query = serializer.validated_data
        dataset = selectors.datasets_visible(user=request.user, model=model).filter(pk=query["dataset"]).first()
        if dataset is None:
            raise ApplicationError.for_field(
                "dataset", "Not a dataset of this model that you can use.", code="not_found", status=404
            )
        price = query.get("max_price_usd_per_ch")
        estimate = selectors.bid_estimate(
            model=model, dataset=dataset, precision=query["precision"],
            max_price_mcents=dollars_to_mcents(price) if price is not None else None,
        )  # fmt: skip
        return Response(BidEstimateOutputSerializer(estimate).data)


# --- The agent's work endpoints (signed requests from cars) ------------------------------------------------------


class Base64Field(serializers.CharField):
    """Base64 text of any length. CharField scans every character in Python for UTF-16 surrogates (milliseconds for
    a result's outputs); base64 is ASCII, which str.isascii() checks at C speed (and excludes surrogates)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitSurrogateCharactersValidator)]

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not value.isascii():
            raise serializers.ValidationError("Not base64: only ASCII characters.")
        return value


class AgentLeaseApi(AgentApi):
    """Ask for a work unit: 200 with the lease (items, model to download, lease id, how long it lasts), 204 when there
    is none, 409 when the car may not work now (paused, suspended, driving, off WiFi: the message says which). A car
    that never ran a variant gets a self-test of it first, leased like a unit (its id starts "selftest-")."""

    @extend_schema(request=None, responses={200: dict, 204: None, 401: ErrorSerializer, 409: ErrorSerializer})
    def post(self, request):
        vehicle = request.user.vehicle
        unit = dispatch.unit_lease(vehicle=vehicle)
        if unit is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(dispatch.lease_payload(unit, vehicle=vehicle))


class AgentLeaseRenewApi(AgentApi):
    """The car is still working: its lease runs on for another lease length. 409 when the lease is no longer the car's
    (reissued, the car paused...), or the unit took far longer than the car's measured speed predicts: stop it."""

    @extend_schema_serializer(component_name="LeaseRenew")
    class InputSerializer(serializers.Serializer):
        unit_id = serializers.CharField(max_length=40)
        lease_id = serializers.CharField(max_length=40)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer("LeaseRenewed", {"lease_seconds": serializers.FloatField()}),
            400: ErrorSerializer, 401: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer,
        },
    )  # fmt: skip
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        seconds = dispatch.lease_renew(vehicle=request.user.vehicle, **serializer.validated_data)
        return Response({"lease_seconds": seconds})


class AgentResultApi(AgentApi):
    """A unit's outputs: a base64 `.npy` with its sha256, one output per item. 409 when the lease is no longer yours."""

    @extend_schema_serializer(component_name="UnitResult")
    class InputSerializer(serializers.Serializer):
        unit_id = serializers.CharField(max_length=40)
        lease_id = serializers.CharField(max_length=40)
        output_npy_b64 = Base64Field(max_length=200 * 1024 * 1024)
        output_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")
        items = serializers.IntegerField(min_value=0)
        seconds = serializers.FloatField(min_value=0, required=False)
        energy_wh = serializers.FloatField(min_value=0, required=False)
        emulated = serializers.BooleanField(default=False)
        runtime_version = serializers.CharField(max_length=40, allow_blank=True, default="")

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer("UnitAccepted", {"accepted": serializers.BooleanField()}),
            400: ErrorSerializer,
            401: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dispatch.unit_result(vehicle=request.user.vehicle, data=serializer.validated_data)
        # A result refused by a known-answer check is answered like any other: the car learns nothing of probes.
        return Response({"accepted": True})


class AgentFailureApi(AgentApi):
    """The car could not run a unit (download, checksum, runtime error): it is reissued, or failed after 3 tries."""

    @extend_schema_serializer(component_name="UnitFailure")
    class InputSerializer(serializers.Serializer):
        unit_id = serializers.CharField(max_length=40)
        lease_id = serializers.CharField(max_length=40)
        error = serializers.CharField(max_length=2000)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer("UnitFailureAccepted", {"accepted": serializers.BooleanField()}),
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dispatch.unit_failure(vehicle=request.user.vehicle, **serializer.validated_data)
        return Response({"accepted": True})


class BidResultApi(APIView):
    """A bid's results, in item order: `.npy` for tensor models, JSON lines (index, text, vector) for text. A
    cancelled, expired or failed bid gives the items validated before it ended (the others NaN, or a null vector;
    `X-Items-Validated` counts them), or a 409 `no_results` when it validated none."""

    permission_classes = [IsCustomer]

    @extend_schema(
        parameters=[BID_ID],
        responses={(200, "application/octet-stream"): bytes, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def get(self, request, bid_id: int):
        return bid_result_response(selectors.bid_get_for_customer(user=request.user, bid_id=bid_id))
