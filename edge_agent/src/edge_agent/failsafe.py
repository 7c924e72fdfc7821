"""CSMS link supervision and the fail-safe.

The link counts as lost from the moment the WebSocket closes, or from the moment a request to the CSMS has gone
unanswered for longer than ``round_trip_limit_s`` (a half-open link sends nothing back). Once lost for more than
``timeout_s`` (2 s by default) the fail-safe engages: no discharging at all, and the setpoints become the safe mode
the CSMS configured (``FailSafeMode`` in the device model: ChargingOnly with ``FailSafeChargeLimit``, or Idle).
``timeout_s`` is when the power stage must be in that mode: where the command takes a while to get there (a car
behind ISO 15118-20 hears it only in its next charge-loop response, and says so in the one after) the monitor is
told that ``lead_s`` and engages that much earlier, but never on a link quiet for less than ``round_trip_limit_s``.
Protection is not part of this: it keeps running on local measurements whatever the link does.

The hardware has a fail-safe of its own (``HardwareWatch``): a read or write that fails, or hangs past its
timeout, is a fault. The station then commands 0 W and de-energises through every path the driver still has,
within the same deadline, and reports it; the driver's setpoints carry the device's own revert timer, so the
inverter also stops by itself when the agent dies or hangs and its writes stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.control import OperationMode, Setpoints

FAILSAFE_DEADLINE_S = 2.0  # the longest any fail-safe may take to stop a discharge (CSMS link lost; hardware fault)


@dataclass
class LinkMonitor:
    timeout_s: float = 2.0
    round_trip_limit_s: float = 0.5
    lead_s: float = 0.0  # how long the safe mode takes from the agent to the power stage (an ISO 15118 car: 2 loops)
    connected: bool = False
    _down_since: float | None = 0.0  # not connected yet counts as down since start
    _pending_since: float | None = None
    rtt_peak_s: float = 0.0  # the longest round trip since the last ``rtt_peak_take`` (fleet status reports)

    def up(self, now: float) -> None:
        self.connected = True
        self._down_since = None
        self._pending_since = None

    def down(self, now: float) -> None:
        if self.connected or self._down_since is None:
            self._down_since = now
        self.connected = False
        self._pending_since = None

    def started(self, now: float) -> None:
        """The agent starts unconnected: the grace period before the fail-safe runs from ``now``."""
        if not self.connected:
            self._down_since = now

    def request_sent(self, now: float) -> None:
        if self._pending_since is None:
            self._pending_since = now

    def answer_received(self, now: float) -> float | None:
        """Clear the pending request; return its round-trip time."""
        started, self._pending_since = self._pending_since, None
        if started is None:
            return None
        rtt = now - started
        self.rtt_peak_s = max(self.rtt_peak_s, rtt)
        return rtt

    def rtt_peak_take(self, now: float) -> float:
        """The longest round trip since the last call, a request still waiting counted as long as it has waited."""
        waiting = now - self._pending_since if self._pending_since is not None else 0.0
        peak, self.rtt_peak_s = max(self.rtt_peak_s, waiting), 0.0
        return peak

    def lost_since(self, now: float) -> float | None:
        if self._down_since is not None:
            return self._down_since
        if self._pending_since is not None and now - self._pending_since > self.round_trip_limit_s:
            return self._pending_since
        return None

    def engage_after_s(self) -> float:
        """How long the link may be lost before the fail-safe engages, so that the power stage is safe by
        ``timeout_s``; a link quiet for less than a round trip is not taken as lost, whatever the lead."""
        return max(self.round_trip_limit_s, self.timeout_s - self.lead_s)

    def failsafe(self, now: float) -> bool:
        since = self.lost_since(now)
        return since is not None and now - since > self.engage_after_s()


@dataclass(frozen=True, slots=True)
class SafeMode:
    """What the charger does without its CSMS (configured by the CSMS through SetVariables)."""

    mode: str = OperationMode.CHARGING_ONLY
    charge_limit_w: float | None = None  # None: the charger maximum

    def setpoints(self) -> Setpoints:
        if self.mode == OperationMode.IDLE:
            return Setpoints(mode=OperationMode.IDLE, limit_w=0.0)
        return Setpoints(mode=OperationMode.CHARGING_ONLY, limit_w=self.charge_limit_w)


@dataclass
class HardwareWatch:
    """Supervision of the hardware driver: when a fault starts, and when it may count as cleared.

    A fault is any read or write that raised or took longer than ``io_timeout_s``. It clears only after
    ``recover_s`` of reads and writes that all succeeded, power held at 0 W meanwhile (a flapping link does not
    re-energise the inverter each time it answers once).
    """

    io_timeout_s: float = 0.5
    deadline_s: float = FAILSAFE_DEADLINE_S
    recover_s: float = 5.0
    faulted_since: float | None = None
    healthy_since: float | None = None
    error: str = ""
    stopped_by: tuple[str, ...] = ()  # the stop paths that got through, last time they were tried

    @property
    def faulted(self) -> bool:
        return self.faulted_since is not None

    def failed(self, now: float, error: str) -> bool:
        """Record a failed or hung call; True if this starts a fault."""
        new = self.faulted_since is None
        if new:
            self.faulted_since = now
        self.healthy_since = None
        self.error = error
        return new

    def succeeded(self, now: float) -> bool:
        """Record a tick whose read and write both worked; True if this clears the fault."""
        if self.faulted_since is None:
            return False
        if self.healthy_since is None:
            self.healthy_since = now
        if now - self.healthy_since < self.recover_s:
            return False
        self.faulted_since = self.healthy_since = None
        self.error, self.stopped_by = "", ()
        return True

    def budget_s(self, elapsed_s: float) -> float:
        """What is left of the deadline for stopping, ``elapsed_s`` after the failing call began."""
        return max(0.0, self.deadline_s - elapsed_s)
