"""Keep a depot's net import under the planned cap, reading by reading, following the plan's charging schedule.

Arithmetic (W, + charging, as everywhere in the VPP): the site meter measures ``import = base + fleet``, where
``fleet`` is the cars' present power at the site's stations (from their own meter values; the last command where a
car has not reported lately). At each reading, with ``room = cap - margin - base`` (unlimited where no charge bills
the interval):

- ``room < 0``: the import would exceed the cap; the cars discharge ``room`` (the only case they discharge). First
  the cap is checked against what the fleet can still hold for the rest of the plan's window with the energy it
  has now (:func:`markets.peak.capacity.holdable_cap`, the fleet as one pack, this step's load the higher of the
  reading and the forecast): where it cannot (the load is above the forecast), the cap is *raised* to the lowest
  level it can hold, rather than the cars emptying early and leaving the later peak unshaved (the billed peak so
  far is sunk). A demand interval that closed over the cap raises it to that interval's mean too.
- the plan charges the cars now: they are asked for ``min(planned, room)``: charging never makes a new peak. After a
  raise the plan's schedule is stale: the cars are asked for all the room (the energy the raised cap counts on).
- otherwise, as before the plan existed: nothing while the import is under ``cap - margin``; the cars' charging is
  limited to ``room`` when it comes near, and the profiles are cleared once the cap holds with every car charging
  freely.

The allocation (``fleet.numerics.allocation.allocate``) keeps every car inside its floor, its departure need and its
derated limits, so a setpoint beyond the fleet is met as nearly as it can be.

Each command is a TxProfile of its own id (``PEAK_PROFILE_ID``) at stack level 40, under regulation's 50: where a
car also holds a regulation award, the market's setpoint prevails on its EVSE. Every profile carries ``validTo`` =
now + ``hold_s``: if the readings stop (meter, network, this process), the cars stop discharging by themselves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from chargers.fanout import Command, FanoutOutcome, calls_fanout
from fleet.numerics.allocation import allocate
from fleet.numerics.arrays import FleetArrays, power_bounds
from markets.peak.capacity import Pack, holdable_cap
from vpp.dispatch.values import Route, profile_payload

LOG = logging.getLogger(__name__)
PEAK_PROFILE_ID = 7_710
PEAK_STACK_LEVEL = 40
HOLD_READING_S = 60.0  # a site-meter reading stands for the load at most this long (as in the bill's reading)
FRESH_S = 30.0  # a car's power reading older than this is not trusted; its last command stands in


def shave_setpoint_w(*, import_w: int, fleet_w: int, threshold_w: int, margin_w: int) -> int:
    """Fleet power (W, + charging) that puts the site at ``threshold - margin`` given the base load now."""
    return threshold_w - margin_w - (import_w - fleet_w)


@dataclass
class SiteState:
    """What a shaver needs, loaded from the database in the background (``vpp.peak.selectors``)."""

    site_id: int
    threshold_w: int
    margin_w: int
    fleet: FleetArrays
    routes: list[Route]
    loaded_at: float
    plan_id: int | None = None
    plan_start: float = 0.0  # the plan's lists below, one entry per step of step_s from plan_start (epoch s)
    step_s: float = 900.0
    load_w: list[int] = field(default_factory=list)  # forecast load without the fleet
    billed: list[bool] = field(default_factory=list)  # whether a demand charge bills the step
    fleet_w: list[int] = field(default_factory=list)  # planned fleet power (+ charging)

    def step_index(self, now: float) -> int | None:
        k = math.floor((now - self.plan_start) / self.step_s) if self.step_s > 0 else -1
        return k if 0 <= k < len(self.load_w) else None


def fleet_as_pack(fleet: FleetArrays) -> Pack:
    """The plugged-in cars as one pack: a car keeps its floor (its departure target if it leaves), gives nothing
    under its floor."""
    if len(fleet) == 0:
        return Pack(0.0, 0.0, 0.0, 0.0, 0.0)
    keep = fleet.floor_wh.copy()
    leaving = np.isfinite(fleet.departure_ts)
    keep[leaving] = fleet.floor_wh[leaving].clip(min=fleet.target_wh[leaving])
    return Pack(
        energy_wh=float(fleet.soc_wh.sum()),
        min_wh=float(keep.clip(max=fleet.soc_wh).sum()),
        max_wh=float(fleet.capacity_wh.clip(min=fleet.soc_wh).sum()),
        charge_w=float(fleet.max_charge_w.sum()),
        discharge_w=float(fleet.max_discharge_w[fleet.soc_wh >= fleet.floor_wh].sum()),
        charge_efficiency=float(fleet.charge_efficiency.mean()),
        discharge_efficiency=float(fleet.discharge_efficiency.mean()),
    )


@dataclass
class ShaveStep:
    at: float
    import_w: int
    fleet_w: int
    threshold_w: int
    setpoint_w: int | None  # None: nothing asked of the cars
    achieved_w: int | None
    action: str  # "under", "shave", "charge", "release", "no-cars", "stale"
    commands: list[Command] = field(default_factory=list)
    outcome: FanoutOutcome | None = None
    reason: str = ""  # why the cars were asked this (the audit record's, with the allocation's own reason)


Sender = Callable[[Sequence[Command], float], Awaitable[FanoutOutcome]]
Recorder = Callable[[int, ShaveStep], None]  # (site id, a step that sent commands): must not block or raise


async def _fanout(commands: Sequence[Command], timeout: float) -> FanoutOutcome:  # noqa: ASYNC109
    return await calls_fanout(commands, timeout=timeout)


class SiteShaver:
    """One site's controller in this server process: ``step`` per site-meter reading, ``car_power`` per car
    reading; ``install`` swaps in a freshly loaded :class:`SiteState`."""

    def __init__(
        self, *, site_id: int, hold_s: float = 60.0, call_timeout_s: float = 1.5, max_state_age_s: float = 120.0,
        sender: Sender = _fanout, recorder: Recorder | None = None,
    ) -> None:  # fmt: skip
        self.site_id = site_id
        self.hold_s = hold_s
        self.call_timeout_s = call_timeout_s
        self.max_state_age_s = max_state_age_s
        self._send = sender
        self._record = recorder
        self.state: SiteState | None = None
        self.shaving = False
        self._power: dict[tuple[str, int], tuple[float, int]] = {}  # (station, EVSE) -> (epoch s, W)
        self._commanded: dict[tuple[str, int], int] = {}
        self.last: ShaveStep | None = None
        self._short = False  # the fleet cannot give what the cap needs (logged when it starts)
        self.unanswered: set[str] = set()  # stations that did not accept the last command sent them
        self.raised_w = 0  # the cap as raised in this plan's window (0: the plan's cap stands)
        # (demand interval index, sum of W x s, seconds covered, last reading's time and W)
        self._interval: tuple[int, float, float, float, int] | None = None

    def install(self, state: SiteState) -> None:
        if self.state is None or state.plan_id != self.state.plan_id:
            self.raised_w = 0  # a new plan starts from the cars' energy now and the billed peak so far
            self._interval = None
        self.state = state

    def cap_w(self) -> int:
        state = self.state
        return 0 if state is None else max(state.threshold_w, self.raised_w)

    def car_power(self, station_id: str, evse_id: int, at: float, power_w: int) -> None:
        self._power[(station_id, evse_id)] = (at, power_w)

    def fleet_w(self, now: float) -> int:
        """The cars' present power: measured where fresh, else the last command (0 if neither)."""
        state = self.state
        if state is None:
            return 0
        total = 0
        for route in state.routes:
            key = (route.station_id, route.evse_id)
            seen = self._power.get(key)
            if seen is not None and now - seen[0] <= FRESH_S:
                total += seen[1]
            else:
                total += self._commanded.get(key, 0)
        return total

    async def step(self, *, import_w: int, now: float | None = None) -> ShaveStep:
        now = time.time() if now is None else now
        state = self.state
        if state is None or now - state.loaded_at > self.max_state_age_s:
            # No plan we can trust (the database has been away): ask nothing; earlier profiles lapse by validTo.
            self.shaving = False
            return self._done(ShaveStep(now, import_w, 0, 0, None, None, "stale"))
        fleet_w = self.fleet_w(now)
        base = import_w - fleet_w
        k = state.step_index(now)
        billed = True if k is None else state.billed[k]
        planned = 0 if k is None or not state.fleet_w else state.fleet_w[k]
        self._track_interval(state, k, import_w, now, billed)
        cap = self.cap_w()
        if billed and base > cap - state.margin_w and len(state.fleet):
            cap = self._raise_if_unholdable(state, k, base, now)
        room = cap - state.margin_w - base if billed else math.inf
        the_cap = f"the cap {cap} W" + (f" (raised from {state.threshold_w} W)" if cap > state.threshold_w else "")
        if room < 0:
            why = f"import {import_w} W (cars {fleet_w} W) is {-int(room)} W over {the_cap} less {state.margin_w} W"
            return await self._command(ShaveStep(now, import_w, fleet_w, cap, int(room), None, "shave", reason=why))
        if planned > 0 or (self.raised_w and room < math.inf):
            # the plan's charging (all the room after a raise: the raised cap counts on it), never over the cap
            want = min(planned, room) if not self.raised_w else room
            why = (
                f"the plan charges {planned} W now; the room under {the_cap} is {int(room)} W"
                if not self.raised_w
                else f"{the_cap}: the cars take all the room under it, {int(room)} W"
            )
            return await self._command(ShaveStep(now, import_w, fleet_w, cap, int(want), None, "charge", reason=why))
        if not self.shaving and import_w <= cap - state.margin_w:
            return self._done(ShaveStep(now, import_w, fleet_w, cap, None, None, "under"))
        if room == math.inf:
            why = "no demand charge bills this interval: the cars charge freely"
            return await self._release(ShaveStep(now, import_w, fleet_w, cap, None, None, "release", reason=why))
        why = f"import {import_w} W (cars {fleet_w} W) near {the_cap}: charging limited to the room, {int(room)} W"
        return await self._command(ShaveStep(now, import_w, fleet_w, cap, int(room), None, "shave", reason=why))

    def _track_interval(self, state: SiteState, k: int | None, import_w: int, now: float, billed: bool) -> None:
        """The mean import of each demand interval as the readings come (each holds until the next, at most 60 s, as
        the bill's own reading of samples); one that closed over the cap, at least 90 % covered, is a billed peak
        already: the cap rises to it (holding under it avoids nothing and only wears packs)."""
        if k is None:
            self._interval = None
            return
        if self._interval is not None:
            done, total, covered, last_t, last_w = self._interval
            end = state.plan_start + (done + 1) * state.step_s
            dt = max(0.0, min(min(now, end) - last_t, HOLD_READING_S))
            total, covered = total + last_w * dt, covered + dt
            if done != k:
                mean = round(total / covered) if covered else 0
                if state.billed[done] and covered >= 0.9 * state.step_s and mean > self.cap_w():
                    LOG.warning("site %s: demand interval closed at %d W over the cap %d W; the cap rises to it",
                                self.site_id, mean, self.cap_w())  # fmt: skip
                    self.raised_w = mean
                total, covered = 0.0, 0.0
            self._interval = (k, total, covered, now, import_w)
        else:
            self._interval = (k, 0.0, 0.0, now, import_w)

    def _raise_if_unholdable(self, state: SiteState, k: int | None, base: int, now: float) -> int:
        """The cap, raised (for the rest of the plan's window) to the lowest the fleet can still hold with the energy
        it has now if it cannot hold the present one: this step at the higher of the load seen and the forecast."""
        cap = self.cap_w()
        if k is None:
            return cap
        loads = [max(base, state.load_w[k]), *state.load_w[k + 1 :]]
        left_h = max(state.plan_start + (k + 1) * state.step_s - now, 1.0) / 3600.0
        hours = [left_h] + [state.step_s / 3600.0] * (len(loads) - 1)
        holdable = holdable_cap(load_w=loads, billed=state.billed[k:], hours=hours, pack=fleet_as_pack(state.fleet))
        if holdable + state.margin_w > cap:
            level = logging.INFO if self.raised_w else logging.WARNING  # the first raise of a plan is the news
            LOG.log(level, "site %s: load %d W; the cars cannot hold %d W to the end of the plan; cap raised to %d W",
                    self.site_id, base, cap, holdable + state.margin_w)  # fmt: skip
            self.raised_w = holdable + state.margin_w
            return self.raised_w
        return cap

    async def _command(self, step: ShaveStep) -> ShaveStep:
        """Ask the cars for ``step.setpoint_w`` (allocated within their bounds); cleared instead when that is charging
        freely, or if there are no cars."""
        state = self.state
        assert state is not None
        assert step.setpoint_w is not None
        if len(state.fleet) == 0:
            step.action = "no-cars"
            return self._done(step)
        now, setpoint = step.at, step.setpoint_w
        bounds = power_bounds(state.fleet, now=now, duration_s=self.hold_s)
        if step.action == "shave" and setpoint >= int(bounds.hi.sum()):
            step.action = "release"
            step.reason = f"import {step.import_w} W: the cap {step.threshold_w} W holds with every car charging freely"
            return await self._release(step)
        allocation = allocate(state.fleet, setpoint, now=now, duration_s=self.hold_s)
        step.achieved_w = allocation.achieved_w
        if allocation.reason:
            step.reason = f"{step.reason}; {allocation.reason}"
        valid_to = datetime.fromtimestamp(now + self.hold_s, UTC)
        commands = []
        for route, p, lo, hi in zip(
            state.routes, allocation.power_w.tolist(), bounds.lo.tolist(), bounds.hi.tolist(), strict=True
        ):
            payload = profile_payload(route, int(p), int(lo), int(hi), valid_to=valid_to)
            payload["chargingProfile"].update(id=PEAK_PROFILE_ID, stackLevel=PEAK_STACK_LEVEL)
            commands.append(Command(route.station_id, "SetChargingProfile", payload))
            self._commanded[(route.station_id, route.evse_id)] = int(p)
        if not self.shaving:
            LOG.info("site %s: import %d W, cap %d W: %s", self.site_id, step.import_w, step.threshold_w, step.action)
        self.shaving = True
        step.commands = commands
        step.outcome = await self._send(commands, self.call_timeout_s)
        self._check_answers(step.outcome)
        short = step.action == "shave" and not allocation.feasible
        if short and not self._short:  # once per episode, not once per reading
            LOG.warning("site %s: fleet can give %d of %d W asked: %s", self.site_id, allocation.achieved_w, setpoint,
                        allocation.reason)  # fmt: skip
        self._short = short
        return self._done(step)

    async def _release(self, step: ShaveStep) -> ShaveStep:
        state = self.state
        assert state is not None
        if self.shaving:
            step.commands = [
                Command(r.station_id, "ClearChargingProfile", {"chargingProfileId": PEAK_PROFILE_ID})
                for r in state.routes
            ]
            step.outcome = await self._send(step.commands, self.call_timeout_s)
            self._check_answers(step.outcome)
            LOG.info("site %s: import back under the cap with the cars charging freely; released", self.site_id)
        else:
            step.action = "under"
        self.shaving = False
        self._commanded.clear()
        return self._done(step)

    def _check_answers(self, outcome: FanoutOutcome) -> None:
        """Log the stations that did not accept (timeout, offline, an error, Rejected) when that set changes, not per
        reading: the next reading sends again, and a car whose command did not land counts at its measured power."""
        failed = {r.station_id for r in outcome.results if r.status != "result" or r.answer == "Rejected"}
        for station_id in failed:
            self._commanded = {k: v for k, v in self._commanded.items() if k[0] != station_id}
        if failed != self.unanswered:
            if failed:
                LOG.warning("site %s: no acceptance from %s; sending again on the next reading", self.site_id,
                            ", ".join(f"{r.station_id} ({r.answer})" for r in outcome.results
                                      if r.station_id in failed))  # fmt: skip
            else:
                LOG.info("site %s: every station accepts again", self.site_id)
        self.unanswered = failed

    def _done(self, step: ShaveStep) -> ShaveStep:
        self.last = step
        if step.commands and self._record is not None:
            try:  # the audit record of a decision that reached the cars; its failure must not stop shaving
                self._record(self.site_id, step)
            except Exception:
                LOG.exception("site %s: the step's audit record was not handed over", self.site_id)
        return step
