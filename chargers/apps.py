from django.apps import AppConfig


class ChargersConfig(AppConfig):
    name = "chargers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chargers import checks  # noqa: F401 - registers the deployment checks
