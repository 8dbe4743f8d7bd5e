from django.urls import path

from . import views

app_name = "ops"
urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("staff/", views.dashboard, name="dashboard"),
    path("staff/health/", views.health_fragment, name="health"),
    path("healthz/", views.healthz, name="healthz"),
]
