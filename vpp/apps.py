from django.apps import AppConfig


class VppConfig(AppConfig):
    name = "vpp"
    verbose_name = "VPP core"
    default_auto_field = "django.db.models.BigAutoField"
