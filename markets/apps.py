from django.apps import AppConfig


class MarketsConfig(AppConfig):
    name = "markets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The CSMS knows no depot: site meters are picked out of its committed telemetry here.
        from chargers.telemetry import telemetry_receiver_register
        from markets.peak.telemetry import on_telemetry_committed

        telemetry_receiver_register(on_telemetry_committed)
