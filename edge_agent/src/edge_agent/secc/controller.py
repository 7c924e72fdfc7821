"""Josev's EVSE controller interface on the agent's station: ISO 15118-20 AC BPT, Dynamic control mode.

What flows where:

- car -> station: the EVCCID at SessionSetup; limits at ChargeParameterDiscovery (``car_limits_changed``); SoC,
  target and minimum SoC, energy requests and departure at ScheduleExchange, when the car is "plugged in" to the
  station (transaction started, NotifyEVChargingNeeds sent); the same again in every ACChargeLoopReq, and a
  departure that moved becomes a new NotifyEVChargingNeeds. PowerDeliveryReq Start/Stop opens/closes ``ev_ready``.
- station -> car: each ACChargeLoopRes carries ``station.last_command.power_w`` as EVSETargetActivePower (signed:
  negative discharges): the output of the local loop (frequency response, CSMS setpoint, mobility floor, ramp,
  fail-safe, protection), fresh every control cycle; EVSEPresentActivePower is the meter's reading.

Offered: ISO 15118-20 AC with the AC_BPT service, Dynamic control mode only (the agent owns the schedule), EIM
(the CSMS authorises through OCPP; the agent does not hold an authorisation list). Not offered: DIN SPEC 70121 and
ISO 15118-2 (their methods below raise), DC, Plug & Charge and certificate installation. TLS: edge_agent.secc.server.

Why one class this long: it is Josev's interface, one method per question its state machines ask.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from iso15118.secc.controller.evse_data import EVSEDataContext
from iso15118.secc.controller.interface import AuthorizationResponse, EVSEControllerInterface, ServiceStatus
from iso15118.shared.messages.enums import (
    AuthorizationStatus,
    ControlMode,
    CpState,
    EnergyTransferModeEnum,
    IsolationLevel,
    Protocol,
    ServiceV20,
    SessionStopAction,
)
from iso15118.shared.messages.iso15118_20.ac import (
    BPTACChargeParameterDiscoveryResParams,
    BPTDynamicACChargeLoopResParams,
)
from iso15118.shared.messages.iso15118_20.common_messages import (
    DynamicScheduleExchangeResParams,
    Parameter,
    ParameterSet,
    ScheduleExchangeReq,
    SelectedEnergyService,
    Service,
    ServiceList,
    ServiceParameterList,
)
from iso15118.shared.messages.iso15118_20.common_types import MeterInfo, RationalNumber
from iso15118.shared.messages.iso15118_20.common_types import ResponseCode as ResponseCodeV20

from edge_agent import sessionlog as slog
from edge_agent.secc.car import (
    RESPONSE_LIMIT_S,
    EnergyRequests,
    Iso15118Car,
    LoopTiming,
    log_session_end,
    power_limit,
    report_departure,
)
from edge_agent.station import Station

LOG = logging.getLogger("edge_agent.secc")
AC_BPT_SERVICE_ID = 5  # ISO 15118-20 Table 204
DYNAMIC = 2  # ControlMode / MobilityNeedsMode parameter values (Table 209)


def rational(value: float) -> RationalNumber:
    return RationalNumber.get_rational_repr(round(value))


def decimal(value: dict[str, Any] | None) -> float | None:
    """A RationalNumber as the codec's JSON ({"Exponent": e, "Value": v})."""
    if not value:
        return None
    return float(value["Value"]) * 10.0 ** int(value["Exponent"])


