"""The agent API (signed requests from cars) and the owner's vehicle API (session or token of a person)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import pydantic
from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from pydantic_core import PydanticCustomError
from redis.exceptions import RedisError
from rest_framework import exceptions, serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.permissions import HasRole
from core.exceptions import ErrorSerializer
from core.money import dollars_to_mcents, usd_text_from_mcents
from core.parsers import JSONParser
from core.validation import validated

from . import selectors, services, state_store
from .agent import hardware, protocol
from .authentication import (
    IsVehicle,
    Unavailable,
    VehicleSignatureAuthentication,
    admission_enforce,
    failure_counted,
    redis_failed,
)
from .models import HardwareProfile, OptInPolicy, Vehicle

SHA256_HEX = r"^[0-9a-f]{64}$"
_SHA256_HEX = re.compile(SHA256_HEX)


def _sha256_checked(value: str) -> str:
    if not _SHA256_HEX.match(value):
        raise PydanticCustomError("sha256", "Expected a sha256 hex digest.")
    return value


class JsonAnswers(DefaultContentNegotiation):
    """Agents read JSON only: the answer is JSON without parsing the Accept header (30 µs of a heartbeat)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AgentApi(APIView):
    """The endpoints a car's agent calls: signed requests (authentication, admission and rate limits:
    fleet/authentication.py), in JSON."""

    authentication_classes = [VehicleSignatureAuthentication]
    permission_classes = [IsVehicle]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonAnswers

    def handle_exception(self, exc):
        # Every refused signature, key, clock or nonce counts once against the client's address and the key it
        # claims, wherever it was found: in authentication, or in a view that admits its requests itself
        # (HeartbeatApi).
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            exc = failure_counted(self.request, exc)
        elif isinstance(exc, RedisError):
            # Redis is down or unreachable: 503 (the agent retries it), and this process rechecks what it may have
            # missed meanwhile once Redis answers (fleet/authentication.py).
            redis_failed()
            exc = Unavailable()
        return super().handle_exception(exc)


SHA256 = Annotated[
    str, pydantic.AfterValidator(_sha256_checked), pydantic.WithJsonSchema({"type": "string", "pattern": SHA256_HEX})
]


def car_clock_problem(at: datetime) -> str | None:
    """Why a time a car reports (aware) cannot be its clock now, or None. It must lie within
    AGENT_CLOCK_MAX_SKEW_SECONDS of the platform's clock: the signature window in production, so a car cannot date
    its state in year 9999 or 0001; years in the demo and the tests, whose simulated cars live a day in minutes."""
    skew = settings.AGENT_CLOCK_MAX_SKEW_SECONDS
    now = timezone.now()
    try:
        off = abs((at - now).total_seconds())
    except OverflowError:
        off = float("inf")
    if off <= skew:
        return None
    return f"More than {skew:,} seconds from the platform's clock ({now:%Y-%m-%dT%H:%M:%SZ}): check the car's clock."


def _car_clock_checked(value: datetime) -> datetime:
    # The car's clock, with its offset; kept in UTC from here on, as every other time in the platform is.
    problem = car_clock_problem(value)
    if problem:
        raise PydanticCustomError("clock_skew", problem)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past year 9999 in UTC (only with a skew of millennia)
        raise PydanticCustomError("clock_skew", "Out of range in UTC.") from None


OBSERVED_AT = Annotated[pydantic.AwareDatetime, pydantic.AfterValidator(_car_clock_checked)]


