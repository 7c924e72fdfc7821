"""Plain data shared by the VPP core, markets and dispatch. No Django here: the optimisers run on these.

Sign convention everywhere: power in W, positive = charging (taking from the grid), negative = discharging
(injecting into the grid). Energy in Wh, as integers where stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleet.numerics.degradation import DegradationParams

REFERENCE_PACK = DegradationParams()  # frozen: safe as a shared default


@dataclass(frozen=True, slots=True)
class VehicleSnapshot:
    """What the VPP knows about one plugged-in vehicle at one instant.

    ``soc_wh``, ``floor_wh`` and ``target_wh`` are energy stored in the pack. ``floor_wh`` is the mobility floor
    (never discharged below, for any reason); ``target_wh`` is what the driver needs at ``departure``.
    Power limits are the lower of the car's and the charger's, before thermal derating.
    """

    vehicle_id: int
    capacity_wh: int
    soc_wh: int
    floor_wh: int
    max_charge_w: int
    max_discharge_w: int  # a magnitude, >= 0
    charge_efficiency: float = 0.92  # grid -> pack
    discharge_efficiency: float = 0.92  # pack -> grid
    departure: datetime | None = None
    target_wh: int = 0
    state_of_health: float = 1.0  # 0..1
    temperature_c: float = 25.0  # pack temperature
    cycles_today: float = 0.0  # equivalent full cycles so far today
    node: str = "default"  # market location / grid node
    station_id: str | None = None
    evse_id: int | None = None
    # What cycling this pack costs, $ per kWh through it: degradation.marginal_cost_per_kwh, the cycle-ageing cost
    # of a shallow cycle at this SoC and temperature under the vehicle's own rating (``degradation``); a float
    # weight for optimisers, money stays Decimal at the boundary.
    degradation_cost_per_kwh: float = 0.03125
    degradation: DegradationParams = REFERENCE_PACK  # the pack's own cost, cycle life and rated DoD

    @property
    def soc_fraction(self) -> float:
        return self.soc_wh / self.capacity_wh if self.capacity_wh else 0.0
