"""The CSMS's requests to the station (OCPP 2.1 and 2.0.1), answered with the spec's statuses.

Handlers delegate to :class:`~edge_agent.station.Station`; requests the agent cannot honour get the CALLERROR the spec
names (NotImplemented for an unknown action, NotSupported for a 2.1-only action on a 2.0.1 connection). The
connection itself (handshake, reconnects, the sender) is :mod:`edge_agent.ocpp_client`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError
from ocpp.routing import after, on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v201 import ChargePoint as ChargePoint201

from edge_agent import sessionlog as slog
from edge_agent.clock import iso
from edge_agent.firmware import FirmwareRequest
from edge_agent.grid_code import SettingRefused
from edge_agent.profiles import (
    PROTECTION_CONTROLS,
    SUPPORTED_DER,
    TRIP_FAMILIES,
    DerRejected,
    ProfileRejected,
    droop_from_der,
    enter_service_from_der,
    parse_dt,
    trips_from_curve,
)
from edge_agent.station import Station

V21_ONLY = {"SetDERControl", "AFRRSignal", "GetDERControl", "ClearDERControl"}
PROTECTION_REFUSED_EVENT = "ProtectionSettingRefused"  # SecurityEventNotification type (free text, <= 50)


class ClientLink(Protocol):
    """What a handler needs of the connection that received the request (``OcppClient``)."""

    password: str

    def boot_payload(self, reason: str) -> dict[str, Any]: ...

    def request_reset(self) -> None: ...


def _status_info(reason: str, info: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"reason_code": reason[:20]}
    if info:
        out["additional_info"] = info[:512]
    return out


class Handlers:
    """CSMS-initiated requests. Mixed into the 2.1 and 2.0.1 ChargePoint classes."""

    station: Station
    client: ClientLink
    _call_result: Any
    _ocpp_version: str

    async def _handle_call(self, msg: Any) -> Any:
        # ocpp 2.1.0 silently drops unknown actions on 2.1; answer with the CALLERROR the spec names instead.
        if self._ocpp_version == "2.0.1" and msg.action in V21_ONLY:
            raise NotSupportedError(details={"cause": f"{msg.action} is OCPP 2.1 only"})
        if msg.action not in self.route_map:  # type: ignore[attr-defined]
            raise OcppNotImplemented(details={"cause": f"{msg.action} is not implemented by this station"})
        return await super()._handle_call(msg)  # type: ignore[misc]

    # -- smart charging / V2X ------------------------------------------------------------------------------------
    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        st = self.station
        tx = st.tx.transaction_id if st.tx else None
        try:
            st.profiles.validate(charging_profile, evse_id, tx)
        except ProfileRejected as exc:
            slog.log_event(st.id, "profile_rejected", reason=exc.reason_code, info=exc.info)
            return self._call_result.SetChargingProfile(
                status="Rejected", status_info=_status_info(exc.reason_code, exc.info)
            )
        st.profiles.install(charging_profile, evse_id, st.clock.wall())
        modes = sorted(
            {
                p.get("operation_mode", "ChargingOnly")
                for s in charging_profile["charging_schedule"]
                for p in s["charging_schedule_period"]
            }
        )
        slog.log_event(st.id, "profile_set", profile_id=charging_profile["id"], modes=modes)
        return self._call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self, charging_profile_id: int | None = None, charging_profile_criteria: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        removed = self.station.profiles.clear(charging_profile_id, charging_profile_criteria)
        return self._call_result.ClearChargingProfile(status="Accepted" if removed else "Unknown")

    @on("GetChargingProfiles")
    def on_get_charging_profiles(
        self, request_id: int, charging_profile: dict[str, Any], evse_id: int | None = None, **_: Any
    ) -> Any:
        found = self.station.profiles.select(charging_profile, evse_id)
        if not found:
            return self._call_result.GetChargingProfiles(status="NoProfiles")
        by_evse: dict[int, list[dict[str, Any]]] = {}
        for evse, prof in found:
            by_evse.setdefault(evse, []).append(prof)
        items = list(by_evse.items())
        for i, (evse, profs) in enumerate(items):
            self.station.direct.append(
                (
                    "ReportChargingProfiles",
                    {
                        "request_id": request_id,
                        "charging_limit_source": "CSO",
                        "evse_id": evse,
                        "charging_profile": profs,
                        "tbc": i < len(items) - 1,
                    },
                )
            )
        self.station.wakeup()
        return self._call_result.GetChargingProfiles(status="Accepted")

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        st = self.station
        if evse_id not in (0, 1):
            return self._call_result.GetCompositeSchedule(
                status="Rejected", status_info=_status_info("UnknownEvse", f"no EVSE {evse_id}")
            )
        unit = charging_rate_unit or "W"
        start = st.clock.wall().replace(microsecond=0)
        end = start + timedelta(seconds=duration)
        tx = st.tx
        periods: list[dict[str, Any]] = []
        for t in st.profiles.boundaries(start, end, tx.started_wall if tx else None):
            sp = st.profiles.setpoints_at(t, tx.transaction_id if tx else None, tx.started_wall if tx else None)
            limit = st.limits.max_charge_w if sp is None or sp.limit_w is None else sp.limit_w
            scale = 1.0 if unit == "W" else 1.0 / st.p.nominal_voltage_v
            period: dict[str, Any] = {
                "start_period": int((t - start).total_seconds()),
                "limit": round(limit * scale, 1),
            }
            if self._ocpp_version == "2.1" and sp is not None:
                period["operation_mode"] = sp.mode
                if sp.setpoint_w is not None:
                    period["setpoint"] = round(sp.setpoint_w * scale, 1)
                if sp.discharge_limit_w is not None:
                    period["discharge_limit"] = round(sp.discharge_limit_w * scale, 1)
            if not periods or {k: v for k, v in periods[-1].items() if k != "start_period"} != {
                k: v for k, v in period.items() if k != "start_period"
            }:
                periods.append(period)
        schedule = {
            "evse_id": evse_id,
            "duration": duration,
            "schedule_start": iso(start),
            "charging_rate_unit": unit,
            "charging_schedule_period": periods,
        }
        return self._call_result.GetCompositeSchedule(status="Accepted", schedule=schedule)

    @on("SetDERControl")
    def on_set_der_control(self, is_default: bool, control_id: str, control_type: str, **kw: Any) -> Any:
        """DER controls; protection settings only inside IEEE 1547-2018's ranges for the configured category.

        A refused protection setting (trip curve, enter service, droop) is answered Rejected, reported as a
        SecurityEventNotification and logged; the settings in force before it stay in force.
        """
        st = self.station
        if control_type not in SUPPORTED_DER:
            return self._call_result.SetDERControl(
                status="NotSupported", status_info=_status_info("UnsupportedParam", control_type)
            )
        prot = st.protection
        try:
            if control_type == "FreqDroop":
                if not kw.get("freq_droop"):
                    raise DerRejected("Rejected", "freqDroop block missing")
                st.droop = droop_from_der(kw["freq_droop"], st.droop, prot.category)
            elif control_type in TRIP_FAMILIES:
                if not kw.get("curve"):
                    raise DerRejected("Rejected", "curve missing")
                quantity, over = TRIP_FAMILIES[control_type]
                trips = trips_from_curve(control_type, kw["curve"], prot.nominal_hz, prot.category)
                prot.replace_trips(quantity, over, trips)
            elif control_type == "EnterService":
                if not kw.get("enter_service"):
                    raise DerRejected("Rejected", "enterService block missing")
                prot.enter_service = enter_service_from_der(kw["enter_service"], prot.enter_service, prot.nominal_hz)
            elif control_type == "LimitMaxDischarge":
                pct = (kw.get("limit_max_discharge") or {}).get("pct_max_discharge_power")
                if pct is None or not 0 <= pct <= 100:
                    raise DerRejected("Rejected", "pctMaxDischargePower in 0..100 required")
                st.discharge_cap_pct = float(pct)
                st.limits = replace(st.limits, max_discharge_w=st.p.limits.max_discharge_w * pct / 100.0)
        except (DerRejected, SettingRefused) as exc:
            if control_type in PROTECTION_CONTROLS:
                self._protection_refused(control_id, control_type, exc.info)
            status = exc.status if isinstance(exc, DerRejected) else "Rejected"
            return self._call_result.SetDERControl(status=status, status_info=_status_info("InvalidValue", exc.info))
        slog.log_event(st.id, "der_control_set", control_id=control_id, control_type=control_type, default=is_default)
        return self._call_result.SetDERControl(status="Accepted")

    def _protection_refused(self, control_id: str, control_type: str, info: str) -> None:
        st = self.station
        slog.log_event(
            st.id, "der_control_refused", code=slog.PROTECTION_SETTING_REFUSED, level=logging.WARNING,
            control_id=control_id, control_type=control_type, category=st.protection.category, info=info,
        )  # fmt: skip
        st.send_direct(
            "SecurityEventNotification",
            {
                "type": PROTECTION_REFUSED_EVENT,
                "timestamp": iso(st.clock.wall()),
                "tech_info": f"{control_type} {control_id}: {info}"[:255],
            },
        )

    @on("AFRRSignal")
    def on_afrr_signal(self, timestamp: str, signal: int, **_: Any) -> Any:
        at = parse_dt(timestamp)
        if at is None:
            return self._call_result.AFRRSignal(status="Rejected")
        st = self.station
        sp = st.profiles.setpoints_at(
            at, st.tx.transaction_id if st.tx else None, st.tx.started_wall if st.tx else None
        )
        if sp is None or sp.signal_watt_curve is None:
            return self._call_result.AFRRSignal(
                status="Rejected", status_info=_status_info("NoCurve", "no active v2xSignalWattCurve")
            )
        st.profiles.add_afrr(at, signal)
        return self._call_result.AFRRSignal(status="Accepted")

    # -- transactions --------------------------------------------------------------------------------------------
    @on("RequestStartTransaction")
    def on_request_start_transaction(
        self, id_token: dict[str, Any], remote_start_id: int, charging_profile: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        st = self.station
        tx = st.remote_start(id_token, remote_start_id)
        if tx is None:
            return self._call_result.RequestStartTransaction(
                status="Rejected", status_info=_status_info("NoCar" if st.car is None else "Unavailable")
            )
        if charging_profile is not None:
            charging_profile = {**charging_profile, "transaction_id": tx.transaction_id}
            try:
                st.profiles.validate(charging_profile, 1, tx.transaction_id)
                st.profiles.install(charging_profile, 1, st.clock.wall())
            except ProfileRejected as exc:
                slog.log_event(st.id, "profile_rejected", reason=exc.reason_code, info=exc.info)
        return self._call_result.RequestStartTransaction(status="Accepted", transaction_id=tx.transaction_id)

    @on("RequestStopTransaction")
    def on_request_stop_transaction(self, transaction_id: str, **_: Any) -> Any:
        st = self.station
        if st.tx is None or st.tx.transaction_id != transaction_id:
            return self._call_result.RequestStopTransaction(status="Rejected")
        st.end_transaction(trigger="RemoteStop", reason="Remote")
        return self._call_result.RequestStopTransaction(status="Accepted")

    # -- device model --------------------------------------------------------------------------------------------
    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return self._call_result.GetVariables(
            get_variable_result=[self.station.dm.get_variable(r) for r in get_variable_data]
        )

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for req in set_variable_data:
            result = self.station.dm.set_variable(req)
            if result["attribute_status"] == "Accepted" and req["variable"]["name"] == "BasicAuthPassword":
                self.client.password = str(req["attribute_value"])  # used from the next connection on
            results.append(result)
        return self._call_result.SetVariables(set_variable_result=results)

    @on("GetBaseReport")
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> Any:
        if report_base not in ("FullInventory", "ConfigurationInventory", "SummaryInventory"):
            return self._call_result.GetBaseReport(status="NotSupported")
        return self._call_result.GetBaseReport(status="Accepted")

    @after("GetBaseReport")
    def after_get_base_report(self, request_id: int, report_base: str, **_: Any) -> None:
        st = self.station
        st.direct.append(
            (
                "NotifyReport",
                {
                    "request_id": request_id,
                    "generated_at": iso(st.clock.wall()),
                    "seq_no": 0,
                    "tbc": False,
                    "report_data": st.dm.report(report_base),
                },
            )
        )
        st.wakeup()

    # -- operations ----------------------------------------------------------------------------------------------
    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        if evse is not None and evse.get("id") not in (0, 1):
            return self._call_result.ChangeAvailability(status="Rejected", status_info=_status_info("UnknownEvse"))
        status = self.station.set_available(operational_status == "Operative")
        return self._call_result.ChangeAvailability(status=status)

    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        st = self.station
        if evse_id not in (None, 0, 1):
            return self._call_result.Reset(status="Rejected", status_info=_status_info("UnknownEvse"))
        if type == "OnIdle" and st.tx is not None:
            st.pending_reset = "OnIdle"
            return self._call_result.Reset(status="Scheduled")
        return self._call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, type: str, **_: Any) -> None:
        st = self.station
        if type == "Immediate" or st.tx is None:
            if st.tx is not None:
                st.end_transaction(trigger="ResetCommand", reason="ImmediateReset")
            self.client.request_reset()

    @on("UpdateFirmware")
    def on_update_firmware(
        self,
        request_id: int,
        firmware: dict[str, Any],
        retries: int | None = None,
        retry_interval: int | None = None,
        **_: Any,
    ) -> Any:
        request = FirmwareRequest(
            request_id=request_id,
            location=firmware["location"],
            retrieve_at=parse_dt(firmware.get("retrieve_date_time")),
            install_at=parse_dt(firmware.get("install_date_time")),
            signature=firmware.get("signature") or "",
            signing_certificate=firmware.get("signing_certificate") or "",
            retries=retries or 0,
            retry_interval_s=float(retry_interval if retry_interval is not None else 30),
        )
        decision = self.station.firmware.decide(request)
        if decision.reason:
            return self._call_result.UpdateFirmware(
                status=decision.status, status_info=_status_info(decision.reason, decision.info)
            )
        return self._call_result.UpdateFirmware(status=decision.status)

    @after("UpdateFirmware")
    def after_update_firmware(self, **_: Any) -> None:
        self.station.firmware.proceed()

    @on("TriggerMessage")
    def on_trigger_message(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        if requested_message not in (
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "MeterValues",
            "TransactionEvent",
        ):
            return self._call_result.TriggerMessage(status="NotImplemented")
        if requested_message == "TransactionEvent" and self.station.tx is None:
            return self._call_result.TriggerMessage(status="Rejected")
        return self._call_result.TriggerMessage(status="Accepted")

    @after("TriggerMessage")
    def after_trigger_message(self, requested_message: str, **_: Any) -> None:
        st = self.station
        if requested_message == "BootNotification":
            st.direct.append(("BootNotification", self.client.boot_payload("Triggered")))
        elif requested_message == "Heartbeat":
            st.direct.append(("Heartbeat", {}))
        elif requested_message == "StatusNotification":
            st.queue_status(st.connector_status())
        elif requested_message == "MeterValues":
            st.trigger_meter_values()
        elif requested_message == "TransactionEvent":
            st.trigger_transaction_event()
        st.wakeup()


class StationCP21(Handlers, ChargePoint21):
    pass


class StationCP201(Handlers, ChargePoint201):
    pass
