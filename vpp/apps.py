from django.apps import AppConfig


class VppConfig(AppConfig):
    name = "vpp"
    verbose_name = "VPP core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Real-time peak shaving follows the site meters in the CSMS's committed telemetry (vpp.peak.service).
        from chargers.telemetry import telemetry_receiver_register
        from vpp.dispatch.reserve_intake import on_telemetry_resume
        from vpp.peak.service import on_telemetry_committed

        telemetry_receiver_register(on_telemetry_committed)
        # A reserve event in force when this process (re)starts is resumed (vpp.dispatch.reserve).
        telemetry_receiver_register(on_telemetry_resume)