class StationEVSEController(EVSEControllerInterface):
    """One EVSE (connector 1) of the agent's ``Station`` as Josev's SECC sees it."""

    def __init__(self, station: Station, *, evse_id: str | None = None, phases: int = 1) -> None:
        super().__init__()
        self.station = station
        self.evse_id = evse_id or f"ZZ*EDG*E{station.id}"[:37]
        self.phases = phases
        self.car: Iso15118Car | None = None
        self.state = ""
        self.evcc_id = ""
        self.power_delivery_at: float | None = None  # monotonic time the last PowerDeliveryReq was decoded
        self.power_delivery_latencies_s: list[float] = []
        self.loop_timing = LoopTiming()
        self.evse_data_context = EVSEDataContext()

    # -- watching the wire (edge_agent.secc.codec) ----------------------------------------------------------------
    def on_decoded(self, name: str, body: dict[str, Any], at: float) -> None:
        if name == "SessionSetupReq":
            self.evcc_id = str(body.get("EVCCID", ""))
            slog.log_event(self.station.id, "ev_session_started", evcc_id=self.evcc_id)
        elif name == "PowerDeliveryReq":
            self.power_delivery_at = at
            self._power_delivery(str(body.get("ChargeProgress", "")))
        elif name == "AC_ChargeLoopReq":
            self._charge_loop(body, at)

    def on_encoded(self, name: str, body: dict[str, Any], at: float) -> None:
        if name == "PowerDeliveryRes" and self.power_delivery_at is not None:
            took = at - self.power_delivery_at
            self.power_delivery_at = None
            self.power_delivery_latencies_s.append(took)
            if took > RESPONSE_LIMIT_S:
                slog.log_event(self.station.id, "ev_slow_response", code=slog.EVSE_ERR_TIMEOUT,
                               level=logging.WARNING, message="PowerDeliveryRes", ms=round(took * 1000))  # fmt: skip

    def _failsafe_lead(self, loops_s: float) -> None:
        """The fail-safe engages early enough for the car to be safe within LinkLossTimeout (edge_agent.failsafe):
        the car's two charge loops, and a control tick for the agent's own loop (it notices the lost link, and
        answers the car, between the other work on its event loop)."""
        self.station.link.lead_s = loops_s + self.station.p.tick_s

    def _power_delivery(self, progress: str) -> None:
        st = self.station
        ready = progress == "Start" and self.car is not None and st.car is self.car
        if ready != st.ev_ready:
            st.ev_ready = ready
            slog.log_event(st.id, "ev_power_delivery", progress=progress)

    def _charge_loop(self, body: dict[str, Any], at: float) -> None:
        car = self.car
        if car is None:
            return
        if self.station.car is car:
            self._failsafe_lead(self.loop_timing.request(at))
        display = body.get("DisplayParameters") or {}
        if display.get("PresentSOC") is not None:
            car.soc = float(display["PresentSOC"]) / 100.0
        if display.get("TargetSOC") is not None:
            car.target_soc = float(display["TargetSOC"]) / 100.0
        if display.get("MinimumSOC") is not None:
            car.min_soc = float(display["MinimumSOC"]) / 100.0
        params = body.get("BPT_Dynamic_AC_CLReqControlMode") or body.get("Dynamic_AC_CLReqControlMode") or {}
        present = decimal(params.get("EVPresentActivePower"))
        if present is not None:
            car.reported_power_w = present
        limits_before = (car.max_charge_w, car.max_discharge_w)
        car.max_charge_w = power_limit(decimal(params.get("EVMaximumChargePower")), car.max_charge_w)
        car.max_discharge_w = power_limit(decimal(params.get("EVMaximumDischargePower")), car.max_discharge_w)
        if (car.max_charge_w, car.max_discharge_w) != limits_before and self.station.car is car:
            self.station.car_limits_changed()
        car.requests = EnergyRequests(
            target_wh=decimal(params.get("EVTargetEnergyRequest")),
            min_wh=decimal(params.get("EVMinimumEnergyRequest")),
            max_wh=decimal(params.get("EVMaximumEnergyRequest")),
            min_v2x_wh=decimal(params.get("EVMinimumV2XEnergyRequest")),
            max_v2x_wh=decimal(params.get("EVMaximumV2XEnergyRequest")),
        )
        if "DepartureTime" in params:
            report_departure(self.station, car, int(params["DepartureTime"]))

    # -- common -------------------------------------------------------------------------------------------------
    async def set_status(self, status: ServiceStatus) -> None:
        slog.log_event(self.station.id, "secc_status", status=str(status.value))

    async def get_evse_id(self, protocol: Protocol) -> str:
        return self.evse_id

    async def get_supported_energy_transfer_modes(self, protocol: Protocol) -> list[EnergyTransferModeEnum]:
        three = self.phases == 3
        return [EnergyTransferModeEnum.AC_THREE_PHASE_CORE if three else EnergyTransferModeEnum.AC_SINGLE_PHASE_CORE]

    async def get_energy_service_list(self) -> ServiceList:
        return ServiceList(services=[Service(service_id=AC_BPT_SERVICE_ID, free_service=True)])

    async def get_service_parameter_list(self, service_id: int) -> ServiceParameterList | None:
        if service_id != AC_BPT_SERVICE_ID:
            return None
        params = [
            Parameter(name="Connector", int_value=2 if self.phases == 3 else 1),
            Parameter(name="EVSENominalVoltage", int_value=round(self.station.p.nominal_voltage_v)),
            Parameter(name="Pricing", int_value=0),
            Parameter(name="ControlMode", int_value=DYNAMIC),
            Parameter(name="MobilityNeedsMode", int_value=1),  # the car states its needs (its departure, SoC)
            Parameter(name="BPTChannel", int_value=1),  # unified: one channel charges and discharges
            Parameter(name="GeneratorMode", int_value=1),  # grid following
        ]
        return ServiceParameterList(parameter_sets=[ParameterSet(id=1, parameters=params)])

    async def service_renegotiation_supported(self) -> bool:
        return False

    def is_eim_authorized(self) -> bool:
        return True  # EIM: the CSMS authorises the transaction through OCPP

    async def is_authorized(
        self,
        id_token: str | None = None,
        id_token_type: Any = None,
        certificate_chain: bytes | None = None,
        hash_data: list[dict[str, str]] | None = None,
    ) -> AuthorizationResponse:
        ok = self.station.available and not self.station.hw_watch.faulted
        return AuthorizationResponse(
            authorization_status=AuthorizationStatus.ACCEPTED if ok else AuthorizationStatus.REJECTED,
            certificate_response_status=ResponseCodeV20.OK if ok else ResponseCodeV20.FAILED,
        )

    def ready_to_charge(self) -> bool:
        st = self.station
        return st.available and not st.hw_watch.faulted

    async def get_supported_providers(self) -> None:
        return None

    async def get_ac_charge_params_v20(self, energy_service: ServiceV20) -> BPTACChargeParameterDiscoveryResParams:
        lim = self.station.p.limits
        self._plug_in_car()
        ev = self.ev_data_context.rated_limits.ac_limits
        car = self.car
        assert car is not None
        car.max_charge_w = power_limit(ev.max_charge_power, car.max_charge_w)
        car.max_discharge_w = power_limit(ev.max_discharge_power, car.max_discharge_w)
        return BPTACChargeParameterDiscoveryResParams(
            evse_max_charge_power=rational(lim.max_charge_w),
            evse_min_charge_power=rational(0),
            evse_nominal_frequency=rational(self.station.p.nominal_hz),
            evse_power_ramp_limit=rational(lim.ramp_w_per_s),
            evse_present_active_power=rational(self._meter_w()),
            evse_max_discharge_power=rational(lim.max_discharge_w),
            evse_min_discharge_power=rational(0),
        )

    def _plug_in_car(self) -> None:
        if self.car is None:
            self.car = Iso15118Car(evcc_id=self.evcc_id, soc=0.5, departure=None)

    async def get_schedule_exchange_params(
        self,
        selected_energy_service: SelectedEnergyService,
        control_mode: ControlMode,
        schedule_exchange_req: ScheduleExchangeReq,
    ) -> DynamicScheduleExchangeResParams:
        """The car's needs are known now: plug it in (transaction, NotifyEVChargingNeeds)."""
        self._plug_in_car()
        car = self.car
        assert car is not None
        ev = self.ev_data_context
        if ev.target_soc is not None:
            car.target_soc = ev.target_soc / 100.0
        if ev.min_soc is not None:
            car.min_soc = ev.min_soc / 100.0
        if ev.departure_time:
            car.departure = self.station.clock.wall() + timedelta(seconds=ev.departure_time)
        car.requests = EnergyRequests(
            target_wh=ev.target_energy_request,
            min_wh=ev.min_energy_request,
            max_wh=ev.max_energy_request,
            min_v2x_wh=getattr(ev, "min_v2x_energy_request", None),
            max_v2x_wh=getattr(ev, "max_v2x_energy_request", None),
        )
        st = self.station
        if st.car is not car:
            st.plug_in(car)
            self._failsafe_lead(self.loop_timing.lead_s())  # until the car's own loop period is measured
            slog.log_event(st.id, "ev_plugged_in", evcc_id=car.evcc_id, soc=car.soc, target_soc=car.target_soc)
        return DynamicScheduleExchangeResParams(
            departure_time=ev.departure_time,
            min_soc=round(st.limits.floor_soc * 100),
            target_soc=round(car.target_soc * 100),
        )

    async def get_ac_charge_loop_params_v20(
        self, control_mode: ControlMode, selected_service: ServiceV20
    ) -> BPTDynamicACChargeLoopResParams:
        """The station's latest command, as the car's target (this control cycle's output of the local loop), the
        fail-safe applied at once if the CSMS link counts as lost now."""
        st = self.station
        target_w = st.car_target_w(st.clock.monotonic())
        return BPTDynamicACChargeLoopResParams(
            evse_target_active_power=rational(target_w),
            evse_present_active_power=rational(self._meter_w()),
        )

    def _meter_w(self) -> float:
        m = self.station.last
        return m.power_w if m is not None else 0.0

    async def get_meter_info_v20(self) -> MeterInfo:
        m = self.station.last
        return MeterInfo(
            meter_id=self.station.id[:32],
            charged_energy_reading_wh=round(m.energy_import_wh) if m else 0,
            bpt_discharged_energy_reading_wh=round(m.energy_export_wh) if m else 0,
            meter_timestamp=round(time.time()),
        )

    async def get_evse_status(self) -> None:
        return None  # no notification: a fault takes the target to 0 W; the car keeps the session

    async def set_hlc_charging(self, is_ongoing: bool) -> None:
        return None

    async def stop_charger(self) -> None:
        self.station.ev_ready = False

    async def get_cp_state(self) -> CpState:
        # No control-pilot driver in the agent yet: a car that sent PowerDeliveryReq Start is taken as in state C.
        return CpState.C2

    async def is_contactor_opened(self) -> bool:
        return True

    async def is_contactor_closed(self) -> bool:
        m = self.station.last
        return m is None or m.energized

    async def set_present_protocol_state(self, state: Any) -> None:
        self.state = str(state)

    async def update_data_link(self, action: SessionStopAction) -> None:
        return None

    async def session_ended(self, current_state: str, reason: str) -> None:
        st = self.station
        log_session_end(st.id, current_state, reason)
        if self.car is not None and st.car is self.car:
            st.unplug()
        self.car = None
        self.evcc_id = ""
        self.loop_timing = LoopTiming()
        self.reset_ev_data_context()

    async def send_display_params(self) -> None:
        return None  # the codec hands the DisplayParameters over (on_decoded)

    async def send_rated_limits(self) -> None:
        if self.car is not None and self.station.car is self.car:
            self.station.car_limits_changed()

    async def get_15118_ev_certificate(self, base64_encoded_cert_installation_req: str, namespace: str) -> str:
        raise NotImplementedError("certificate installation is not offered (EIM only, no Plug & Charge)")

    # -- not offered: DIN SPEC 70121, ISO 15118-2, DC ----------------------------------------------------------
    async def get_sa_schedule_list(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ISO 15118-2 is not offered")

    async def get_sa_schedule_list_dinspec(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("DIN SPEC 70121 is not offered")

    async def get_meter_info_v2(self) -> Any:
        raise NotImplementedError("ISO 15118-2 is not offered")

    async def get_ac_evse_status(self) -> Any:
        raise NotImplementedError("ISO 15118-2 is not offered")

    async def get_ac_charge_params_v2(self) -> Any:
        raise NotImplementedError("ISO 15118-2 is not offered")

    async def get_dc_evse_status(self) -> Any:
        raise NotImplementedError("DC is not offered")

    async def get_dc_charge_parameters(self) -> Any:
        raise NotImplementedError("DC is not offered")

    async def get_dc_charge_params_v20(self, energy_service: ServiceV20) -> Any:
        raise NotImplementedError("DC is not offered")

    async def start_cable_check(self) -> None:
        raise NotImplementedError("DC is not offered")

    async def get_cable_check_status(self) -> IsolationLevel | None:
        raise NotImplementedError("DC is not offered")

    async def send_charging_command(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("DC is not offered")

    async def is_evse_current_limit_achieved(self) -> bool:
        return False

    async def is_evse_voltage_limit_achieved(self) -> bool:
        return False

    async def is_evse_power_limit_achieved(self) -> bool:
        return False
