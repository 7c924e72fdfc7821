"""DER control (OCPP 2.1): NotifyDERAlarm, NotifyDERStartStop and ReportDERControl.

Controls go to stations as CSMS-initiated calls (SetDERControl).
"""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_parse
from chargers.jobs import StationRef
from chargers.models import DerAlarm, DerControl, ProfileSource, StationEventKind


def der_alarm_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    DerAlarm.objects.create(
        station_id=station.pk,
        control_type=payload["controlType"],
        grid_event_fault=payload.get("gridEventFault", ""),
        alarm_ended=bool(payload.get("alarmEnded", False)),
        timestamp=datetime_parse(payload["timestamp"], ctx.now),
        received_at=ctx.now,
        extra_info=payload.get("extraInfo", ""),
    )
    return {}


def der_start_stop_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    DerControl.objects.filter(station_id=station.pk, control_id=payload["controlId"]).update(started=payload["started"])
    if payload.get("supersededIds"):
        DerControl.objects.filter(station_id=station.pk, control_id__in=payload["supersededIds"]).update(
            is_superseded=True
        )
    ctx.event(
        station,
        StationEventKind.DER_START_STOP,
        at=datetime_parse(payload["timestamp"], ctx.now),
        summary=f"{payload['controlId']} {'started' if payload['started'] else 'stopped'}",
        **payload,
    )
    return {}


# ReportDERControl list key -> DERControlEnumType for blocks that do not name their own type.
_DER_BLOCKS = {
    "curve": None,
    "enterService": "EnterService",
    "fixedPFAbsorb": "FixedPFAbsorb",
    "fixedPFInject": "FixedPFInject",
    "fixedVar": "FixedVar",
    "freqDroop": "FreqDroop",
    "gradient": "Gradients",
    "limitMaxDischarge": "LimitMaxDischarge",
}


def der_controls_report_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for key, control_type in _DER_BLOCKS.items():
        for item in payload.get(key, []):
            rows.append(
                DerControl(
                    station_id=station.pk,
                    control_id=item["id"],
                    control_type=control_type or item["curveType"],
                    is_default=bool(item.get("isDefault", False)),
                    is_superseded=bool(item.get("isSuperseded", False)),
                    source=ProfileSource.REPORTED,
                    payload=item,
                    recorded_at=ctx.now,
                )
            )
    DerControl.objects.bulk_create(rows)
    return {}
