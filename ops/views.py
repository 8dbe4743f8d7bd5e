from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_safe

from accounts.permissions import staff_required
from fleet.selectors import fleet_overview_cached

from .selectors import platform_health_get, user_counts_by_role


def home(request):
    return render(request, "ops/home.html")


@require_safe
@cache_control(public=True, max_age=86400)
def favicon(request):
    """/favicon.ico, which browsers and bookmarks ask for whatever the page's <link rel="icon"> (the SVG) says:
    served here with a 200, from the static files, in production as in the demo."""
    with open(finders.find("favicon.ico"), "rb") as icon:
        return HttpResponse(icon.read(), content_type="image/vnd.microsoft.icon")


@staff_required
def dashboard(request):
    return render(
        request,
        "ops/dashboard.html",
        {"health": platform_health_get(), "user_counts": user_counts_by_role(), "overview": fleet_overview_cached()},
    )


@staff_required
def health_fragment(request):
    """The platform-health card alone, polled by htmx on the staff dashboard."""
    return render(request, "ops/_platform_health.html", {"health": platform_health_get()})


def _check(probe) -> str:
    try:
        probe()
    except Exception as error:  # a health check reports every failure instead of raising it
        return f"error: {error.__class__.__name__}"
    return "ok"


@never_cache
def healthz(request):
    """Liveness for load balancers: 200 when the database and Redis answer, 503 otherwise."""

    def db_probe():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    checks = {
        "database": _check(db_probe),
        "redis": _check(lambda: cache.get("healthz")),
    }
    checks["workers"] = "ok" if platform_health_get().alive else "no recent heartbeat"
    healthy = checks["database"] == "ok" and checks["redis"] == "ok"
    return JsonResponse({"status": "ok" if healthy else "degraded", "checks": checks}, status=200 if healthy else 503)
