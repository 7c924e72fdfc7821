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

        # The owner's name is the O of a station certificate the CSMS signs (SignCertificate).
        from chargers.services.certificates import station_owner_resolver_register
        from fleet.selectors import station_owner_name

        station_owner_resolver_register(station_owner_name)

        import fleet.schema  # noqa: F401 - registers the API key scheme with drf-spectacular
