"""Handlers of station-initiated OCPP messages, one module per functional block of OCPP 2.0.1 / 2.1.

The action -> handler table is ``chargers.handlers.registry.HANDLERS``. Each handler has the signature
``(ctx: BatchContext, station: StationRef, payload) -> CALLRESULT payload`` (``common.Handler``), runs inside the
group-commit writer's batch transaction (``chargers.apply``) and queues its rows on ``ctx``.

- ``provisioning``: BootNotification, NotifyReport
- ``availability``: Heartbeat, StatusNotification
- ``authorization``: Authorize
- ``transactions``: TransactionEvent
- ``meter_values``: MeterValues
- ``smart_charging``: NotifyEVChargingNeeds, NotifyChargingLimit, ClearedChargingLimit, ReportChargingProfiles,
  NotifyEVChargingSchedule, PullDynamicScheduleUpdate
- ``der``: NotifyDERAlarm, NotifyDERStartStop, ReportDERControl
- ``firmware_diagnostics``: FirmwareStatusNotification, LogStatusNotification, NotifyEvent, OpenPeriodicEventStream
- ``security``: SecurityEventNotification, SignCertificate
- ``plug_and_charge``: GetCertificateStatus, Get15118EVCertificate, GetCertificateChainStatus, and Authorize with a
  contract certificate (through ``authorization``); their network half runs in the consumer (``registry.PREFETCH``)
- ``reservation``: ReservationStatusUpdate
- ``data_transfer``: DataTransfer
- ``tariff_cost``: VatNumberValidation

Any other valid action is kept in the message log only (``registry.log_only``).
"""
