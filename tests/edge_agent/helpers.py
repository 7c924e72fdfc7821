"""Builders shared by the edge agent's tests: stations on a simulated clock, profile payloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import SimClock, iso
from edge_agent.frequency import SimulatedFrequency
from edge_agent.hardware.sim import SimulatedCar, SimulatedHardware
from edge_agent.station import Station, StationParams


def sim_station(
    tmp_path: Path, *, tick_s: float = 0.1, soc: float = 0.6, station_id: str = "edge-1", **params: Any
) -> tuple[Station, SimClock, SimulatedHardware, SimulatedFrequency]:
    """A station on a hand-driven clock with a plugged-in car whose ISO 15118 handshake already succeeded."""
    clock = SimClock()
    grid = SimulatedFrequency(sigma_hz=0.0, seed=1)
    hw = SimulatedHardware(clock=clock, grid=grid, seed=1, meter_noise_rel=0.0, meter_noise_abs_w=0.0)
    store = OutboxStore(tmp_path / f"{station_id}.sqlite3")
    st = Station(
        StationParams(station_id=station_id, tick_s=tick_s, **params),
        clock=clock,
        hardware=hw,
        grid=grid,
        outbox=Outbox(store, station_id),
    )
    st.plug_in(SimulatedCar(soc=soc, departure=st.departure_in(10)))
    st.ev_ready = True
    return st, clock, hw, grid


def profile(
    pid: int = 1,
    *,
    mode: str = "CentralSetpoint",
    purpose: str = "TxDefaultProfile",
    stack_level: int = 0,
    start: Any = None,
    **period: Any,
) -> dict[str, Any]:
    """A snake_case charging profile (what the ocpp library hands a handler) with one period."""
    sched: dict[str, Any] = {
        "id": pid,
        "charging_rate_unit": "W",
        "charging_schedule_period": [{"start_period": 0, "operation_mode": mode, **period}],
    }
    if start is not None:
        sched["start_schedule"] = iso(start)
    return {
        "id": pid,
        "stack_level": stack_level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute" if start is not None else "Relative",
        "charging_schedule": [sched],
    }


async def tick_for(st: Station, clock: SimClock, seconds: float, tick_s: float = 0.1) -> list[tuple[float, Any]]:
    """Advance the simulated clock tick by tick, running the station's loop; returns (time, command) pairs."""
    out = []
    for _ in range(round(seconds / tick_s)):
        clock.advance(tick_s)
        out.append((clock.monotonic(), await st.tick()))
    return out
