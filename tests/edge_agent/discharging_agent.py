"""An edge agent process that discharges 5 kW through the SunSpec driver until it is killed.

For the killed-agent test and bench: the station, its loop and the SunSpec driver are the agent's own; only the
CSMS is left out (the link counts as up and a CentralSetpoint profile is installed at start).

    python -m tests.edge_agent.discharging_agent PORT [--revert 2] [--var-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import SystemClock
from edge_agent.frequency import SimulatedFrequency
from edge_agent.hardware.sim import SimulatedCar
from edge_agent.hardware.sunspec import SunSpecHardware
from edge_agent.runner import tick_forever
from edge_agent.station import Station, StationParams
from tests.edge_agent.helpers import profile

SETPOINT_W = -5_000.0


async def run(port: int, revert_s: float, var_dir: Path, tick_s: float = 0.1) -> None:
    clock = SystemClock()
    store = OutboxStore(var_dir / "agent.sqlite3", durable=False)
    grid = SimulatedFrequency(sigma_hz=0.0)
    hw = SunSpecHardware(host="127.0.0.1", port=port, revert_s=revert_s)
    st = Station(StationParams(station_id="kill-1", tick_s=tick_s), clock=clock, hardware=hw, grid=grid,
                 outbox=Outbox(store, "kill-1"))  # fmt: skip
    st.plug_in(SimulatedCar(soc=0.8, departure=st.departure_in(24), iso15118_latency_s=0.0))
    st.link.up(clock.monotonic())
    st.profiles.install(profile(mode="CentralSetpoint", setpoint=SETPOINT_W), 1, clock.wall())
    await tick_forever([st], store, tick_s, stop=asyncio.Event())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--revert", type=float, default=2.0)
    parser.add_argument("--var-dir", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="discharging-agent-") as tmp:
        asyncio.run(run(args.port, args.revert, Path(args.var_dir or tmp)))


if __name__ == "__main__":
    main()
