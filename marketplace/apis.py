"""The customer's REST API for inference models and datasets."""

from __future__ import annotations

from django.http import FileResponse, Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.permissions import HasRole
from config.exceptions import ErrorSerializer
from fleet.authentication import IsVehicle, VehicleSignatureAuthentication

from . import selectors, services, storage
from .models import Dataset, InferenceModel, PrecisionVariant

IsCustomer = HasRole.of(Role.CUSTOMER)
MODEL_ID = OpenApiParameter("model_id", int, OpenApiParameter.PATH)


class VariantOutputSerializer(serializers.ModelSerializer):
    meets_tolerance = serializers.SerializerMethodField()

    class Meta:
        model = PrecisionVariant
        fields = (
            "precision", "method", "status", "progress", "size_bytes", "ch_per_item", "emulated", "metrics",
            "items_per_s", "error", "meets_tolerance",
        )  # fmt: skip
        read_only_fields = fields

    def get_meets_tolerance(self, variant) -> bool | None:
        return selectors.variant_passes(variant)


class InferenceModelOutputSerializer(serializers.ModelSerializer):
    variants = VariantOutputSerializer(many=True, read_only=True)
    auto_precision = serializers.SerializerMethodField()

    class Meta:
        model = InferenceModel
        fields = (
            "id", "name", "description", "kind", "is_catalogue", "onnx_sha256", "onnx_size", "output_name", "inputs",
            "outputs", "opset", "metric", "tolerance", "status", "rejection_reason", "created_at", "variants",
            "auto_precision",
        )  # fmt: skip
        read_only_fields = fields

    def get_auto_precision(self, model) -> str | None:
        variant = selectors.variant_pick_auto(model=model)
        return variant.precision if variant else None


class DatasetOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ("id", "name", "format", "item_count", "holdout_count", "size_bytes", "sha256", "created_at")
        read_only_fields = fields


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
        models = selectors.inference_models_visible(user=request.user).prefetch_related("variants")
        return Response(InferenceModelOutputSerializer(models, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={202: InferenceModelOutputSerializer, 400: ErrorSerializer, 413: ErrorSerializer},
    )
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
        return Response(
            DatasetOutputSerializer(selectors.datasets_visible(user=request.user, model=model), many=True).data
        )

    @extend_schema(
        parameters=[MODEL_ID],
        request=InputSerializer,
        responses={201: DatasetOutputSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 413: ErrorSerializer},
    )
    def post(self, request, model_id: int):
        model = selectors.inference_model_get(user=request.user, model_id=model_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dataset = services.dataset_upload(owner=request.user, inference_model=model, **serializer.validated_data)
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class AgentArtifactApi(APIView):
    """A car downloads a model variant or tokenizer by sha256 (signed GET). Only files the platform serves for
    work are reachable: a ready variant's file or a ready model's tokenizer, never an arbitrary stored file."""

    authentication_classes = [VehicleSignatureAuthentication]
    permission_classes = [IsVehicle]
    throttle_classes = []

    @extend_schema(
        parameters=[OpenApiParameter("sha256", str, OpenApiParameter.PATH)],
        responses={(200, "application/octet-stream"): bytes, 404: ErrorSerializer},
    )
    def get(self, request, sha256: str):
        servable = (
            PrecisionVariant.objects.filter(sha256=sha256, status=PrecisionVariant.Status.READY).exists()
            or InferenceModel.objects.filter(tokenizer_sha256=sha256, status=InferenceModel.Status.READY).exists()
        )
        if not servable or not storage.artifact_exists(sha256):
            raise Http404("No such artifact.")
        response = FileResponse(storage.artifact_open(sha256), content_type="application/octet-stream")
        response["X-Content-SHA256"] = sha256
        return response
