from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from knox.models import AuthToken
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.exceptions import ApplicationError, ErrorSerializer
from core.throttling import LoginRateThrottle

from .models import ApiToken, User
from .selectors import api_token_get_for_user, api_tokens_for_user
from .services import API_TOKEN_DEFAULT_NAME, api_token_create, api_token_revoke


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
        name = serializers.CharField(
            max_length=ApiToken._meta.get_field("name").max_length, required=False, allow_blank=True,
            help_text=f"What the token is for, shown on the tokens page (default: {API_TOKEN_DEFAULT_NAME!r}).",
        )  # fmt: skip

    @extend_schema_serializer(component_name="TokenCreateOutput")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField(help_text="Revoke it with DELETE /api/v1/auth/tokens/{id}/.")
        name = serializers.CharField()
        token = serializers.CharField(help_text="Shown only in this answer: only its digest is stored.")
        expiry = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer, responses={201: OutputSerializer, 400: ErrorSerializer, 429: ErrorSerializer}
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        user = authenticate(request, username=data["username"], password=data["password"])
        if user is None:
            raise ApplicationError("Unable to log in with that username and password.", code="invalid_credentials")
        api_token, token = api_token_create(user=user, name=data.get("name", API_TOKEN_DEFAULT_NAME))
        output = {"id": api_token.pk, "name": api_token.name, "token": token, "expiry": api_token.auth_token.expiry}
        return Response(self.OutputSerializer(output).data, status=status.HTTP_201_CREATED)


class TokenDestroyApi(APIView):
    """Revoke the token this request was made with (log out of the API)."""

    @extend_schema(request=None, responses={204: None, 401: ErrorSerializer})
    def post(self, request):
        if isinstance(request.auth, AuthToken):
            request.auth.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenOutputSerializer(serializers.Serializer):
    """A token as its owner sees it later: never the token itself, which only its creation answered with."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    created = serializers.DateTimeField(source="auth_token.created")
    last_used = serializers.DateTimeField(
        source="last_used_at", allow_null=True, help_text="Recorded at most once a minute; null: never used."
    )
    expiry = serializers.DateTimeField(source="auth_token.expiry", allow_null=True)


class TokenListApi(APIView):
    """The API tokens of the authenticated user that still work, newest first."""

    @extend_schema(responses={200: ApiTokenOutputSerializer(many=True), 401: ErrorSerializer})
    def get(self, request):
        return Response(ApiTokenOutputSerializer(api_tokens_for_user(user=request.user), many=True).data)


class TokenDetailApi(APIView):
    """One of the authenticated user's API tokens."""

    @extend_schema(request=None, responses={204: None, 401: ErrorSerializer, 404: ErrorSerializer})
    def delete(self, request, token_id: int):
        """Revoke the token: requests with it get 401 from now on."""
        api_token_revoke(api_token=api_token_get_for_user(user=request.user, token_id=token_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
