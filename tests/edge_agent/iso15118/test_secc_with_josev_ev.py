"""The agent's SECC against an EV nobody here wrote: Josev's EVCC over IPv6 on a veth pair (see conftest.py).

Expected values come from the car's own settings (SoC 0.6, minimum SoC 0.2, target SoC 0.8, 60 kWh, departure in
8 h then 1 h) and from the CSMS's setpoint, by hand: not from the agent's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.v21 import call as c21

from edge_agent.failsafe import SafeMode
from tests.edge_agent.csms import RecordingCsms
from tests.edge_agent.iso15118.conftest import Tls

CAPACITY_WH = 60_000.0
SOC, MIN_SOC, TARGET_SOC = 0.6, 0.2, 0.8
AC_BPT = 5  # ISO 15118-20 Table 204


def discharge_profile(tx_id: str, setpoint_w: float) -> Any:
    return c21.SetChargingProfile(
        evse_id=1,
        charging_profile={
            "id": 7, "stackLevel": 1, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
            "transactionId": tx_id,
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "W", "chargingSchedulePeriod": [
                {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": setpoint_w}]}],
        },
    )  # fmt: skip


async def serve_cars(agent: Any, iface: str, tls: Tls | None = None) -> asyncio.Task[None]:
    from edge_agent.secc.server import run_secc

    ready = asyncio.Event()
    files = {"tls": tls.secc, "pki_dir": tls.secc_pki_dir} if tls else {}
    task = asyncio.ensure_future(run_secc(agent.station, iface=iface, ready=ready, **files))
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, waiting], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped the SECC
    assert ready.is_set(), "the SECC did not start in 120 s"
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def session_log(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == event]  # type: ignore[attr-defined]


def near(iso: str, expected: datetime, tolerance_s: float = 120.0) -> bool:
    return abs((datetime.fromisoformat(iso.replace("Z", "+00:00")) - expected).total_seconds()) <= tolerance_s


async def test_a_tls_session_carries_the_csms_discharge_setpoint_to_the_car_and_the_cars_plans_to_the_csms(
    csms: RecordingCsms, make_agent: Any, start_car: Any, v2g_link: Any, tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    # given an agent without a car, connected to its CSMS, serving cars on the veth pair over TLS with its SECC
    # certificate from the project's PKI (`manage.py pki secc-cert`)
    agent = await make_agent(csms, plug=False, tick_s=0.1)
    await csms.wait_for(lambda: agent.station.link.connected, within_s=10)
    secc = await serve_cars(agent, v2g_link.secc_iface, tls)
    try:
        # when Josev's EV (SoC 60 %, leaving in 8 h; trusting the project's V2G root, with its OEM certificate) is
        # plugged in
        car = await start_car(soc=SOC, departure_s=8 * 3600.0, pki=tls.ev_pki_dir)
        plugged_at = datetime.now(UTC)
        # then it finds the charger by SDP and connects over TLS 1.3, having verified the charger's SECC certificate
        await car.wait_for(lambda: car.of("connected"), within_s=90)
        connected = car.of("connected")[0]
        assert connected["tls"] == "TLSv1.3"
        assert connected["peer"]["commonName"] == "edge-1"
        assert connected["peer"]["domainComponent"] == "CPO"
        # and sets up a session, selects bidirectional AC and starts power delivery
        await car.wait_for(lambda: car.of("received", name="PowerDeliveryRes"), within_s=90)
        assert car.of("received", name="SessionSetupRes")[0]["code"].startswith("OK")
        assert [e["service"] for e in car.of("sent", name="ServiceSelectionReq")] == [AC_BPT]
        assert car.of("received", name="ServiceSelectionRes")[0]["code"] == "OK"
        assert car.of("received", name="PowerDeliveryRes")[-1]["code"] == "OK"
        await csms.wait_for(lambda: agent.station.ev_ready, within_s=10)
        # and the CSMS hears of the transaction and of the car's own needs, V2X fields included
        await csms.wait_for(lambda: csms.of("NotifyEVChargingNeeds"), within_s=10)
        needs = csms.of("NotifyEVChargingNeeds")[0]["charging_needs"]
        assert needs["requested_energy_transfer"] == "AC_BPT"
        assert needs["control_mode"] == "DynamicControl"
        v2x = needs["v2x_charging_parameters"]
        assert v2x["ev_target_energy_request"] == pytest.approx((TARGET_SOC - SOC) * CAPACITY_WH, abs=150)
        assert v2x["ev_min_v2x_energy_request"] == pytest.approx((MIN_SOC - SOC) * CAPACITY_WH, abs=150)
        assert v2x["ev_max_v2x_energy_request"] == pytest.approx((1.0 - SOC) * CAPACITY_WH, abs=150)
        assert v2x["target_soc"] == 80
        assert near(needs["departure_time"], plugged_at + timedelta(hours=8))
        await csms.wait_for(lambda: csms.of("TransactionEvent"), within_s=10)  # buffered: may follow the needs
        assert [e["event_type"] for e in csms.of("TransactionEvent")][:1] == ["Started"]

        # when the CSMS asks for a 5 kW discharge
        tx_id = agent.station.tx.transaction_id
        assert (await csms.call("edge-1", discharge_profile(tx_id, -5_000.0))).status == "Accepted"
        # then the setpoint reaches the car through ISO 15118-20 (EVSETargetActivePower), and the power the car
        # reports follows it
        await car.wait_for(lambda: car.of("target", w=-5_000.0), within_s=20)
        await car.wait_for(lambda: agent.station.car.reported_power_w == pytest.approx(-5_000.0), within_s=20)
        assert car.of("power", w=-5_000.0)

        # when the driver moves the departure to 1 h from now
        before = len(csms.of("NotifyEVChargingNeeds"))
        moved_at = datetime.now(UTC)
        await car.say("departure 3600")
        # then the CSMS gets new charging needs with the new departure
        await csms.wait_for(lambda: len(csms.of("NotifyEVChargingNeeds")) > before, within_s=20)
        assert near(csms.of("NotifyEVChargingNeeds")[-1]["charging_needs"]["departure_time"],
                    moved_at + timedelta(hours=1))  # fmt: skip

        # when the driver ends the session
        await car.say("stop")
        # then the car stops power delivery and the session in order, and the transaction ends
        await car.wait_for(lambda: car.of("received", name="SessionStopRes"), within_s=30)
        assert car.of("received", name="SessionStopRes")[0]["code"] == "OK"
        assert [e["progress"] for e in car.of("sent", name="PowerDeliveryReq")][-1] == "Stop"
        await csms.wait_for(lambda: any(e["event_type"] == "Ended" for e in csms.of("TransactionEvent")), 15)
        ended = session_log(caplog, "ev_session_ended")
        assert ended
        assert "code" not in ended[-1], ended
        assert agent.station.car is None
    finally:
        await stop(secc)


async def test_losing_the_csms_takes_the_cars_power_to_zero_through_iso_15118(
    csms: RecordingCsms, make_agent: Any, start_car: Any, v2g_link: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    # given a car discharging 5 kW on the CSMS's setpoint, and a fail-safe mode of Idle
    agent = await make_agent(csms, plug=False, tick_s=0.1, safe_mode=SafeMode(mode="Idle"))
    await csms.wait_for(lambda: agent.station.link.connected, within_s=10)
    secc = await serve_cars(agent, v2g_link.secc_iface)
    try:
        car = await start_car(soc=SOC)
        await csms.wait_for(lambda: agent.station.ev_ready, within_s=90)
        tx_id = agent.station.tx.transaction_id
        assert (await csms.call("edge-1", discharge_profile(tx_id, -5_000.0))).status == "Accepted"
        await car.wait_for(lambda: car.of("power", w=-5_000.0), within_s=20)
        # when the CSMS goes away (and stays away)
        await csms.stop()
        for station in list(csms.connections):
            await csms.drop(station)
        seen = len(car.events)
        # then the agent enters its fail-safe, and the car is told 0 W and reports 0 W, the session still up
        await car.wait_for(lambda: any(e["event"] == "power" and e["w"] == 0.0 for e in car.events[seen:]), 20)
        assert [e for e in car.events[seen:] if e["event"] == "target"][-1]["w"] == 0.0
        # and the agent's own loop enters its fail-safe too (the car may hear of it first, within a tick)
        await csms.wait_for(lambda: session_log(caplog, "failsafe_enter"), within_s=5)
        assert not car.of("ended")
    finally:
        await stop(secc)


async def test_a_car_whose_maker_the_charger_does_not_trust_gets_no_session(
    csms: RecordingCsms, make_agent: Any, start_car: Any, v2g_link: Any, tls: Tls, tmp_path: Any
) -> None:
    from tests.edge_agent.iso15118 import pki

    # given an agent serving cars over TLS, trusting one OEM's root
    agent = await make_agent(csms, plug=False, tick_s=0.1)
    await csms.wait_for(lambda: agent.station.link.connected, within_s=10)
    secc = await serve_cars(agent, v2g_link.secc_iface, tls)
    try:
        # when a car with a certificate from another maker (it trusts the V2G root all the same) is plugged in
        stranger = pki.ev_pki_dir(tmp_path / "stranger", v2g_root=tls.v2g_root, oem=pki.oem_pki("Other OEM"))
        car = await start_car(soc=SOC, pki=stranger)
        # then the charger refuses its certificate: the car (whose side of TLS 1.3 completes before the charger
        # checks its certificate) tries again and again, and never gets an answer; the station never gets a car
        await car.wait_for(lambda: len(car.of("sent", name="supportedAppProtocolReq")) >= 2, within_s=90)
        assert not car.of("received")
        assert agent.station.car is None
    finally:
        await stop(secc)
