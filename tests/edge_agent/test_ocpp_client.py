"""The OCPP client against a recording CSMS over real WebSockets (no Django involved)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.v21 import call as c21

from tests.edge_agent.csms import RecordingCsms

pytestmark = pytest.mark.timeout(60)


def _profile(
    profile_id: int, period: dict[str, Any], *, purpose: str = "TxDefaultProfile", stack_level: int = 0, **extra: Any
) -> dict[str, Any]:
    """A relative, single-period charging profile in W (the shape every V2X test here sends)."""
    return {
        "id": profile_id,
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Relative",
        **extra,
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "W", "chargingSchedulePeriod": [period]}],
    }


def _measurands(event: dict[str, Any]) -> set[str]:
    return {sv["measurand"] for mv in event.get("meter_value", []) for sv in mv["sampled_value"]}


async def test_it_boots_reports_status_and_starts_a_transaction_with_the_drivers_plan(
    csms: RecordingCsms, make_agent: Any
) -> None:
    # given a charger with a car plugged in
    agent = await make_agent(csms)
    # when it connects
    await csms.wait_for(lambda: csms.of("NotifyEVChargingNeeds") and len(csms.of("TransactionEvent")) >= 3)
    # then it negotiated OCPP 2.1, booted, reported status and started a transaction
    assert agent.client.version == "2.1"
    assert csms.of("BootNotification")[0]["charging_station"]["model"] == "EdgeAgent-11kW-BPT"
    assert {s["connector_status"] for s in csms.of("StatusNotification")} == {"Occupied"}
    started = csms.of("TransactionEvent")[0]
    assert started["event_type"] == "Started"
    assert started["trigger_reason"] == "CablePluggedIn"
    assert started["seq_no"] == 0
    # and told the CSMS the driver's departure plan with the 2.1 V2X parameters
    needs = csms.of("NotifyEVChargingNeeds")[0]["charging_needs"]
    assert needs["departure_time"].endswith("Z")
    assert needs["requested_energy_transfer"] == "AC_BPT"
    assert needs["v2x_charging_parameters"]["target_soc"] == 80
    assert needs["v2x_charging_parameters"]["max_discharge_power"] == 11_000
    # and meter values carry SoC, energy registers and power
    updated = [e for e in csms.of("TransactionEvent") if e["event_type"] == "Updated"]
    assert {
        "SoC",
        "Energy.Active.Import.Register",
        "Energy.Active.Export.Register",
        "Power.Active.Import",
        "Power.Active.Export",
    } <= _measurands(updated[0])


async def test_it_falls_back_to_ocpp_201(make_agent: Any) -> None:
    csms = await RecordingCsms(stations={"edge-1": "pw"}).start(subprotocols=("ocpp2.0.1",))
    try:
        agent = await make_agent(csms, password="pw")
        await csms.wait_for(lambda: csms.of("NotifyEVChargingNeeds"))
        assert agent.client.version == "2.0.1"
        needs = csms.of("NotifyEVChargingNeeds")[0]["charging_needs"]
        assert needs["requested_energy_transfer"] == "AC_single_phase"
        assert "v2x_charging_parameters" not in needs
    finally:
        await csms.stop()


async def test_a_wrong_password_is_refused_and_logged(
    csms: RecordingCsms, make_agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    agent = await make_agent(csms, password="wrong")
    await csms.wait_for(lambda: csms.refused)
    await csms.wait_for(
        lambda: any(getattr(r, "fields", {}).get("code") == "AUTH_REJECTED" for r in caplog.records), within_s=5
    )
    assert not agent.station.link.connected
    assert csms.of("BootNotification") == []


async def test_central_setpoint_profile_makes_the_car_discharge(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: "edge-1" in csms.connections and agent.station.link.connected)
    tx_id = agent.station.tx.transaction_id
    # when the CSMS sets a CentralSetpoint TxProfile of -6 kW
    result = await csms.call(
        "edge-1",
        c21.SetChargingProfile(
            evse_id=1,
            charging_profile=_profile(
                10,
                {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": -6000.0},
                purpose="TxProfile",
                stack_level=1,
                transactionId=tx_id,
            ),
        ),
    )
    assert result.status == "Accepted"
    # then the inverter follows within a few ticks, and meter values report the export
    await csms.wait_for(lambda: agent.hw.power_w < -5_900, within_s=5)
    await csms.wait_for(
        lambda: any(
            sv["measurand"] == "Power.Active.Export" and sv["value"] > 5_000
            for e in csms.of("TransactionEvent")
            for mv in e.get("meter_value", [])
            for sv in mv["sampled_value"]
        ),
        within_s=5,
    )


async def test_it_rejects_a_local_frequency_period_without_its_curve(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    result = await csms.call(
        "edge-1",
        c21.SetChargingProfile(
            evse_id=1,
            charging_profile=_profile(11, {"startPeriod": 0, "operationMode": "LocalFrequency", "v2xBaseline": 0.0}),
        ),
    )
    assert result.status == "Rejected"
    assert result.status_info["reason_code"] == "MissingParam"


async def test_local_frequency_with_baseline_and_curve_is_executed(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    agent.grid.faults.frequency_hz = 59.95
    result = await csms.call(
        "edge-1",
        c21.SetChargingProfile(
            evse_id=1,
            charging_profile=_profile(
                12,
                {
                    "startPeriod": 0,
                    "operationMode": "LocalFrequency",
                    "v2xBaseline": 1000.0,
                    "v2xFreqWattCurve": [
                        {"frequency": 59.9, "power": -10000.0},
                        {"frequency": 60.0, "power": 0.0},
                    ],
                },
            ),
        ),
    )
    assert result.status == "Accepted"
    await csms.wait_for(lambda: abs(agent.hw.power_w - (1000.0 - 5000.0)) < 50, within_s=5)


async def test_der_controls_set_droop_and_trip_curves_and_refuse_unsupported_ones(
    csms: RecordingCsms, make_agent: Any
) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    droop = await csms.call(
        "edge-1",
        c21.SetDERControl(
            is_default=True,
            control_id="droop-1",
            control_type="FreqDroop",
            freq_droop={
                "priority": 0,
                "overFreq": 60.017,
                "underFreq": 59.983,
                "overDroop": 0.03,
                "underDroop": 0.03,
                "responseTime": 1.0,
            },
        ),
    )
    assert droop.status == "Accepted"
    assert agent.station.droop.deadband_over_hz == pytest.approx(0.017)
    assert agent.station.droop.over_droop == pytest.approx(0.03)
    trip = await csms.call(
        "edge-1",
        c21.SetDERControl(
            is_default=True,
            control_id="hf-1",
            control_type="HFMustTrip",
            curve={
                "priority": 0,
                "yUnit": "Not_Applicable",
                "curveData": [{"x": 0.16, "y": 61.8}, {"x": 180, "y": 61.0}],
            },
        ),
    )
    assert trip.status == "Accepted"
    names = {t.name: (t.threshold, t.clearing_s) for t in agent.station.protection.trips}
    assert names["OF2"] == (61.8, 0.16)
    assert names["OF1"] == (61.0, 180.0)
    unsupported = await csms.call(
        "edge-1",
        c21.SetDERControl(
            is_default=True,
            control_id="vv",
            control_type="VoltVar",
            curve={"priority": 0, "yUnit": "PctMaxVar", "curveData": [{"x": 1, "y": 1}]},
        ),
    )
    assert unsupported.status == "NotSupported"


async def test_afrr_signal_drives_power_through_the_signal_watt_curve(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    profile = {
        "id": 13,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [
                    {
                        "startPeriod": 0,
                        "operationMode": "CentralFrequency",
                        "setpoint": 0.0,
                        "v2xSignalWattCurve": [{"signal": -100, "power": -8000.0}, {"signal": 100, "power": 8000.0}],
                    }
                ],
            }
        ],
    }
    assert (await csms.call("edge-1", c21.SetChargingProfile(evse_id=1, charging_profile=profile))).status == "Accepted"
    now = datetime.now(UTC).isoformat()
    result = await csms.call("edge-1", c21.AFRRSignal(timestamp=now, signal=-50))
    assert result.status == "Accepted"
    await csms.wait_for(lambda: abs(agent.hw.power_w + 4000.0) < 50, within_s=5)


async def test_device_model_get_set_and_base_report(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    result = await csms.call(
        "edge-1",
        c21.SetVariables(
            set_variable_data=[
                {
                    "component": {"name": "EdgeAgentCtrlr"},
                    "variable": {"name": "FailSafeMode"},
                    "attributeValue": "Idle",
                },
                {
                    "component": {"name": "EdgeAgentCtrlr"},
                    "variable": {"name": "LinkLossTimeout"},
                    "attributeValue": "9",
                },
                {"component": {"name": "Nope"}, "variable": {"name": "X"}, "attributeValue": "1"},
                {"component": {"name": "EdgeAgentCtrlr"}, "variable": {"name": "Nope"}, "attributeValue": "1"},
            ]
        ),
    )
    statuses = [r["attribute_status"] for r in result.set_variable_result]
    assert statuses == ["Accepted", "Rejected", "UnknownComponent", "UnknownVariable"]
    assert agent.station.safe_mode.mode == "Idle"
    got = await csms.call(
        "edge-1",
        c21.GetVariables(
            get_variable_data=[
                {"component": {"name": "EdgeAgentCtrlr"}, "variable": {"name": "FailSafeMode"}},
                {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}},
            ]
        ),
    )
    assert got.get_variable_result[0]["attribute_value"] == "Idle"
    assert got.get_variable_result[1]["attribute_status"] == "Rejected"  # write-only
    report = await csms.call("edge-1", c21.GetBaseReport(request_id=7, report_base="FullInventory"))
    assert report.status == "Accepted"
    await csms.wait_for(lambda: csms.of("NotifyReport"))
    data = csms.of("NotifyReport")[0]
    assert data["request_id"] == 7
    names = {(d["component"]["name"], d["variable"]["name"]) for d in data["report_data"]}
    assert ("EdgeAgentCtrlr", "FailSafeMode") in names


async def test_remote_stop_start_availability_trigger_and_profiles_queries(
    csms: RecordingCsms, make_agent: Any
) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected and agent.station.tx is not None)
    st = agent.station
    tx1 = st.tx.transaction_id
    assert (await csms.call("edge-1", c21.RequestStopTransaction(transaction_id="nope"))).status == "Rejected"
    assert (await csms.call("edge-1", c21.RequestStopTransaction(transaction_id=tx1))).status == "Accepted"
    await csms.wait_for(lambda: any(e["event_type"] == "Ended" for e in csms.of("TransactionEvent")))
    ended = next(e for e in csms.of("TransactionEvent") if e["event_type"] == "Ended")
    assert ended["transaction_info"]["stopped_reason"] == "Remote"
    start = await csms.call(
        "edge-1", c21.RequestStartTransaction(id_token={"idToken": "FLEET-1", "type": "Central"}, remote_start_id=42)
    )
    assert start.status == "Accepted"
    assert start.transaction_id != tx1
    # triggered messages
    assert (await csms.call("edge-1", c21.TriggerMessage(requested_message="MeterValues"))).status == "Accepted"
    await csms.wait_for(lambda: csms.of("MeterValues"))
    assert "SoC" in {sv["measurand"] for sv in csms.of("MeterValues")[0]["meter_value"][0]["sampled_value"]}
    # profiles queries
    no_profiles = await csms.call("edge-1", c21.GetChargingProfiles(request_id=1, charging_profile={}))
    assert no_profiles.status == "NoProfiles"
    composite = await csms.call("edge-1", c21.GetCompositeSchedule(duration=600, evse_id=1, charging_rate_unit="W"))
    assert composite.status == "Accepted"
    assert composite.schedule["charging_schedule_period"][0]["limit"] == 11_000
    # availability
    assert (await csms.call("edge-1", c21.ChangeAvailability(operational_status="Inoperative"))).status == "Accepted"
    await csms.wait_for(lambda: any(s["connector_status"] == "Unavailable" for s in csms.of("StatusNotification")))
    assert st.tx is None


async def test_reset_reconnects_with_a_new_boot(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    assert (await csms.call("edge-1", c21.Reset(type="OnIdle"))).status == "Scheduled"  # transaction running
    assert (await csms.call("edge-1", c21.Reset(type="Immediate"))).status == "Accepted"
    await csms.wait_for(lambda: len(csms.of("BootNotification")) >= 2)
    assert csms.of("BootNotification")[1]["reason"] == "RemoteReset"
    assert agent.client.connects >= 2


async def test_an_unknown_action_gets_a_not_implemented_callerror(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    with pytest.raises(OcppNotImplemented):
        await csms.call("edge-1", c21.UnlockConnector(evse_id=1, connector_id=1))
