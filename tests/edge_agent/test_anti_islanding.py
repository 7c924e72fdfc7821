"""Passive anti-islanding (ROCOF, vector shift, must-trips): islands found within 2 s, the normal grid never tripped.

Islands are simulated as the meter sees them: the true frequency and voltage of the island plus the phase jump at
the moment it forms; each sample's frequency is the phase advance over the sample period (what a zero-crossing or
PLL meter reports). Before the island, the grid is the real 1-s recording in ``../shared/data/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import edge_agent.data
from edge_agent.config import ConfigError, load_config
from edge_agent.frequency import GridSample, ReplayFrequency, load_recording
from edge_agent.protection import Protection
from tests.edge_agent.helpers import profile, sim_station

TICK = 0.1
ISLAND_AT = 30.05  # s into the recording (between two samples)
# The 1-s recording of ../shared/data as the agent package ships it (byte for byte, gzip; edge_agent/data/README.md):
# in the repository, so a clean clone (CI) runs these tests instead of skipping them.
RECORDING = Path(edge_agent.data.__file__).parent / "grid-frequency-voltage-1s-one-day.csv.gz"


@dataclass(frozen=True)
class Island:
    """What the island does from the moment it forms (t = 0): its frequency, its voltage, its phase jump."""

    name: str
    freq: Callable[[float, float], float]  # (t since island, f at the moment) -> Hz
    volt: Callable[[float, float], float]  # (t since island, v at the moment) -> pu
    jump_deg: float = 0.0


ISLANDS = [
    Island("dead grid (no load left)", lambda t, f: 0.0, lambda t, v: 0.0),
    # A load step in an island with rotating load: ROCOF = dP f0 / (2 H S) = 4 Hz/s (e.g. 13 % deficit, H = 1 s).
    Island("load step, ROCOF 4 Hz/s", lambda t, f: f - 4.0 * t, lambda t, v: v * 0.97, jump_deg=10.0),
    Island("load step, ROCOF 4 Hz/s up", lambda t, f: f + 4.0 * t, lambda t, v: v * 1.03, jump_deg=-10.0),
    # Reactive mismatch: the voltage phase jumps to the load's angle (atan(Q/P) = 70 degrees), frequency settles.
    Island("reactive mismatch, 70 degree phase jump", lambda t, f: f + 0.2, lambda t, v: v, jump_deg=70.0),
    Island("reactive mismatch, -70 degree phase jump", lambda t, f: f - 0.2, lambda t, v: v, jump_deg=-70.0),
    # Active-power mismatch with a resistive load: V = sqrt(P_gen / P_load).
    Island("generation surplus 60 %", lambda t, f: f, lambda t, v: v * math.sqrt(1.6)),
    Island("generation deficit 85 %", lambda t, f: f, lambda t, v: v * math.sqrt(0.15)),
    # Load-matched islands: no jump, no voltage step, the frequency wanders off slowly.
    Island("load-matched, drifting up 1.5 Hz/s", lambda t, f: f + 1.5 * t, lambda t, v: v),
    Island("load-matched, drifting down 2.2 Hz/s", lambda t, f: f - 2.2 * t, lambda t, v: v),
    # ... pushed away by the inverter's own active method (Sandia frequency shift: positive feedback, tau 0.4 s).
    Island("load-matched, accelerating drift", lambda t, f: f + 0.05 * math.expm1(t / 0.4), lambda t, v: v),
]

# Inside what IEEE 1547 obliges a DER to ride through: a passive relay cannot tell these from grid disturbances.
RIDE_THROUGH = [
    Island("load-matched, drifting up 0.5 Hz/s", lambda t, f: f + 0.5 * t, lambda t, v: v),
    Island("load-matched, drifting down 0.5 Hz/s", lambda t, f: f - 0.5 * t, lambda t, v: v),
    Island("reactive mismatch, 30 degree phase jump", lambda t, f: f, lambda t, v: v, jump_deg=30.0),
]


class IslandingGrid:
    """``now -> (f, v, locked)``: the recording until ``ISLAND_AT``, then the island, sampled as a meter would."""

    def __init__(self, island: Island, *, tick_s: float = TICK) -> None:
        self.island, self.tick_s = island, tick_s
        self.replay = ReplayFrequency(path=RECORDING, offset_s=40_000.0)
        self.f_at, self.v_at = self.replay(ISLAND_AT)[:2]
        self.replay.t0 = 0.0

    def true(self, t: float) -> tuple[float, float]:
        if t < ISLAND_AT:
            return self.replay(t)[:2]
        s = t - ISLAND_AT
        return self.island.freq(s, self.f_at), self.island.volt(s, self.v_at)

    def __call__(self, now: float) -> GridSample:
        f_now, v_now = self.true(now)
        if f_now <= 0.0 or v_now <= 0.0:
            return 0.0, v_now, False
        start = now - self.tick_s
        # mean frequency over the sample period (phase advance / time), plus the jump if it happened in it
        f_mean = sum(self.true(start + (k + 0.5) * self.tick_s / 4)[0] for k in range(4)) / 4
        if start < ISLAND_AT <= now:
            f_mean += self.island.jump_deg / 360.0 / self.tick_s
        return f_mean, v_now, True


def trip_time(prot: Protection, grid: IslandingGrid, until: float) -> float | None:
    t = round(TICK, 9)
    while t <= until + 1e-9:
        if prot.update(t, *grid(t)).event == "trip":
            return t
        t = round(t + TICK, 9)
    return None


@pytest.mark.parametrize(("category", "phases"), [("I", 1), ("II", 1), ("III", 1), ("II", 3)])
@pytest.mark.parametrize("island", ISLANDS, ids=lambda i: i.name)
def test_every_island_is_detected_within_two_seconds(category: str, phases: int, island: Island) -> None:
    # given the agent's protection with the category's defaults, on the real grid recording
    prot = Protection.for_category(category, phases=phases, sample_period_s=TICK)
    grid = IslandingGrid(island)
    # when the island forms at ISLAND_AT
    tripped = trip_time(prot, grid, ISLAND_AT + 5.0)
    # then nothing tripped before it, and the agent ceased to energise within 2 s of it
    assert tripped is not None, f"{island.name}: not detected"
    assert ISLAND_AT < tripped <= ISLAND_AT + 2.0, f"{island.name}: tripped at +{tripped - ISLAND_AT:.1f} s"


@pytest.mark.parametrize("island", RIDE_THROUGH, ids=lambda i: i.name)
def test_it_rides_through_what_ieee_1547_obliges_it_to_and_leaves_such_islands_to_the_inverter(island: Island) -> None:
    # given Category II (ROCOF ride-through 2 Hz/s, a single-phase DER rides through 60 degree phase jumps)
    prot = Protection.for_category("II", phases=1, sample_period_s=TICK)
    # when the grid does something the DER must ride through for 2 s
    tripped = trip_time(prot, IslandingGrid(island), ISLAND_AT + 2.0)
    # then the agent's passive layer stays connected (detecting such an island is the inverter's active method)
    assert tripped is None, f"{island.name}: tripped by {prot.tripped_by}"


async def test_the_station_ceases_to_energise_within_two_seconds_of_an_island(tmp_path: Path) -> None:
    for n, island in enumerate((ISLANDS[3], ISLANDS[7])):
        # given a station discharging 6 kW on a healthy grid
        where = tmp_path / f"island-{n}"
        where.mkdir()
        st, clock, hw, _ = sim_station(where, tick_s=TICK)
        grid = IslandingGrid(island)
        st.grid = hw.grid = grid
        st.link.up(0.0)
        st.profiles.install(profile(mode="CentralSetpoint", setpoint=-6_000.0), 1, clock.wall())
        ceased: float | None = None
        while clock.monotonic() < ISLAND_AT + 5.0:
            clock.advance(TICK)
            await st.tick()
            now = clock.monotonic()
            if 5.0 < now < ISLAND_AT:  # (after the ramp up)
                assert hw.energized, "energised before the island"
                assert hw.power_w < -5_000.0, "discharging before the island"
            elif ceased is None and not hw.energized and hw.power_w == 0.0:
                ceased = now
        # then the inverter was de-energised (0 W) within 2 s of the island forming
        assert ceased is not None, island.name
        assert ceased - ISLAND_AT <= 2.0, island.name


def _recording_10s() -> tuple[list[float], list[float]]:
    """The 1-s recording as a 10-s logger would have stored it (mean of each 10 s)."""
    f, v = load_recording(RECORDING)
    n = len(f) // 10
    return [sum(f[i * 10 : i * 10 + 10]) / 10 for i in range(n)], [sum(v[i * 10 : i * 10 + 10]) / 10 for i in range(n)]


def _no_trips(prot: Protection, samples: Callable[[float], tuple[float, float]], seconds: float, dt: float) -> None:
    t = dt
    while t <= seconds:
        f, v = samples(t)
        status = prot.update(t, f, v)
        assert status.event != "trip", f"false trip by {prot.tripped_by} at {t:.1f} s ({f:.4f} Hz, {v:.4f} pu)"
        t += dt


@pytest.mark.parametrize("category", ["I", "II", "III"])
def test_the_one_second_recording_never_trips_at_its_own_resolution(category: str) -> None:
    # given a day of 1-s grid frequency and voltage, sampled once a second as recorded
    f, v = load_recording(RECORDING)
    prot = Protection.for_category(category, phases=3, sample_period_s=1.0)
    # then the most sensitive thresholds of the category never trip on it
    _no_trips(prot, lambda t: (f[int(t) % len(f)], v[int(t) % len(v)]), len(f) - 1.0, 1.0)


@pytest.mark.parametrize("resolution_s", [1, 10])
def test_a_day_of_normal_grid_replayed_through_the_agents_loop_causes_no_false_trip(resolution_s: int) -> None:
    # given the day recorded every second, or every 10 s, replayed (interpolated) at the agent's 100 ms tick
    f: Sequence[float]
    v: Sequence[float]
    if resolution_s == 1:
        f, v = load_recording(RECORDING)
    else:
        f, v = _recording_10s()

    def samples(t: float) -> tuple[float, float]:
        pos = t / resolution_s
        i = int(pos) % len(f)
        j = (i + 1) % len(f)
        frac = pos - math.floor(pos)
        return f[i] + (f[j] - f[i]) * frac, v[i] + (v[j] - v[i]) * frac

    # when the most sensitive settings (Category I: ROCOF 1 Hz/s; three-phase: vector shift 25 degrees) watch it
    prot = Protection.for_category("I", phases=3, sample_period_s=TICK)
    # then nothing trips all day
    _no_trips(prot, samples, (len(f) - 1) * resolution_s, TICK)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("ROCOF_HZ_PER_S", "1.5", "ride-through"),  # Category II must ride through 2 Hz/s
        ("VECTOR_SHIFT_DEG", "12", "phase jump"),  # G59's old setting: below IEEE 1547's 60 degrees
        ("ROCOF_WINDOW_S", "3", "window"),  # too slow for the 2 s islanding deadline
        ("CATEGORY", "IV", "category"),
    ],
)
def test_it_refuses_islanding_thresholds_inside_the_ride_through(setting: str, value: str, message: str) -> None:
    env = {"EDGE_AGENT_STATION_ID": "s", "EDGE_AGENT_CSMS_URL": "ws://x", f"EDGE_AGENT_PROTECTION_{setting}": value}
    with pytest.raises(ConfigError, match=message):
        load_config(None, env=env)


def test_the_category_defaults_are_just_outside_the_ride_through() -> None:
    cfg = load_config(None, env={"EDGE_AGENT_STATION_ID": "s", "EDGE_AGENT_CSMS_URL": "ws://x"})
    assert cfg.protection.resolved() == (2.5, 0.5, 65.0)
    cat1 = load_config(
        None, env={"EDGE_AGENT_STATION_ID": "s", "EDGE_AGENT_CSMS_URL": "ws://x", "EDGE_AGENT_PROTECTION_CATEGORY": "I"}
    )
    assert cat1.protection.resolved()[0] == 1.0  # G99's loss-of-mains ROCOF setting
