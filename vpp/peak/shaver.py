"""Keep a depot's net import under the planned cap, reading by reading.

Arithmetic (W, + charging, as everywhere in the VPP): the site meter measures ``import = base + fleet``, where
``fleet`` is the cars' present power at the site's stations (from their own meter values; the last command where a
car has not reported lately). The cars are asked for

    fleet setpoint = cap - margin - (import - fleet)

whenever the import comes within ``margin`` of the cap, and for as long as that setpoint is below what the cars
would draw charging flat out; the allocation (``fleet.numerics.allocation.allocate``) keeps every car inside its
floor, its departure need and its derated limits, so a setpoint beyond the fleet is met as nearly as it can be
(and the site goes over the cap by the rest: the plan said what was possible, the real load may exceed it). When
the cap holds with every car charging freely again, the profiles are cleared.

Each command is a TxProfile of its own id (``PEAK_PROFILE_ID``) at stack level 40, under regulation's 50: where a
car also holds a regulation award, the market's setpoint prevails on its EVSE. Every profile carries ``validTo`` =
now + ``hold_s``: if the readings stop (meter, network, this process), the cars stop discharging by themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chargers.fanout import Command, FanoutOutcome, calls_fanout
from fleet.numerics.allocation import allocate
from fleet.numerics.arrays import FleetArrays, power_bounds
from vpp.dispatch.values import Route, profile_payload

LOG = logging.getLogger(__name__)
PEAK_PROFILE_ID = 7_710
PEAK_STACK_LEVEL = 40
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


@dataclass
class ShaveStep:
    at: float
    import_w: int
    fleet_w: int
    threshold_w: int
    setpoint_w: int | None  # None: nothing asked of the cars
    achieved_w: int | None
    action: str  # "under", "shave", "release", "no-cars", "stale"
    commands: list[Command] = field(default_factory=list)
    outcome: FanoutOutcome | None = None


Sender = Callable[[Sequence[Command], float], Awaitable[FanoutOutcome]]


async def _fanout(commands: Sequence[Command], timeout: float) -> FanoutOutcome:  # noqa: ASYNC109
    return await calls_fanout(commands, timeout=timeout)


class SiteShaver:
    """One site's controller in this server process: ``step`` per site-meter reading, ``car_power`` per car
    reading; ``install`` swaps in a freshly loaded :class:`SiteState`."""

    def __init__(
        self, *, site_id: int, hold_s: float = 60.0, call_timeout_s: float = 1.5, max_state_age_s: float = 120.0,
        sender: Sender = _fanout,
    ) -> None:  # fmt: skip
        self.site_id = site_id
        self.hold_s = hold_s
        self.call_timeout_s = call_timeout_s
        self.max_state_age_s = max_state_age_s
        self._send = sender
        self.state: SiteState | None = None
        self.shaving = False
        self._power: dict[tuple[str, int], tuple[float, int]] = {}  # (station, EVSE) -> (epoch s, W)
        self._commanded: dict[tuple[str, int], int] = {}
        self.last: ShaveStep | None = None
        self._short = False  # the fleet cannot give what the cap needs (logged when it starts)
        self.unanswered: set[str] = set()  # stations that did not accept the last command sent them

    def install(self, state: SiteState) -> None:
        self.state = state

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
        cap = state.threshold_w
        if not self.shaving and import_w <= cap - state.margin_w:
            return self._done(ShaveStep(now, import_w, fleet_w, cap, None, None, "under"))
        if len(state.fleet) == 0:
            return self._done(ShaveStep(now, import_w, fleet_w, cap, None, None, "no-cars"))
        setpoint = shave_setpoint_w(import_w=import_w, fleet_w=fleet_w, threshold_w=cap, margin_w=state.margin_w)
        bounds = power_bounds(state.fleet, now=now, duration_s=self.hold_s)
        if setpoint >= int(bounds.hi.sum()):
            return await self._release(ShaveStep(now, import_w, fleet_w, cap, setpoint, None, "release"))
        allocation = allocate(state.fleet, setpoint, now=now, duration_s=self.hold_s)
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
            LOG.info("site %s: import %d W over cap %d W - margin; shaving", self.site_id, import_w, cap)
        self.shaving = True
        step = ShaveStep(now, import_w, fleet_w, cap, setpoint, allocation.achieved_w, "shave", commands)
        step.outcome = await self._send(commands, self.call_timeout_s)
        self._check_answers(step.outcome)
        if not allocation.feasible and not self._short:  # once per episode, not once per reading
            LOG.warning("site %s: fleet can give %d of %d W asked: %s", self.site_id, allocation.achieved_w, setpoint,
                        allocation.reason)  # fmt: skip
        self._short = not allocation.feasible
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
        return step
