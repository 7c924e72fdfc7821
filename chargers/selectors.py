"""Reads of CSMS data for views, the dashboard and other apps."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from chargers.models import MessageLog, MeterValue, Station, StationEvent, Transaction, TransactionEvent


def stations_online() -> QuerySet[Station]:
    return Station.objects.filter(online=True)


def station_by_id(*, station_id: str) -> Station | None:
    return Station.objects.filter(station_id=station_id).first()


def station_transactions_active(*, station_id: str) -> QuerySet[Transaction]:
    return Transaction.objects.filter(station__station_id=station_id, active=True)


def transaction_events_in_order(*, station_id: str, transaction_id: str) -> QuerySet[TransactionEvent]:
    """A transaction's events by seqNo: the order the station produced them, whatever order they arrived in."""
    return TransactionEvent.objects.filter(
        transaction__station__station_id=station_id, transaction__transaction_id=transaction_id
    ).order_by("seq_no")


def meter_values_between(
    *, station_id: str, measurand: str, start: datetime, end: datetime, evse_id: int | None = None
) -> QuerySet[MeterValue]:
    rows = MeterValue.objects.filter(
        station__station_id=station_id, measurand=measurand, timestamp__gte=start, timestamp__lt=end
    )
    if evse_id is not None:
        rows = rows.filter(evse_id=evse_id)
    return rows.order_by("timestamp")


def meter_value_latest(*, station_id: str, measurand: str, evse_id: int | None = None) -> MeterValue | None:
    rows = MeterValue.objects.filter(station__station_id=station_id, measurand=measurand)
    if evse_id is not None:
        rows = rows.filter(evse_id=evse_id)
    return rows.order_by("-timestamp", "-id").first()


def station_events_recent(*, station_id: str, limit: int = 100) -> list[StationEvent]:
    return list(StationEvent.objects.filter(station__station_id=station_id).order_by("-timestamp")[:limit])


def messages_search(*, station_id: str | None = None, action: str | None = None, message_id: str | None = None):
    rows = MessageLog.objects.select_related("station").order_by("-created_at")
    if station_id:
        rows = rows.filter(station__station_id=station_id)
    if action:
        rows = rows.filter(action=action)
    if message_id:
        rows = rows.filter(message_id=message_id)
    return rows
