"""Edge agent, ISO 15118-20 towards the car: response latency, setpoint -> car latency, fail-safe through the car.

Real sockets and an EV nobody here wrote: the agent's SECC (edge_agent.secc, Josev) serves Josev's own EVCC
(tests/edge_agent/iso15118/ev.py) over IPv6 on a veth pair into a network namespace; the agent talks OCPP 2.1 to a
recording CSMS in this process. Needs root, Java and the iso15118 extra, so it runs in the agent's own venv:

    sudo .venv-iso15118/bin/python bench/edge_iso15118.py [--sessions 5] [--setpoints 20] [--failsafe 3] [--tcp]

Over TLS 1.3 by default (the SECC certificate from the project's PKI through the CSMS's `manage.py pki secc-cert`,
which needs the CSMS's .venv; the car's from an OEM PKI made here: tests/edge_agent/iso15118/pki.py); ``--tcp``:
plain TCP.

Figures (monotonic clock; the car's process shares it):
- PowerDeliveryReq -> PowerDeliveryRes as the car sees it (its request encoded -> the answer decoded), over
  ``--sessions`` sessions (each has PowerDelivery Start, and Stop; Josev's EV also sends "ongoing" ones at random),
  and AC_ChargeLoopReq -> Res, the same path every control cycle. Target: p99 well under 250 ms.
- CSMS setpoint -> car's target: SetChargingProfile sent by the CSMS -> the car decodes an AC_ChargeLoopRes
  carrying it as EVSETargetActivePower (``--setpoints`` alternating discharge setpoints).
- Fail-safe: the CSMS goes away while the car discharges 5 kW (FailSafeMode Idle, LinkLossTimeout 2 s) -> the
  car is told 0 W, and -> the car reports 0 W. Target: both within 2 s of the loss (the agent engages early by
  two of the car's charge-loop periods, edge_agent.failsafe).
- The agent's own share of PowerDelivery: its PowerDeliveryReq decoded -> its PowerDeliveryRes encoded (SECC side).
"""

# ruff: noqa: B023 - the loop bodies' lambdas are awaited within their own iteration

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _edge_util import percentile, table
from ocpp.v21 import call as c21

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import SystemClock
from edge_agent.failsafe import SafeMode
from edge_agent.frequency import SimulatedFrequency
from edge_agent.hardware.sim import SimulatedHardware
from edge_agent.ocpp_client import OcppClient
from edge_agent.runner import tick_forever
from edge_agent.station import Station, StationParams
from tests.edge_agent.csms import RecordingCsms
from tests.edge_agent.iso15118.conftest import Car, make_link, missing, remove_link, start_car_process, stop_car

PASSWORD = "bench-iso15118"
LIMIT_S = 0.25
LINK_LOSS_S = 2.0


def pairs(car: Car, request: str, response: str) -> list[float]:
    """Request encoded -> its response decoded, as the car saw them, in seconds."""
    out, sent = [], None
    for e in car.events:
        if e["event"] == "sent" and e["name"] == request:
            sent = e["at"]
        elif e["event"] == "received" and e["name"] == response and sent is not None:
            out.append(e["at"] - sent)
            sent = None
    return out


