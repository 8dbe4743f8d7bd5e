"""The agent API (signed requests from cars) and the owner's vehicle API (session or token of a person)."""

from __future__ import annotations

from django.utils import timezone
from django.utils.functional import cached_property
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.utils.serializer_helpers import BindingDict
from rest_framework.views import APIView

from accounts.models import Role
from accounts.permissions import HasRole
from config.exceptions import ErrorSerializer

from . import selectors, services
from .agent import protocol
from .authentication import IsVehicle, VehicleSignatureAuthentication
from .models import HardwareProfile, OptInPolicy, Vehicle
from .throttling import AgentThrottling

SHA256_HEX = r"^[0-9a-f]{64}$"


def _fields_shared(serializer_class: type[serializers.Serializer]) -> BindingDict:
    """The fields of `serializer_class`, bound once to an instance of their own and then shared (see below)."""
    shared = serializer_class.__dict__.get("_shared_fields")
    if shared is None:
        prototype = serializer_class()
        shared = BindingDict(prototype)
        for name, field in prototype.get_fields().items():
            shared[name] = field
        serializer_class._shared_fields = shared
    return shared


class AgentApi(AgentThrottling, APIView):
    authentication_classes = [VehicleSignatureAuthentication]
    permission_classes = [IsVehicle]


class HeartbeatApi(AgentApi):
    """A car's state. Kept in Redis; the database is touched only when the car parks or drives off."""

    @extend_schema_serializer(component_name="HeartbeatInput")
    class InputSerializer(serializers.Serializer):
        observed_at = serializers.DateTimeField()
        clock_rate = serializers.FloatField(min_value=0.001, max_value=protocol.MAX_CLOCK_RATE, default=1.0)
        parked = serializers.BooleanField()
        plugged_in = serializers.BooleanField()
        charge_power_w = serializers.FloatField(min_value=0, max_value=protocol.MAX_POWER_W, default=0.0)
        battery_pct = serializers.FloatField(min_value=0, max_value=100)
        battery_capacity_kwh = serializers.FloatField(min_value=1, max_value=protocol.MAX_BATTERY_KWH, required=False)
        network = serializers.ChoiceField(choices=protocol.NETWORKS)
        bandwidth_down_mbps = serializers.FloatField(min_value=0, max_value=protocol.MAX_BANDWIDTH_MBPS, default=0.0)
        bandwidth_up_mbps = serializers.FloatField(min_value=0, max_value=protocol.MAX_BANDWIDTH_MBPS, default=0.0)
        latency_ms = serializers.FloatField(min_value=0, max_value=protocol.MAX_LATENCY_MS, default=0.0)
        runtime_version = serializers.CharField(max_length=40, allow_blank=True, default="")
        models_cached = serializers.ListField(
            child=serializers.RegexField(SHA256_HEX, error_messages={"invalid": "Expected a sha256 hex digest."}),
            max_length=1000,
            default=list,
        )
        computing = serializers.BooleanField(default=False)
        compute_power_w = serializers.FloatField(min_value=0, max_value=protocol.MAX_POWER_W, default=0.0)
        energy_used_today_wh = serializers.FloatField(min_value=0, max_value=1_000_000, default=0.0)

        @cached_property
        def fields(self):
            # DRF deep-copies a serializer's declared fields for every instance: 0.2 ms of CPU, a tenth of a
            # heartbeat. These fields are bound once and shared, which is safe because they keep no state between
            # calls and read no context (no nested serializer, no default that depends on the request).
            return _fields_shared(type(self))

        def validate(self, attrs):
            if attrs["observed_at"].tzinfo is None:
                raise serializers.ValidationError({"observed_at": "Include the UTC offset, e.g. 2026-11-26T07:30:00Z."})
            if attrs["parked"] is False and attrs["computing"]:
                raise serializers.ValidationError({"computing": "A car that is driving cannot be computing."})
            return attrs

    @extend_schema_serializer(component_name="HeartbeatOutput")
    class OutputSerializer(serializers.Serializer):
        received_at = serializers.DateTimeField()
        next_heartbeat_s = serializers.IntegerField()

    @extend_schema(
        request=InputSerializer, responses={200: OutputSerializer, 400: ErrorSerializer, 401: ErrorSerializer}
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        received_at = timezone.now()
        services.heartbeat_record(vehicle=request.user.vehicle, data=serializer.validated_data, received_at=received_at)
        return Response({"received_at": received_at, "next_heartbeat_s": protocol.HEARTBEAT_SECONDS})


class DepartureApi(AgentApi):
    """ "I am about to drive": the platform closes the parking session and releases the car's work at once."""

    @extend_schema_serializer(component_name="DepartureInput")
    class InputSerializer(serializers.Serializer):
        observed_at = serializers.DateTimeField()

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


# --- The owner's API ----------------------------------------------------------------------------------------------

IsOwner = HasRole.of(Role.OWNER)


class PolicySerializer(serializers.ModelSerializer):
    windows = serializers.JSONField(
        required=False,
        help_text="[[weekday 0-6 (Monday=0), start minute, end minute], ...] in the car's time zone; [] = any time.",
    )

    class Meta:
        model = OptInPolicy
        fields = (
            "enabled", "windows", "battery_floor_pct", "plugged_in_only", "max_energy_kwh_per_day",
            "max_power_w", "min_price_cents_per_ch", "leave_at", "updated_at",
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
