from django.urls import path

from . import apis

urlpatterns = [
    path("me/", apis.MeApi.as_view(), name="api-me"),
    path("auth/token/", apis.TokenCreateApi.as_view(), name="api-token-create"),
    path("auth/logout/", apis.TokenDestroyApi.as_view(), name="api-token-logout"),
]
