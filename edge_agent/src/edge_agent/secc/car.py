"""The car as the station sees it when it talks ISO 15118-20, and the session-log codes of the SECC. No Josev here.

``Iso15118Car`` stands where the simulated car stands (``Station.car``): the station reads the same attributes
(capacity, SoC, limits, target SoC, departure) whichever car it has. Here they are what the car reported, and the
ISO 15118 handshake is the car's own PowerDeliveryReq, not the agent's simulated one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from edge_agent import sessionlog as slog
from edge_agent.hardware.sim import SimulatedCar

if TYPE_CHECKING:
    from edge_agent.station import Station

# The car's departure moving by more than this is news for the CSMS (a new NotifyEVChargingNeeds). The car sends
# its departure as seconds from now, rounded to the second, in every loop message: jitter is not news.
DEPARTURE_NEWS_S = 60.0
RESPONSE_LIMIT_S = 0.25  # PowerDeliveryRes must reach the car within 250 ms of its PowerDeliveryReq
LOOP_PERIOD_ASSUMED_S = RESPONSE_LIMIT_S  # the car's charge-loop period until two of its requests were seen
LOOP_PERIODS_KEPT = 20

# Session-log codes of the SECC (README, "ISO 15118-20 (the car's side)").
ISO15118_SESSION_ERROR = "ISO15118_SESSION_ERROR"  # ended on an error that is not a timeout (EXI, sequence, TCP)
ISO15118_SLOW_RESPONSE = slog.EVSE_ERR_TIMEOUT  # our PowerDeliveryRes later than 250 ms: the car may give up


@dataclass
class EnergyRequests:
    """ISO 15118-20 Dynamic mode energy requests, Wh (negative: the car can give that much)."""

    target_wh: float | None = None
    min_wh: float | None = None
    max_wh: float | None = None
    min_v2x_wh: float | None = None
    max_v2x_wh: float | None = None


@dataclass
class Iso15118Car(SimulatedCar):
    """A real car behind ISO 15118-20: every field is what it last reported."""

    evcc_id: str = ""
    min_soc: float | None = None
    reported_power_w: float = 0.0  # EVPresentActivePower
    requests: EnergyRequests | None = None
    handshake_by_agent: bool = False  # the car sends its own PowerDeliveryReq
    model: str = "ISO15118-20"


@dataclass
class LoopTiming:
    """The car's charge-loop period, for the fail-safe's lead: a command reaches the car in the response to its
    next AC_ChargeLoopReq (up to one period away) and the car reports having followed it in the request after
    that (one more). The lead is two of the longest periods among the last ``LOOP_PERIODS_KEPT``."""

    last_at: float | None = None
    periods: list[float] = field(default_factory=list)

    def request(self, at: float) -> float:
        """A charge-loop request decoded at ``at`` (monotonic s); returns the fail-safe lead, seconds."""
        if self.last_at is not None:
            self.periods = [*self.periods[-(LOOP_PERIODS_KEPT - 1) :], at - self.last_at]
        self.last_at = at
        return self.lead_s()

    def lead_s(self) -> float:
        return 2.0 * max(self.periods, default=LOOP_PERIOD_ASSUMED_S)


def departure_moved(old: datetime | None, new: datetime | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs((new - old).total_seconds()) > DEPARTURE_NEWS_S


def report_departure(station: Station, car: Iso15118Car, seconds_from_now: int | None) -> None:
    """The car's departure (seconds from now); the CSMS hears of it when it moved."""
    new = station.clock.wall() + timedelta(seconds=seconds_from_now) if seconds_from_now else None
    if not departure_moved(car.departure, new):
        return
    old, car.departure = car.departure, new
    slog.log_event(station.id, "ev_departure_changed", old=old.isoformat() if old else None,
                   new=new.isoformat() if new else None)  # fmt: skip
    if station.car is car and station.tx is not None:
        station.queue_charging_needs()


def session_end_code(state: str, reason: str) -> str | None:
    """The session-log code for how a session with the car ended; None for an orderly SessionStop."""
    if "Timeout" in reason:
        return slog.EVSE_ERR_TIMEOUT
    if state == "SessionStop" or "SessionStop" in state:
        return None
    return ISO15118_SESSION_ERROR


def log_session_end(station_id: str, state: str, reason: str) -> None:
    code = session_end_code(state, reason)
    slog.log_event(station_id, "ev_session_ended", code=code, level=logging.WARNING if code else logging.INFO,
                   state=state, reason=reason[:300])  # fmt: skip


def power_limit(reported: float | None, current: float) -> float:
    """The car's power limit after a message: what it reported (a magnitude, W), else the one in force. A reported 0
    is a limit like any other (the car allows no more discharge), never "not given"."""
    if reported is None:
        return current
    return abs(float(reported))
