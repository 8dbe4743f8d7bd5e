from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from marketplace import views as marketplace_views

api_v1 = [
    path("", include("fleet.api_urls")),
    path("", include("accounts.api_urls")),
    path("", include("marketplace.api_urls")),
    path("", include("notifications.api_urls")),
]

urlpatterns = [
    # First: the agent's requests (heartbeats above all) are most of the traffic, and URLs resolve in this order.
    path("api/v1/", include(api_v1)),
    path("", include("ops.urls")),
    path("", include("accounts.urls")),
    path("customer/", include("marketplace.urls")),
    path("market/", marketplace_views.market, name="market"),
    path("", include("fleet.urls")),
    path("", include("billing.urls")),
    path("", include("notifications.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]

# The JSON error shape for every path under /api/ that Django answers itself; the HTML pages elsewhere.
handler400 = "core.exceptions.bad_request"
handler403 = "core.exceptions.permission_denied"
handler404 = "core.exceptions.page_not_found"
handler500 = "core.exceptions.server_error"
