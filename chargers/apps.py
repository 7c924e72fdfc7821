from django.apps import AppConfig


class ChargersConfig(AppConfig):
    name = "chargers"
    default_auto_field = "django.db.models.BigAutoField"
