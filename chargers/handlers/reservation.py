"""Reservation (OCPP block H): ReservationStatusUpdate, recorded as a station event."""

from __future__ import annotations

from chargers.handlers.common import event_handler
from chargers.models import StationEventKind

reservation_status_record = event_handler(StationEventKind.RESERVATION_STATUS, "reservationUpdateStatus")
