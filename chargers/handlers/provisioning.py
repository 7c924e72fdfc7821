"""Provisioning (OCPP block B): BootNotification and NotifyReport (the device model)."""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_iso
from chargers.jobs import StationRef
from chargers.models import DEVICE_VARIABLE_KEY, BootStatus, DeviceVariable, Station, StationEventKind
from chargers.ocpp_j import OcppError

# TriggerMessage's requestedMessage -> the station action it makes the station send.
_TRIGGERED = {
    "SignChargingStationCertificate": "SignCertificate",
    "SignV2GCertificate": "SignCertificate",
    "SignCombinedCertificate": "SignCertificate",
}


def boot_triggers(action: str, payload: dict[str, Any]) -> frozenset[str]:
    """The station actions a CSMS call asks for, which a Pending station may send (OCPP 2.0.1 B02.FR.09)."""
    if action == "TriggerMessage":
        requested = str(payload.get("requestedMessage", ""))
        return frozenset({_TRIGGERED.get(requested, requested)})
    if action in ("GetBaseReport", "GetReport"):
        return frozenset({"NotifyReport"})
    return frozenset()


def boot_refusal_check(status: str, action: str, triggered: set[str] | frozenset[str], message_id: str) -> None:
    """SecurityError for a CALL the station may not send in its registration state.

    OCPP 2.0.1/2.1 B03.FR.07: while Rejected, anything but BootNotification. B02.FR.09: while Pending, anything but
    BootNotification and what the CSMS itself asked for (TriggerMessage, GetBaseReport, GetReport): the CSMS may
    call a Pending station and use its answers, only the station's own initiatives are refused.
    """
    if status == BootStatus.ACCEPTED or action == "BootNotification":
        return
    if status == BootStatus.PENDING and action in triggered:
        return
    raise OcppError("SecurityError", f"the station is {status}: only BootNotification is accepted", message_id)


def station_boot(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """BootNotification: record what the station is, answer with its configured registration status.

    From the batch's station rows (``chargers.batch.stations_load``), written at flush with the batch's other
    station changes: a reconnect storm boots a thousand stations in a few batches.
    """
    row = ctx.stations.get(station.pk)
    if row is None:
        raise Station.DoesNotExist(f"station {station.station_id} is gone")
    cs = payload["chargingStation"]
    modem = cs.get("modem", {})
    ctx.station_change(
        station.pk,
        vendor=cs["vendorName"],
        model=cs["model"],
        serial_number=cs.get("serialNumber", ""),
        firmware_version=cs.get("firmwareVersion", ""),
        last_boot_at=ctx.now,
        last_boot_reason=payload["reason"],
        ocpp_version=station.version,
    )
    ctx.event(
        station,
        StationEventKind.BOOTED,
        summary=f"{payload['reason']}: {row.boot_status}",
        reason=payload["reason"],
        status=row.boot_status,
        firmware=cs.get("firmwareVersion", ""),
        modem=modem,
    )
    return {"currentTime": datetime_iso(ctx.now), "interval": row.heartbeat_interval, "status": row.boot_status}


def device_report_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """NotifyReport: upsert each reported variable attribute of the device model.

    An attribute reported twice in one message is stored once, as its last report says: PostgreSQL refuses an
    upsert that would change the same row twice, and the whole batch would roll back with it.
    """
    rows: dict[tuple[Any, ...], DeviceVariable] = {}
    for item in payload.get("reportData", []):
        component, variable = item["component"], item["variable"]
        evse = component.get("evse") or {}
        characteristics = item.get("variableCharacteristics") or {}
        for attribute in item["variableAttribute"]:
            row = DeviceVariable(
                station_id=station.pk,
                component=component["name"],
                component_instance=component.get("instance", ""),
                evse_id=evse.get("id", 0),
                connector_id=evse.get("connectorId", 0),
                variable=variable["name"],
                variable_instance=variable.get("instance", ""),
                attribute_type=attribute.get("type", "Actual"),
                value=attribute.get("value", ""),
                mutability=attribute.get("mutability", ""),
                data_type=characteristics.get("dataType", ""),
                unit=characteristics.get("unit", ""),
                updated_at=ctx.now,
            )
            rows[tuple(getattr(row, f"{name}_id" if name == "station" else name) for name in DEVICE_VARIABLE_KEY)] = row
    if rows:
        DeviceVariable.objects.bulk_create(
            list(rows.values()),
            update_conflicts=True,
            unique_fields=DEVICE_VARIABLE_KEY,
            update_fields=["value", "mutability", "data_type", "unit", "updated_at"],
        )
    return {}
