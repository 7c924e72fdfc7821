from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The CSMS below knows no fleet: the fleet subscribes to its committed telemetry. Imported here, not at the
        # top: fleet.telemetry needs the app registry, which is ready only now.
        from chargers.telemetry import telemetry_receiver_register
        from fleet.telemetry import on_telemetry_committed

        telemetry_receiver_register(on_telemetry_committed)

        import fleet.schema  # noqa: F401 - registers the API key scheme with drf-spectacular