class HeartbeatInput(pydantic.BaseModel):
    """A car's state, as its agent reports it every HEARTBEAT_SECONDS. Validated by pydantic (core/validation.py):
    a heartbeat is nearly all of a fleet's requests."""

    model_config = pydantic.ConfigDict(allow_inf_nan=False, title="HeartbeatInput")

    observed_at: OBSERVED_AT
    clock_rate: float = pydantic.Field(1.0, ge=0.001, le=protocol.MAX_CLOCK_RATE)
    parked: bool
    plugged_in: bool
    charge_power_w: float = pydantic.Field(0.0, ge=0, le=protocol.MAX_POWER_W)
    battery_pct: float = pydantic.Field(ge=0, le=100)
    battery_capacity_kwh: float = pydantic.Field(None, ge=1, le=protocol.MAX_BATTERY_KWH)  # None: not reported
    network: Literal[protocol.NETWORKS]
    bandwidth_down_mbps: float = pydantic.Field(0.0, ge=0, le=protocol.MAX_BANDWIDTH_MBPS)
    bandwidth_up_mbps: float = pydantic.Field(0.0, ge=0, le=protocol.MAX_BANDWIDTH_MBPS)
    latency_ms: float = pydantic.Field(0.0, ge=0, le=protocol.MAX_LATENCY_MS)
    runtime_version: str = pydantic.Field("", max_length=40)
    models_cached: list[SHA256] = pydantic.Field(default_factory=list, max_length=1000)
    computing: bool = False
    compute_power_w: float = pydantic.Field(0.0, ge=0, le=protocol.MAX_POWER_W)
    energy_used_today_wh: float = pydantic.Field(0.0, ge=0, le=1_000_000)

    def as_state(self) -> dict[str, Any]:
        """The fields as fleet.services.heartbeat_record takes them (an unreported capacity is left out)."""
        data = self.model_dump()
        if data["battery_capacity_kwh"] is None:
            del data["battery_capacity_kwh"]
        return data


class HeartbeatApi(AgentApi):
    """A car's state. Kept in Redis; the database is touched only when the car parks or drives off. Admitted in the
    same Redis round trip as the state is stored."""

    admission_deferred = True  # see fleet.authentication.VehicleSignatureAuthentication

    @extend_schema_serializer(component_name="HeartbeatOutput")
    class OutputSerializer(serializers.Serializer):
        received_at = serializers.DateTimeField()
        next_heartbeat_s = serializers.FloatField(
            help_text="Real seconds until the next heartbeat the platform asks for: often while the car holds work or "
            "is about to get some, rarely while it holds none and expects none."
        )

    @extend_schema(
        request=HeartbeatInput, responses={200: OutputSerializer, 400: ErrorSerializer, 401: ErrorSerializer}
    )
    def post(self, request):
        principal = request.user
        try:
            data = validated(HeartbeatInput, request)
            if not data.parked and data.computing:
                raise exceptions.ValidationError({"computing": ["A car that is driving cannot be computing."]})
        except exceptions.ValidationError:
            # Admitted all the same (its nonce claimed, counted against the car's rate), or refused for what it is.
            admission_enforce(request, principal, state_store.agent_admit(principal.admission))
            raise
        received_at = timezone.now()
        admitted = services.heartbeat_record(
            vehicle=principal.vehicle, data=data.as_state(), received_at=received_at, admission=principal.admission
        )
        admission_enforce(request, principal, admitted)  # refused: nothing was stored
        return Response({"received_at": received_at, "next_heartbeat_s": admitted.next_heartbeat_s})


