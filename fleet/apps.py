from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from . import schema  # noqa: F401 - registers the agent's security scheme with drf-spectacular
