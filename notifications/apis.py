"""The customer's REST API for webhook endpoints and their delivery log."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.permissions import HasRole
from core.exceptions import ErrorSerializer

from . import selectors, services
from .models import WebhookDelivery, WebhookEndpoint

IsCustomer = HasRole.of(Role.CUSTOMER)
ENDPOINT_ID = OpenApiParameter("endpoint_id", int, OpenApiParameter.PATH)


class EndpointOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = ("id", "url", "description", "enabled", "created_at")
        read_only_fields = fields


class EndpointCreatedSerializer(EndpointOutputSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="Signs every event (the Idlefleet-Signature header). Shown only in this answer: store it now.",
    )

    class Meta(EndpointOutputSerializer.Meta):
        fields = (*EndpointOutputSerializer.Meta.fields, "secret")
        read_only_fields = fields


class DeliveryOutputSerializer(serializers.ModelSerializer):
    endpoint = serializers.IntegerField(source="endpoint_id", read_only=True)
    bid = serializers.IntegerField(source="bid_id", read_only=True, allow_null=True)

    class Meta:
        model = WebhookDelivery
        fields = ("id", "endpoint", "event_id", "event_type", "bid", "status", "attempts", "next_attempt_at",
                  "last_status_code", "last_error", "created_at", "delivered_at")  # fmt: skip
        read_only_fields = fields


class WebhookListApi(APIView):
    """Your webhook endpoints, and adding one: its signing secret is in the answer to the POST, and nowhere else."""

    permission_classes = [IsCustomer]

    class InputSerializer(serializers.Serializer):
        url = serializers.CharField(max_length=500, help_text="An http(s) URL that receives events as JSON POSTs.")
        description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(responses={200: EndpointOutputSerializer(many=True)})
    def get(self, request):
        return Response(EndpointOutputSerializer(selectors.endpoints_for_customer(user=request.user), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: EndpointCreatedSerializer, 400: ErrorSerializer})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(customer=request.user, **serializer.validated_data)
        return Response(EndpointCreatedSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class WebhookDetailApi(APIView):
    """One of your endpoints; DELETE removes it with its delivery log."""

    permission_classes = [IsCustomer]

    @extend_schema(parameters=[ENDPOINT_ID], responses={200: EndpointOutputSerializer, 404: ErrorSerializer})
    def get(self, request, endpoint_id: int):
        endpoint = selectors.endpoint_get_for_customer(user=request.user, endpoint_id=endpoint_id)
        return Response(EndpointOutputSerializer(endpoint).data)

    @extend_schema(parameters=[ENDPOINT_ID], responses={204: None, 404: ErrorSerializer})
    def delete(self, request, endpoint_id: int):
        services.endpoint_delete(
            endpoint=selectors.endpoint_get_for_customer(user=request.user, endpoint_id=endpoint_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListApi(generics.ListAPIView):
    """The deliveries of events to your endpoints, newest first (paginated: `limit`, `offset`)."""

    permission_classes = [IsCustomer]
    serializer_class = DeliveryOutputSerializer

    def get_queryset(self):
        return selectors.deliveries_for_customer(user=self.request.user)