class DepartureApi(AgentApi):
    """ "I am about to drive": the platform closes the parking session and releases the car's work at once."""

    @extend_schema_serializer(component_name="DepartureInput")
    class InputSerializer(serializers.Serializer):
        observed_at = serializers.DateTimeField()

        def validate_observed_at(self, value: datetime) -> datetime:
            problem = car_clock_problem(value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer("DepartureOutput", {"released_work_units": serializers.IntegerField()}),
            400: ErrorSerializer,
            401: ErrorSerializer,
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        released = services.vehicle_depart(
            vehicle=request.user.vehicle,
            observed_at=serializer.validated_data["observed_at"],
            received_at=timezone.now(),
        )
        return Response({"released_work_units": released})


class HardwareApi(AgentApi):
    """What the car's compute can do (fleet/agent/hardware.py), sent when the agent starts. The platform derives the
    car's compute class from it: which numerics its INT8 kernels have."""

    @extend_schema_serializer(component_name="HardwareInput")
    class InputSerializer(serializers.Serializer):
        arch = serializers.RegexField(r"^[a-z0-9_]{1,16}$", help_text='e.g. "x86_64", "arm64".')
        isa = serializers.ListField(
            child=serializers.RegexField(r"^[a-z0-9_]{1,32}$"), max_length=hardware.MAX_FEATURES, allow_empty=True,
            help_text='CPU features as Linux names them, e.g. ["avx2", "avx512_vnni"].',
        )  # fmt: skip
        cpu_model = serializers.CharField(max_length=200, allow_blank=True, default="")
        cpus = serializers.IntegerField(min_value=1, max_value=4096)
        accelerator = serializers.CharField(max_length=80, allow_blank=True, default="")
        providers = serializers.ListField(
            child=serializers.RegexField(r"^[A-Za-z0-9_]{1,64}$"), max_length=hardware.MAX_PROVIDERS, default=list
        )
        runtime_version = serializers.CharField(max_length=40, allow_blank=True, default="")
        fp8 = serializers.BooleanField(default=False)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer(
                "HardwareAccepted", {"compute_class": serializers.CharField(), "description": serializers.CharField()}
            ),
            400: ErrorSerializer,
            401: ErrorSerializer,
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        vehicle = services.vehicle_compute_report(
            vehicle=request.user.vehicle, report=serializer.validated_data, at=timezone.now()
        )
        return Response(
            {"compute_class": vehicle.compute_class, "description": hardware.CLASS_NAMES[vehicle.compute_class]}
        )


class AgentMeApi(AgentApi):
    """Which car the credential belongs to, as its agent reads it at start: its name and the time zone it was
    registered with (the car's local day: its energy counter, a simulated car's routine), unless `--tz` overrides it."""

    @extend_schema_serializer(component_name="AgentMe")
    class OutputSerializer(serializers.Serializer):
        vehicle_id = serializers.IntegerField()
        display_name = serializers.CharField()
        time_zone = serializers.CharField(
            help_text='The IANA time zone the car was registered with, e.g. "Europe/Berlin".'
        )

    @extend_schema(responses={200: OutputSerializer, 401: ErrorSerializer})
    def get(self, request):
        vehicle = selectors.vehicle_for_agent(vehicle_id=request.user.vehicle.pk)
        return Response(
            {"vehicle_id": vehicle.pk, "display_name": vehicle.display_name, "time_zone": vehicle.time_zone}
        )


# --- The owner's API ----------------------------------------------------------------------------------------------

IsOwner = HasRole.of(Role.OWNER)


class UsdPerChField(serializers.DecimalField):
    """A price in dollars per CH as an exact decimal string ("0.015"), to $0.00001, held in m¢ per CH: money in the
    API is US dollars as decimal strings. Digits bounded, so that no price overflows the database (a 500)."""

    default_error_messages = {
        "invalid": 'A price in dollars per CH is required, e.g. "0.015".',
        "min_value": "At least $0.00 per CH.",
        "max_digits": "At most $9,999,999.99999 per CH.",
        "max_whole_digits": "At most $9,999,999.99999 per CH.",
        "max_decimal_places": "To $0.00001 per CH at most (5 decimal places).",
    }

    def __init__(self, **kwargs):
        # The bound is checked on the m¢ this field returns: 0 is 0 in either unit.
        super().__init__(max_digits=12, decimal_places=5, min_value=Decimal(0), **kwargs)

    def to_internal_value(self, data) -> int:
        return dollars_to_mcents(super().to_internal_value(data))

    def to_representation(self, value) -> str:
        return usd_text_from_mcents(value)


class PolicySerializer(serializers.ModelSerializer):
    min_price_usd_per_ch = UsdPerChField(
        source="min_price_mcents_per_ch",
        required=False,
        help_text="The lowest price per CH the car sells at, in dollars (it never sells below its electricity cost).",
    )
    windows = serializers.JSONField(
        required=False,
        help_text="[[weekday 0-6 (Monday=0), start minute, end minute], ...] in the car's time zone; [] = any time.",
    )

    class Meta:
        model = OptInPolicy
        fields = (
            "enabled", "windows", "battery_floor_pct", "plugged_in_only", "max_energy_kwh_per_day",
            "max_power_w", "min_price_usd_per_ch", "leave_at", "updated_at",
        )  # fmt: skip
        read_only_fields = ("updated_at",)


class VehicleOutputSerializer(serializers.ModelSerializer):
    hardware = serializers.SlugRelatedField(slug_field="name", read_only=True)
    policy = PolicySerializer(read_only=True)

    class Meta:
        model = Vehicle
        fields = (
            "id", "display_name", "hardware", "time_zone", "region", "battery_capacity_kwh",
            "energy_price_cents_per_kwh", "status", "status_reason", "vin_last4", "created_at", "policy",
        )  # fmt: skip
        read_only_fields = fields


class HardwareField(serializers.SlugRelatedField):
    """A hardware profile by name. A name with a NUL character is refused before the lookup, which PostgreSQL would
    answer with an error (a 500) rather than with no row."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("invalid")
        return super().to_internal_value(data)


class VehicleListApi(APIView):
    permission_classes = [IsOwner]

    @extend_schema_serializer(component_name="VehicleRegisterInput")
    class InputSerializer(serializers.Serializer):
        display_name = serializers.CharField(max_length=80)
        hardware = HardwareField(slug_field="name", queryset=HardwareProfile.objects.all())
        time_zone = serializers.CharField(max_length=64, default="UTC")
        region = serializers.CharField(max_length=64, allow_blank=True, default="")
        battery_capacity_kwh = serializers.FloatField(min_value=5, max_value=300, default=75.0)
        energy_price_cents_per_kwh = serializers.DecimalField(
            max_digits=6, decimal_places=2, min_value=0, max_value=500, required=False
        )
        vin = serializers.CharField(max_length=17, allow_blank=True, default="", write_only=True)

    @extend_schema_serializer(component_name="VehicleRegistered")
    class CreatedSerializer(VehicleOutputSerializer):
        credential = serializers.CharField(help_text="The car's signing key. Shown once: it is not stored.")

        class Meta(VehicleOutputSerializer.Meta):
            fields = (*VehicleOutputSerializer.Meta.fields, "credential")

    @extend_schema(responses={200: VehicleOutputSerializer(many=True)})
    def get(self, request):
        vehicles = selectors.vehicles_for_owner(owner=request.user)
        return Response(VehicleOutputSerializer(vehicles, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer, 400: ErrorSerializer})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        vehicle, credential = services.vehicle_register(owner=request.user, **serializer.validated_data)
        data = VehicleOutputSerializer(vehicle).data
        data["credential"] = credential.to_token()
        return Response(data, status=status.HTTP_201_CREATED)


VEHICLE_ID = OpenApiParameter("vehicle_id", int, OpenApiParameter.PATH)


class VehicleDetailApi(APIView):
    permission_classes = [IsOwner]

    @extend_schema(parameters=[VEHICLE_ID], responses={200: VehicleOutputSerializer, 404: ErrorSerializer})
    def get(self, request, vehicle_id: int):
        vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
        return Response(VehicleOutputSerializer(vehicle).data)


class VehiclePolicyApi(APIView):
    permission_classes = [IsOwner]

    @extend_schema(parameters=[VEHICLE_ID], responses={200: PolicySerializer, 404: ErrorSerializer})
    def get(self, request, vehicle_id: int):
        vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
        return Response(PolicySerializer(vehicle.policy).data)

    @extend_schema(
        parameters=[VEHICLE_ID],
        request=PolicySerializer,
        responses={200: PolicySerializer, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def patch(self, request, vehicle_id: int):
        vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
        serializer = PolicySerializer(vehicle.policy, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        policy = services.policy_update(policy=vehicle.policy, **serializer.validated_data)
        return Response(PolicySerializer(policy).data)


class VehicleCredentialApi(APIView):
    """Issue a new credential (the old one stops working) or revoke the car's credential."""

    permission_classes = [IsOwner]

    @extend_schema(
        parameters=[VEHICLE_ID],
        request=None,
        responses={
            201: inline_serializer("NewCredential", {"credential": serializers.CharField()}),
            404: ErrorSerializer,
        },
    )
    def post(self, request, vehicle_id: int):
        vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
        credential = services.credential_issue(vehicle=vehicle)
        return Response({"credential": credential.to_token()}, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[VEHICLE_ID], responses={204: None, 404: ErrorSerializer})
    def delete(self, request, vehicle_id: int):
        vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
        for credential in vehicle.credentials.filter(revoked_at__isnull=True):
            services.credential_revoke(credential=credential)
        return Response(status=status.HTTP_204_NO_CONTENT)
