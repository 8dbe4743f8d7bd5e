from django.urls import path

from . import apis

urlpatterns = [
    path("me/", apis.MeApi.as_view(), name="api-me"),
    path("auth/token/", apis.TokenCreateApi.as_view(), name="api-token-create"),
    path("auth/logout/", apis.TokenDestroyApi.as_view(), name="api-token-logout"),
    path("auth/tokens/", apis.TokenListApi.as_view(), name="api-token-list"),
    path("auth/tokens/<int:token_id>/", apis.TokenDetailApi.as_view(), name="api-token-detail"),
]
