"""Charging profiles (incl. OCPP 2.1 V2X operation modes), AFRR signals and DER controls.

Profiles arrive as the ``ocpp`` library's snake_case dicts. ``ProfileStore.validate`` names the reason a profile
is refused (answered as SetChargingProfile status Rejected with statusInfo); ``setpoints_at`` evaluates the
stack (TxProfile over TxDefaultProfile by stack level, capped by ChargingStationMaxProfile) into the
``Setpoints`` the control law consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from edge_agent import grid_code
from edge_agent.control import SUPPORTED_MODES, Curve, DroopSettings, OperationMode, Setpoints
from edge_agent.protection import EnterService, Quantity, TripSetting

STATION_WIDE_PURPOSES = {"ChargingStationMaxProfile", "ChargingStationExternalConstraints", "LocalGeneration"}
CHARGING_ONLY_PURPOSES = {"ChargingStationMaxProfile", "PriorityCharging"}
RECURRENCE_S = {"Daily": 86_400, "Weekly": 7 * 86_400}


class ProfileRejected(ValueError):
    def __init__(self, reason_code: str, info: str) -> None:
        super().__init__(info)
        self.reason_code = reason_code
        self.info = info


def parse_dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class ProfileStore:
    evse_ids: tuple[int, ...] = (1,)
    nominal_voltage_v: float = 240.0
    phases: int = 1
    profiles: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> profile (snake_case)
    evse_of: dict[int, int] = field(default_factory=dict)  # id -> evse id (0 = station)
    received_at: dict[int, datetime] = field(default_factory=dict)
    afrr: list[tuple[datetime, int]] = field(default_factory=list)

    # -- validation ----------------------------------------------------------------------------------------------
    def validate(self, profile: dict[str, Any], evse_id: int, active_tx: str | None) -> None:
        purpose = profile["charging_profile_purpose"]
        if evse_id != 0 and evse_id not in self.evse_ids:
            raise ProfileRejected("UnknownEvse", f"no EVSE {evse_id}")
        if purpose in STATION_WIDE_PURPOSES and evse_id != 0:
            raise ProfileRejected("InvalidProfile", f"{purpose} must be set on evseId 0")
        if purpose == "TxProfile":
            if evse_id == 0:
                raise ProfileRejected("InvalidProfile", "TxProfile needs an EVSE")
            if active_tx is None or profile.get("transaction_id") not in (None, active_tx):
                raise ProfileRejected("TxNotFound", "no such active transaction")
        if profile["charging_profile_kind"] in ("Absolute", "Recurring"):
            for sched in profile["charging_schedule"]:
                if sched.get("start_schedule") is None:
                    raise ProfileRejected("InvalidSchedule", "Absolute/Recurring schedules need startSchedule")
        for sched in profile["charging_schedule"]:
            starts = [p["start_period"] for p in sched["charging_schedule_period"]]
            if starts[0] != 0 or starts != sorted(set(starts)):
                raise ProfileRejected("InvalidSchedule", "periods must start at 0 and increase")
            for period in sched["charging_schedule_period"]:
                self._validate_period(period, purpose, sched["charging_rate_unit"])

    def _validate_period(self, period: dict[str, Any], purpose: str, unit: str) -> None:
        mode = period.get("operation_mode", OperationMode.CHARGING_ONLY)
        if mode not in SUPPORTED_MODES:
            raise ProfileRejected("UnsupportedOperationMode", f"operationMode {mode} is not supported")
        if purpose in CHARGING_ONLY_PURPOSES and mode != OperationMode.CHARGING_ONLY:
            raise ProfileRejected("InvalidOperationMode", f"{purpose} allows only ChargingOnly")
        if mode in (OperationMode.CENTRAL_SETPOINT, OperationMode.CENTRAL_FREQUENCY) and period.get("setpoint") is None:
            raise ProfileRejected("MissingParam", f"{mode} requires setpoint")
        if mode == OperationMode.LOCAL_FREQUENCY:
            if period.get("v2x_baseline") is None or not period.get("v2x_freq_watt_curve"):
                raise ProfileRejected("MissingParam", "LocalFrequency requires v2xBaseline and v2xFreqWattCurve")
            if unit != "W":
                raise ProfileRejected("InvalidSchedule", "LocalFrequency requires chargingRateUnit W")
        if period.get("discharge_limit") is not None and period["discharge_limit"] > 0:
            raise ProfileRejected("InvalidValue", "dischargeLimit must be <= 0")
        try:
            if period.get("v2x_freq_watt_curve"):
                Curve.from_points([(p["frequency"], p["power"]) for p in period["v2x_freq_watt_curve"]])
            if period.get("v2x_signal_watt_curve"):
                Curve.from_points([(p["signal"], p["power"]) for p in period["v2x_signal_watt_curve"]])
        except ValueError as exc:
            raise ProfileRejected("InvalidValue", str(exc)) from exc

    # -- mutation ------------------------------------------------------------------------------------------------
    def install(self, profile: dict[str, Any], evse_id: int, now: datetime) -> None:
        pid = profile["id"]
        # Same purpose + stack level on the same EVSE replaces the older profile (OCPP rule).
        for other_id, other in list(self.profiles.items()):
            same_slot = (
                other["charging_profile_purpose"] == profile["charging_profile_purpose"]
                and other["stack_level"] == profile["stack_level"]
                and self.evse_of[other_id] == evse_id
            )
            if same_slot and other_id != pid:
                self.remove(other_id)
        self.profiles[pid] = profile
        self.evse_of[pid] = evse_id
        self.received_at[pid] = now

    def remove(self, pid: int) -> None:
        self.profiles.pop(pid, None)
        self.evse_of.pop(pid, None)
        self.received_at.pop(pid, None)

    def clear(self, profile_id: int | None, criteria: dict[str, Any] | None) -> int:
        removed = 0
        for pid, prof in list(self.profiles.items()):
            if profile_id is not None and pid != profile_id:
                continue
            if criteria:
                if "evse_id" in criteria and self.evse_of[pid] != criteria["evse_id"]:
                    continue
                purpose = criteria.get("charging_profile_purpose")
                if purpose is not None and prof["charging_profile_purpose"] != purpose:
                    continue
                if "stack_level" in criteria and prof["stack_level"] != criteria["stack_level"]:
                    continue
            self.remove(pid)
            removed += 1
        return removed

    def end_transaction(self, transaction_id: str | None) -> None:
        """TxProfiles live only as long as their transaction."""
        for pid, prof in list(self.profiles.items()):
            if prof["charging_profile_purpose"] == "TxProfile":
                self.remove(pid)

    def select(self, criterion: dict[str, Any], evse_id: int | None) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for pid, prof in self.profiles.items():
            if evse_id is not None and self.evse_of[pid] != evse_id:
                continue
            if criterion.get("charging_profile_id") and pid not in criterion["charging_profile_id"]:
                continue
            purpose = criterion.get("charging_profile_purpose")
            if purpose is not None and prof["charging_profile_purpose"] != purpose:
                continue
            if criterion.get("stack_level") is not None and prof["stack_level"] != criterion["stack_level"]:
                continue
            out.append((self.evse_of[pid], prof))
        return out

    def add_afrr(self, at: datetime, signal: int) -> None:
        self.afrr.append((at, signal))
        self.afrr.sort()
        del self.afrr[:-16]  # only the latest few matter

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _to_w(self, value: float | None, unit: str) -> float | None:
        if value is None:
            return None
        return value if unit == "W" else value * self.nominal_voltage_v * self.phases

    def _period_at(
        self, pid: int, prof: dict[str, Any], now: datetime, tx_start: datetime | None
    ) -> tuple[dict[str, Any], str] | None:
        if (vf := parse_dt(prof.get("valid_from"))) and now < vf:
            return None
        if (vt := parse_dt(prof.get("valid_to"))) and now >= vt:
            return None
        kind = prof["charging_profile_kind"]
        for sched in prof["charging_schedule"]:
            start = parse_dt(sched.get("start_schedule"))
            if kind == "Relative" or start is None:
                start = tx_start or self.received_at[pid]
            elapsed = (now - start).total_seconds()
            if kind == "Recurring":
                cycle = RECURRENCE_S.get(prof.get("recurrency_kind", "Daily"), 86_400)
                elapsed %= cycle
            if elapsed < 0:
                continue
            if sched.get("duration") is not None and elapsed >= sched["duration"]:
                continue
            current = None
            for period in sched["charging_schedule_period"]:
                if period["start_period"] <= elapsed:
                    current = period
            if current is not None:
                return current, sched["charging_rate_unit"]
        return None

    def setpoints_at(self, now: datetime, tx_id: str | None, tx_start: datetime | None) -> Setpoints | None:
        """The active V2X setpoints, or None when no profile applies (the caller then uses its default)."""
        best: tuple[int, dict[str, Any], str] | None = None
        cap_w: float | None = None
        for pid, prof in self.profiles.items():
            purpose = prof["charging_profile_purpose"]
            if purpose == "TxProfile" and tx_id is None:
                continue
            if purpose == "TxDefaultProfile" or purpose == "TxProfile":
                found = self._period_at(pid, prof, now, tx_start)
                if found is None:
                    continue
                rank = prof["stack_level"] + (1_000_000 if purpose == "TxProfile" else 0)
                if best is None or rank > best[0]:
                    best = (rank, found[0], found[1])
            elif purpose == "ChargingStationMaxProfile":
                found = self._period_at(pid, prof, now, tx_start)
                if found is not None and found[0].get("limit") is not None:
                    limit = self._to_w(found[0]["limit"], found[1])
                    cap_w = limit if cap_w is None or (limit is not None and limit < cap_w) else cap_w
        if best is None and cap_w is None:
            return None
        sp = Setpoints()
        if best is not None:
            _, period, unit = best
            sp = period_setpoints(period, unit, self._to_w)
        if cap_w is not None:
            sp.limit_w = cap_w if sp.limit_w is None else min(sp.limit_w, cap_w)
            if sp.setpoint_w is not None:
                sp.setpoint_w = min(sp.setpoint_w, cap_w)
        if sp.signal_watt_curve is not None:
            applicable = [s for at, s in self.afrr if at <= now]
            sp.afrr_signal = applicable[-1] if applicable else None
        return sp

    def boundaries(self, start: datetime, end: datetime, tx_start: datetime | None) -> list[datetime]:
        """Instants in [start, end) where the evaluated setpoints may change (for GetCompositeSchedule)."""
        points = {start}
        for pid, prof in self.profiles.items():
            for sched in prof["charging_schedule"]:
                origin = parse_dt(sched.get("start_schedule"))
                if prof["charging_profile_kind"] == "Relative" or origin is None:
                    origin = tx_start or self.received_at[pid]
                for period in sched["charging_schedule_period"]:
                    t = origin + timedelta(seconds=period["start_period"])
                    if start < t < end:
                        points.add(t)
                if sched.get("duration") is not None:
                    t = origin + timedelta(seconds=sched["duration"])
                    if start < t < end:
                        points.add(t)
            for key in ("valid_from", "valid_to"):
                t_ = parse_dt(prof.get(key))
                if t_ is not None and start < t_ < end:
                    points.add(t_)
        return sorted(points)


def period_setpoints(period: dict[str, Any], unit: str, to_w: Any) -> Setpoints:
    mode = period.get("operation_mode", OperationMode.CHARGING_ONLY)
    fw = period.get("v2x_freq_watt_curve")
    sw = period.get("v2x_signal_watt_curve")
    return Setpoints(
        mode=mode,
        limit_w=to_w(period.get("limit"), unit),
        discharge_limit_w=to_w(period.get("discharge_limit"), unit),
        setpoint_w=to_w(period.get("setpoint"), unit),
        baseline_w=float(period.get("v2x_baseline") or 0.0),
        freq_watt_curve=Curve.from_points([(p["frequency"], p["power"]) for p in fw]) if fw else None,
        signal_watt_curve=Curve.from_points([(p["signal"], p["power"]) for p in sw]) if sw else None,
    )


# -- DER controls (OCPP 2.1 SetDERControl) -----------------------------------------------------------------------
TRIP_FAMILIES: dict[str, tuple[Quantity, bool]] = {
    "HFMustTrip": (Quantity.FREQUENCY, True),
    "LFMustTrip": (Quantity.FREQUENCY, False),
    "HVMustTrip": (Quantity.VOLTAGE, True),
    "LVMustTrip": (Quantity.VOLTAGE, False),
}
SUPPORTED_DER = {"FreqDroop", "EnterService", "LimitMaxDischarge", *TRIP_FAMILIES}


class DerRejected(ValueError):
    def __init__(self, status: str, info: str) -> None:
        super().__init__(info)
        self.status = status
        self.info = info


PROTECTION_CONTROLS = {"FreqDroop", "EnterService", *TRIP_FAMILIES}  # refusals are security events
VOLTAGE_Y_UNITS = {"PctEffectiveV", "Not_Applicable"}  # y = % of nominal voltage
FREQUENCY_Y_UNITS = {"Not_Applicable"}  # y = Hz


def droop_from_der(fd: dict[str, Any], base: DroopSettings, category: str = "II") -> DroopSettings:
    """FreqDroop: overFreq/underFreq are the absolute frequencies where droop starts; droops are per unit.

    A droop given as a percentage (> 1, e.g. 5) is read as percent, since the schema says "per unit" but
    field tools commonly send 5 for 5 %. Deadbands, droops and the response time must lie in IEEE 1547-2018's
    ranges for the category (``grid_code.SettingRefused`` otherwise).
    """

    def pu(x: float) -> float:
        return x / 100.0 if x > 1.0 else x

    over, under = float(fd["over_freq"]), float(fd["under_freq"])
    if not under <= base.nominal_hz <= over:
        raise DerRejected("Rejected", "underFreq <= nominal <= overFreq required")
    od, ud = pu(float(fd["over_droop"])), pu(float(fd["under_droop"]))
    if od <= 0 or ud <= 0:
        raise DerRejected("Rejected", "droop must be positive")
    droop = replace(
        base,
        deadband_over_hz=over - base.nominal_hz,
        deadband_under_hz=base.nominal_hz - under,
        over_droop=od,
        under_droop=ud,
        response_time_s=float(fd["response_time"]),
        enabled=True,
    )
    grid_code.check_droop(
        category,
        deadband_over_hz=droop.deadband_over_hz,
        deadband_under_hz=droop.deadband_under_hz,
        over_droop=od,
        under_droop=ud,
        response_time_s=droop.response_time_s,
    )
    return droop


def trips_from_curve(
    control_type: str, curve: dict[str, Any], nominal_hz: float, category: str = "II"
) -> list[TripSetting]:
    """Must-trip curve points: x = clearing time (s), y = threshold (Hz, or % of nominal voltage).

    The curve replaces its family's IEEE 1547 stages (e.g. HVMustTrip: OV2 and OV1), one point per stage, each
    inside the category's range of allowable settings (``grid_code.check_trip_curve``); anything else is refused
    whole, so no curve can remove a stage or stretch a clearing time past its maximum.
    """
    quantity, over = TRIP_FAMILIES[control_type]
    y_unit = curve.get("y_unit", "Not_Applicable")
    allowed = FREQUENCY_Y_UNITS if quantity is Quantity.FREQUENCY else VOLTAGE_Y_UNITS
    if y_unit not in allowed:
        raise grid_code.SettingRefused(f"{control_type} yUnit must be {' or '.join(sorted(allowed))}, not {y_unit}")
    scale = 1.0 if quantity is Quantity.FREQUENCY else 0.01
    points = [(float(p["x"]), float(p["y"]) * scale) for p in curve["curve_data"]]
    checked = grid_code.check_trip_curve(category, nominal_hz, quantity.value, over, points)
    return [TripSetting(stage.name, quantity, over, threshold, clearing) for stage, threshold, clearing in checked]


def enter_service_from_der(es: dict[str, Any], base: EnterService, nominal_hz: float = 60.0) -> EnterService:
    """Enter-service criteria (voltages in pu, or in % of nominal when above 2), inside IEEE 1547-2018's ranges."""
    out = EnterService(
        v_low_pu=float(es["low_voltage"]) / 100.0 if es["low_voltage"] > 2 else float(es["low_voltage"]),
        v_high_pu=float(es["high_voltage"]) / 100.0 if es["high_voltage"] > 2 else float(es["high_voltage"]),
        f_low_hz=float(es["low_freq"]),
        f_high_hz=float(es["high_freq"]),
        delay_s=float(es.get("delay", base.delay_s)),
        ramp_s=float(es.get("ramp_rate", base.ramp_s)),
    )
    grid_code.check_enter_service(
        v_low_pu=out.v_low_pu,
        v_high_pu=out.v_high_pu,
        f_low_hz=out.f_low_hz,
        f_high_hz=out.f_high_hz,
        delay_s=out.delay_s,
        ramp_s=out.ramp_s,
        nominal_hz=nominal_hz,
    )
    return out
