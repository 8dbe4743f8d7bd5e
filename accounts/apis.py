from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from knox.models import AuthToken
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.exceptions import ApplicationError, ErrorSerializer
from core.throttling import LoginRateThrottle

from .models import User


class UserOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ("id", "username", "email", "first_name", "last_name", "role")
        read_only_fields = fields


class MeApi(APIView):
    """The authenticated user."""

    @extend_schema_serializer(component_name="MeUpdateInput")
    class InputSerializer(serializers.Serializer):
        first_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        last_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        email = serializers.EmailField(required=False)

    @extend_schema(responses={200: UserOutputSerializer, 401: ErrorSerializer})
    def get(self, request):
        return Response(UserOutputSerializer(request.user).data)

    @extend_schema(
        request=InputSerializer,
        responses={200: UserOutputSerializer, 400: ErrorSerializer, 401: ErrorSerializer},
    )
    def patch(self, request):
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "email" in data:
            data["email"] = data["email"].lower()
            if User.objects.filter(email__iexact=data["email"]).exclude(pk=request.user.pk).exists():
                raise ApplicationError(
                    "email: another account uses this address.", fields={"email": ["Already registered."]}
                )
        for name, value in data.items():
            setattr(request.user, name, value)
        if data:
            request.user.save(update_fields=list(data))
        return Response(UserOutputSerializer(request.user).data)


class TokenCreateApi(APIView):
    """Exchange a username and password for an API token (sent as `Authorization: Token <token>`)."""

    permission_classes = [AllowAny]
    authentication_classes = []
    throttle_classes = [LoginRateThrottle]

    @extend_schema_serializer(component_name="TokenCreateInput")
    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)

    @extend_schema_serializer(component_name="TokenCreateOutput")
    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        expiry = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer, responses={201: OutputSerializer, 400: ErrorSerializer, 429: ErrorSerializer}
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(request, **serializer.validated_data)
        if user is None:
            raise ApplicationError("Unable to log in with that username and password.", code="invalid_credentials")
        instance, token = AuthToken.objects.create(user)
        return Response(
            self.OutputSerializer({"token": token, "expiry": instance.expiry}).data,
            status=status.HTTP_201_CREATED,
        )


class TokenDestroyApi(APIView):
    """Revoke the token this request was made with (log out of the API)."""

    @extend_schema(request=None, responses={204: None, 401: ErrorSerializer})
    def post(self, request):
        if isinstance(request.auth, AuthToken):
            request.auth.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
