"""A SunSpec site meter for tests and benches (models 201-204), laid out by pysunspec2 from the official model
definitions exactly as the inverter in ``sunspec_inverter`` (the same server and register image; nothing from the
agent's driver). Its points are what the test sets, raw, with their scale factors.

Run it alone (``python -m tests.edge_agent.sunspec_meter PORT``) to point an agent's ``[site_meter]`` at it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tests.edge_agent.sunspec_inverter import BASE, SunSpecInverter

# A three-phase depot importing 152.34 kW: raw values and the scale factors pysunspec2 encodes beside them.
METER_INITIAL: dict[str, Any] = {
    "A": 2_207, "A_SF": -1, "PhV": 2_301, "PPV": 3_985, "V_SF": -1, "Hz": 5_000, "Hz_SF": -2,
    "W": 15_234, "W_SF": 1, "TotWhImp": 1_234_567, "TotWhExp": 890, "TotWh_SF": 1,
}  # fmt: skip


class SunSpecMeterDevice(SunSpecInverter):
    """Models 1 (common) and one meter model; no controls, nothing changes unless the test sets it."""

    def __init__(self, model: int = 203, *, values: dict[str, Any] | None = None, base: int = BASE) -> None:
        self.model = model
        points = {**METER_INITIAL, **(values or {})}
        super().__init__((1, model), base=base, values={(model, k): v for k, v in points.items() if v is not None})
        for name, value in points.items():
            if value is None:  # "not implemented": the type's own marker, encoded by pysunspec2
                self.set(model, name, None)

    def update(self, now: float | None = None) -> None:
        """A meter follows no setpoint."""

    def set_power(self, raw_w: int) -> None:
        self.set(self.model, "W", raw_w)


async def _main(port: int) -> None:
    meter = await SunSpecMeterDevice().start(port, host="0.0.0.0")
    print(f"SunSpec meter on port {port}: models {sorted(meter.at)}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 5021))
