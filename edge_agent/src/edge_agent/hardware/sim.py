"""A physically plausible charger + car simulator (the default driver).

- SoC integrates power with separate charge and discharge efficiencies (grid <-> pack).
- Pack: lumped thermal mass heated by I^2 R losses, cooled to ambient through a thermal resistance.
- Inverter: heated by its conversion losses ((1 - eta) |P|), cooled through a heat sink; a cooling fault raises
  its thermal resistance (for over-temperature demos).
- The inverter slews towards its command at a finite rate; it cannot deliver beyond the pack's floor or ceiling.
- The meter reads the true power plus Gaussian noise (0.2 % of reading + 5 W, inside a 1 % accuracy class), and
  integrates true power into its import/export registers.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from edge_agent.clock import Clock
from edge_agent.hardware import Measurement

GridReading = Callable[[float], tuple[float, float, bool]]  # now -> (f_hz, v_pu, pll_locked)


@dataclass
class SimulatedCar:
    """A bidirectional EV: pack, limits, the driver's plan and its ISO 15118 response latency."""

    capacity_wh: float = 60_000.0
    soc: float = 0.5
    target_soc: float = 0.8
    departure: datetime | None = None
    max_charge_w: float = 11_000.0
    max_discharge_w: float = 11_000.0
    pack_temp_c: float = 25.0
    pack_resistance_ohm: float = 0.08
    pack_voltage_v: float = 400.0
    pack_heat_capacity_j_per_k: float = 150_000.0
    pack_thermal_resistance_k_per_w: float = 0.05
    iso15118_latency_s: float = 0.03
    model: str = "SimEV"

    async def power_delivery(self, power_w: float) -> bool:
        """ISO 15118 PowerDeliveryReq -> PowerDeliveryRes after the car's latency."""
        await asyncio.sleep(self.iso15118_latency_s)
        return True


@dataclass
class SimulatedHardware:
    """Charger inverter + meter + (optionally) a plugged-in car, advanced on the injected clock."""

    clock: Clock
    grid: GridReading | None = None
    car: SimulatedCar | None = None
    nominal_voltage_v: float = 240.0
    nominal_hz: float = 60.0
    inverter_eta: float = 0.97
    inverter_slew_w_per_s: float = 50_000.0
    inverter_temp_c: float = 30.0
    inverter_heat_capacity_j_per_k: float = 2_000.0
    inverter_thermal_resistance_k_per_w: float = 0.12
    ambient_c: float = 25.0
    cooling_fault: bool = False
    meter_noise_rel: float = 0.002
    meter_noise_abs_w: float = 5.0
    seed: int | None = None
    power_w: float = 0.0  # actual AC power
    command_w: float = 0.0
    energized: bool = True
    energy_import_wh: float = 0.0
    energy_export_wh: float = 0.0
    _last: float | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- physics -------------------------------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        """Integrate physics from the last update to ``now`` (sub-stepped so long gaps stay stable)."""
        if self._last is None:
            self._last = now
            return
        dt_total = now - self._last
        self._last = now
        while dt_total > 1e-9:
            dt = min(dt_total, 1.0)
            dt_total -= dt
            self._step(dt)

    def _step(self, dt: float) -> None:
        car = self.car
        target = self.command_w if (self.energized and car is not None) else 0.0
        slew = self.inverter_slew_w_per_s * dt
        p = self.power_w + max(-slew, min(slew, target - self.power_w))
        if car is not None:
            eta = self.inverter_eta
            pack_w = p * eta if p >= 0 else p / eta  # energy into (+) or out of (-) the pack
            d_wh = pack_w * dt / 3600.0
            new_soc = car.soc + d_wh / car.capacity_wh
            if new_soc < 0.0 or new_soc > 1.0:  # the BMS stops the current at empty and full
                p, d_wh, new_soc = 0.0, 0.0, car.soc
            car.soc = new_soc
            current_a = pack_w / car.pack_voltage_v
            heat = current_a * current_a * car.pack_resistance_ohm
            cool = (car.pack_temp_c - self.ambient_c) / car.pack_thermal_resistance_k_per_w
            car.pack_temp_c += (heat - cool) * dt / car.pack_heat_capacity_j_per_k
        else:
            p = 0.0
        self.power_w = p
        if p >= 0:
            self.energy_import_wh += p * dt / 3600.0
        else:
            self.energy_export_wh += -p * dt / 3600.0
        r_th = self.inverter_thermal_resistance_k_per_w * (4.0 if self.cooling_fault else 1.0)
        loss = (1.0 - self.inverter_eta) * abs(p)
        cool = (self.inverter_temp_c - self.ambient_c) / r_th
        self.inverter_temp_c += (loss - cool) * dt / self.inverter_heat_capacity_j_per_k

    # -- Hardware protocol ---------------------------------------------------------------------------------------
    def read_now(self) -> Measurement:
        now = self.clock.monotonic()
        self.advance(now)
        f_hz, v_pu, locked = self.grid(now) if self.grid is not None else (self.nominal_hz, 1.0, True)
        noise = self._rng.gauss(0.0, self.meter_noise_rel * abs(self.power_w) + self.meter_noise_abs_w)
        car = self.car
        return Measurement(
            power_w=self.power_w + (noise if self.power_w != 0.0 else 0.0),
            energy_import_wh=self.energy_import_wh,
            energy_export_wh=self.energy_export_wh,
            soc=car.soc if car else 0.0,
            pack_temp_c=car.pack_temp_c if car else self.ambient_c,
            inverter_temp_c=self.inverter_temp_c,
            voltage_v=v_pu * self.nominal_voltage_v,
            frequency_hz=f_hz,
            pll_locked=locked,
            capacity_wh=car.capacity_wh if car else 0.0,
            energized=self.energized,
        )

    def apply_now(self, power_w: float, energize: bool) -> None:
        self.advance(self.clock.monotonic())
        self.command_w = power_w
        self.energized = energize
        if not energize:
            self.power_w = 0.0  # contactors open: current stops at once

    async def read(self) -> Measurement:
        return self.read_now()

    async def apply(self, power_w: float, energize: bool) -> None:
        self.apply_now(power_w, energize)

    async def close(self) -> None:
        return None