def profile(tx_id: str, setpoint_w: float, pid: int) -> Any:
    return c21.SetChargingProfile(evse_id=1, charging_profile={
        "id": pid, "stackLevel": 1, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
        "transactionId": tx_id, "chargingSchedule": [{"id": 1, "chargingRateUnit": "W", "chargingSchedulePeriod": [
            {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": setpoint_w}]}]})  # fmt: skip


async def until(predicate: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


def ms(values: list[float], p: float) -> str:
    return f"{percentile(sorted(values), p) * 1000:.0f} ms" if values else "-"


async def main(args: argparse.Namespace) -> None:
    from edge_agent.secc.controller import StationEVSEController
    from edge_agent.secc.server import run_secc

    load_at_start = os.getloadavg()
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    csms = await RecordingCsms(stations={"bench-1": PASSWORD}).start()
    link = make_link()
    tmp = Path(tempfile.mkdtemp(prefix="bench-iso15118-"))
    secc_tls: dict[str, Any] = {}
    ev_pki = None
    if not args.tcp:
        from edge_agent.secc.pki import SeccTlsFiles
        from tests.edge_agent.iso15118 import pki

        project, oem = pki.project_pki(tmp / "csms"), pki.oem_pki()
        secc_tls = {"tls": SeccTlsFiles(project.secc_chain, project.secc_key,
                                        pki.write_pem(tmp / "oem-roots.pem", oem.root.cert), project.key_passphrase),
                    "pki_dir": tmp / "iso15118-pki"}  # fmt: skip
        ev_pki = pki.ev_pki_dir(tmp / "ev", v2g_root=project.v2g_root, oem=oem)
    clock = SystemClock()
    grid = SimulatedFrequency(sigma_hz=0.0, seed=1)
    store = OutboxStore(tmp / "agent.sqlite3")
    st = Station(StationParams(station_id="bench-1", tick_s=0.1, safe_mode=SafeMode(mode="Idle"),
                               link_loss_timeout_s=LINK_LOSS_S),
                 clock=clock, hardware=SimulatedHardware(clock=clock, grid=grid, seed=1), grid=grid,
                 outbox=Outbox(store, "bench-1"))  # fmt: skip
    client = OcppClient(st, csms_url=csms.url, password=PASSWORD, reconnect_min_s=0.05, reconnect_max_s=0.2)
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(client.run()), asyncio.ensure_future(tick_forever([st], store, 0.1, stop=stop))]
    ready = asyncio.Event()
    controller = StationEVSEController(st)
    secc = run_secc(st, iface=link.secc_iface, ready=ready, controller=controller, **secc_tls)
    tasks.append(asyncio.ensure_future(secc))
    pd: list[float] = []
    loop_rt: list[float] = []
    to_car: list[float] = []
    loss_to_target: list[float] = []
    loss_to_power: list[float] = []
    try:
        await until(ready.is_set, 180, "the SECC did not start")
        for session in range(args.sessions):
            car = await start_car_process(link, pki=ev_pki)
            try:
                await until(lambda: st.ev_ready and st.tx is not None, 90, "no power delivery")
                await until(lambda: st.link.connected, 30, "no CSMS link")
                if session == 0:
                    for i in range(args.setpoints):
                        setpoint = -5_000.0 if i % 2 == 0 else -3_000.0
                        seen = len(car.events)
                        began = time.monotonic()
                        assert st.tx is not None
                        await csms.call("bench-1", profile(st.tx.transaction_id, setpoint, 100 + i))
                        await until(
                            lambda: any(e["event"] == "target" and e["w"] == setpoint for e in car.events[seen:]),
                            20,
                            "setpoint not at the car",
                        )
                        at = next(e["t"] for e in car.events[seen:] if e["event"] == "target" and e["w"] == setpoint)
                        to_car.append(at - began)
                        await asyncio.sleep(0.3)
                if session < args.failsafe:
                    assert st.tx is not None
                    await csms.call("bench-1", profile(st.tx.transaction_id, -5_000.0, 99))
                    await until(lambda: car.of("power", w=-5_000.0), 20, "not discharging")
                    seen = len(car.events)
                    lost = time.monotonic()
                    await csms.stop()
                    for station in list(csms.connections):
                        await csms.drop(station)
                    await until(
                        lambda: any(e["event"] == "power" and e["w"] == 0.0 for e in car.events[seen:]),
                        20,
                        "car not at 0 W",
                    )
                    new = car.events[seen:]
                    loss_to_target.append(next(e["t"] for e in new if e["event"] == "target" and e["w"] == 0.0) - lost)
                    at_zero = next(e["t"] for e in new if e["event"] == "power" and e["w"] == 0.0)
                    loss_to_power.append(at_zero - lost)
                    await csms.start()
                    await until(lambda: st.link.connected and not st.in_failsafe, 30, "CSMS link not back")
                await car.say("stop")
                await until(lambda: car.of("received", name="SessionStopRes"), 30, "no SessionStopRes")
                await until(lambda: st.car is None, 15, "session not closed")
            finally:
                await stop_car(car)
            pd += pairs(car, "PowerDeliveryReq", "PowerDeliveryRes")
            loop_rt += pairs(car, "AC_ChargeLoopReq", "AC_ChargeLoopRes")
            print(f"session {session + 1}/{args.sessions}: {len(pd)} PowerDelivery pairs, "
                  f"{len(loop_rt)} charge loops", flush=True)  # fmt: skip
    finally:
        stop.set()
        client.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await csms.stop()
        store.close()
        remove_link(link)
    secc_pd = controller.power_delivery_latencies_s
    transport = "plain TCP" if args.tcp else "TLS 1.3, mutual"
    print(f"load average at the start {load_at_start}, at the end {os.getloadavg()} (2 CPUs shared with others)")
    table(f"ISO 15118-20 with Josev's EV (veth pair, IPv6 link-local, {transport})", [
        (f"PowerDeliveryReq -> Res, p50 (n={len(pd)})", ms(pd, 50), "", None),
        (f"PowerDeliveryReq -> Res, p99 (n={len(pd)})", ms(pd, 99), "< 250 ms",
         bool(pd) and percentile(sorted(pd), 99) < LIMIT_S),
        (f"PowerDeliveryReq -> Res, max (n={len(pd)})", ms(pd, 100), "", None),
        (f"AC_ChargeLoopReq -> Res, p50 (n={len(loop_rt)})", ms(loop_rt, 50), "", None),
        (f"AC_ChargeLoopReq -> Res, p99 (n={len(loop_rt)})", ms(loop_rt, 99), "< 250 ms",
         bool(loop_rt) and percentile(sorted(loop_rt), 99) < LIMIT_S),
        (f"CSMS setpoint -> car's target, p50 (n={len(to_car)})", ms(to_car, 50), "", None),
        (f"CSMS setpoint -> car's target, p99 (n={len(to_car)})", ms(to_car, 99), "", None),
        (f"PowerDeliveryReq decoded -> Res encoded (agent), p99 (n={len(secc_pd)})", ms(secc_pd, 99), "", None),
        (f"link loss -> car told 0 W, max (n={len(loss_to_target)})", ms(loss_to_target, 100), "< 2 s",
         bool(loss_to_target) and max(loss_to_target) < LINK_LOSS_S),
        (f"link loss -> car reports 0 W, max (n={len(loss_to_power)})", ms(loss_to_power, 100), "< 2 s",
         bool(loss_to_power) and max(loss_to_power) < LINK_LOSS_S),
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--setpoints", type=int, default=20)
    parser.add_argument("--failsafe", type=int, default=3)
    parser.add_argument("--tcp", action="store_true", help="plain TCP instead of TLS 1.3")
    reason = missing()
    if reason:
        sys.exit(f"cannot run: {reason}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
