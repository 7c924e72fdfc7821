"""The car: Josev's own EVCC (its SDP client, state machines and EXI codec) with its simulated EV controller.

Run inside the car's network namespace:

    python -m tests.edge_agent.iso15118.ev --iface v2g-ev-1 [--soc 0.6] [--departure-s 28800]

Josev's ``SimEVController`` reports constants (a fixed 200 kW "present power", a fixed departure) and its EVCC
never hands the charger's ACChargeLoopRes to the controller. This car changes only what a car must do for the test
to mean anything; everything on the wire stays Josev's:

- it follows the charger: its present active power is the last EVSETargetActivePower it received (read from the
  decoded ACChargeLoopRes, through the codec, Josev's pluggable seam), within its own limits;
- its pack integrates that power, and it reports its SoC (DisplayParameters), energy requests and departure time;
- commands on stdin: ``departure <seconds from now>`` (the driver changes plans), ``stop`` (the driver ends the
  session: PowerDelivery Stop, SessionStop).
- ``--pki DIR``: TLS as ISO 15118-20 has it (Josev's ENABLE_TLS_1_3: the car trusts DIR's V2G root and shows its
  OEM certificate); the car says which TLS version it got and whose certificate it verified (``connected``).

It prints JSON lines on stdout: ``ready`` (codec warm), ``sent``/``received`` (message name, ``t`` monotonic),
``target`` (the charger's EVSETargetActivePower, W) and ``power`` (what it reports), ``connected`` (the TCP or TLS
session: ``tls`` version or null, the charger's verified ``peer`` subject), ``ended``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from iso15118.evcc import EVCCHandler
from iso15118.evcc.controller.simulator import SimEVController
from iso15118.evcc.evcc_config import EVCCConfig
from iso15118.evcc.transport import tcp_client
from iso15118.shared.messages.enums import ControlMode, ServiceV20
from iso15118.shared.messages.iso15118_20.ac import (
    BPTDynamicACChargeLoopReqParams,
    DynamicACChargeLoopReqParams,
)
from iso15118.shared.messages.iso15118_20.common_messages import (
    DynamicScheduleExchangeReqParams,
    SelectedEnergyService,
)
from iso15118.shared.messages.iso15118_20.common_types import DisplayParameters, RationalNumber
from iso15118.shared.settings import SettingKey, load_shared_settings, shared_settings

from edge_agent.secc.codec import WatchedCodec


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def rational(value: float) -> RationalNumber:
    return RationalNumber.get_rational_repr(round(value))


def decimal(value: dict[str, Any] | None) -> float | None:
    """A RationalNumber as decoded JSON ({"Exponent": e, "Value": v}) -> float."""
    if not value:
        return None
    return float(value["Value"]) * 10.0 ** int(value["Exponent"])


class FollowingEV(SimEVController):
    """Josev's simulated EV, made to follow the charger's target power and to report a real pack."""

    def __init__(self, config: EVCCConfig, *, soc: float, capacity_wh: float, departure_s: float) -> None:
        super().__init__(config)
        self.soc = soc
        self.capacity_wh = capacity_wh
        self.target_soc = 0.8
        self.min_soc = 0.2
        self.max_charge_w = 11_000.0
        self.max_discharge_w = 11_000.0
        self.departure_at = time.monotonic() + departure_s
        self.power_w = 0.0
        self.stopping = False
        self._last = time.monotonic()

    # -- the car's physics --------------------------------------------------------------------------------------
    def follow(self, target_w: float) -> None:
        self._integrate()
        self.power_w = max(-self.max_discharge_w, min(self.max_charge_w, target_w))
        emit("target", w=target_w)

    def _integrate(self) -> None:
        now = time.monotonic()
        self.soc = min(1.0, max(0.0, self.soc + self.power_w * (now - self._last) / 3600.0 / self.capacity_wh))
        self._last = now

    def _departure_s(self) -> int:
        return max(0, round(self.departure_at - time.monotonic()))

    def _energy(self, soc: float) -> float:
        return (soc - self.soc) * self.capacity_wh

    # -- what Josev's EVCC asks its controller ------------------------------------------------------------------
    async def continue_charging(self) -> bool:
        return not self.stopping

    async def get_dynamic_se_params(self, selected_energy_service: SelectedEnergyService) -> Any:
        return DynamicScheduleExchangeReqParams(
            departure_time=self._departure_s(),
            min_soc=round(self.min_soc * 100),
            target_soc=round(self.target_soc * 100),
            ev_target_energy_request=rational(max(0.0, self._energy(self.target_soc))),
            ev_max_energy_request=rational(self._energy(1.0)),
            ev_min_energy_request=rational(self._energy(self.min_soc)),
            ev_max_v2x_energy_request=rational(self._energy(1.0)),
            ev_min_v2x_energy_request=rational(self._energy(self.min_soc)),
        )

    async def get_ac_charge_loop_params_v20(self, control_mode: ControlMode, selected_service: ServiceV20) -> Any:
        if control_mode != ControlMode.DYNAMIC or selected_service != ServiceV20.AC_BPT:
            return await super().get_ac_charge_loop_params_v20(control_mode, selected_service)
        self._integrate()
        emit("power", w=self.power_w, soc=self.soc, departure_s=self._departure_s())
        common = DynamicACChargeLoopReqParams(
            departure_time=self._departure_s(),
            ev_target_energy_request=rational(max(0.0, self._energy(self.target_soc))),
            ev_max_energy_request=rational(self._energy(1.0)),
            ev_min_energy_request=rational(self._energy(self.min_soc)),
            ev_max_charge_power=rational(self.max_charge_w),
            ev_min_charge_power=rational(0),
            ev_present_active_power=rational(self.power_w),
            ev_present_reactive_power=rational(0),
        )
        return BPTDynamicACChargeLoopReqParams(
            **common.dict(),
            ev_max_discharge_power=rational(self.max_discharge_w),
            ev_min_discharge_power=rational(0),
            ev_max_v2x_energy_request=rational(self._energy(1.0)),
            ev_min_v2x_energy_request=rational(self._energy(self.min_soc)),
        )

    async def get_display_params(self) -> DisplayParameters:
        self._integrate()
        return DisplayParameters(
            present_soc=round(self.soc * 100),
            min_soc=round(self.min_soc * 100),
            target_soc=round(self.target_soc * 100),
            charging_complete=False,
            battery_energy_capacity=rational(self.capacity_wh),
        )


def report_connections() -> None:
    """Say how each connection to the charger came out: Josev's EVCC opens it in ``TCPClient.create``."""
    create = tcp_client.TCPClient.create

    async def reporting(*args: Any, **kwargs: Any) -> Any:
        client = await create(*args, **kwargs)
        tls = client.writer.get_extra_info("ssl_object")
        peer = dict(rdn[0] for rdn in tls.getpeercert()["subject"]) if tls is not None else None
        emit("connected", tls=tls.version() if tls is not None else None, peer=peer)
        return client

    tcp_client.TCPClient.create = staticmethod(reporting)


def watch(codec: WatchedCodec, ev: FollowingEV) -> None:
    def sent(name: str, body: dict[str, Any], at: float) -> None:
        service = (body.get("SelectedEnergyTransferService") or {}).get("ServiceID")
        emit("sent", name=name, at=at, progress=body.get("ChargeProgress"), service=service)

    def received(name: str, body: dict[str, Any], at: float) -> None:
        emit("received", name=name, at=at, code=body.get("ResponseCode"))
        if name == "AC_ChargeLoopRes":
            params = body.get("BPT_Dynamic_AC_CLResControlMode") or body.get("Dynamic_AC_CLResControlMode") or {}
            target = decimal(params.get("EVSETargetActivePower"))
            if target is not None:
                ev.follow(target)

    codec.on_encoded.append(sent)
    codec.on_decoded.append(received)


async def commands(ev: FollowingEV) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "departure":
            ev.departure_at = time.monotonic() + float(line[1])
        elif line[0] == "stop":
            ev.stopping = True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iface", required=True)
    parser.add_argument("--soc", type=float, default=0.6)
    parser.add_argument("--capacity-wh", type=float, default=60_000.0)
    parser.add_argument("--departure-s", type=float, default=8 * 3600.0)
    parser.add_argument("--pki", default="", help="TLS 1.3 with this PKI directory (Josev's layout)")
    args = parser.parse_args()
    logging.getLogger("iso15118").setLevel(logging.WARNING)
    load_shared_settings()
    tls = bool(args.pki)
    shared_settings.update({SettingKey.MESSAGE_LOG_JSON: False, SettingKey.MESSAGE_LOG_EXI: False,
                            SettingKey.PKI_PATH: args.pki, SettingKey.ENABLE_TLS_1_3: tls})  # fmt: skip
    report_connections()
    config = EVCCConfig(
        supportedEnergyServices=["AC_BPT"],
        supportedProtocols=["ISO_15118_20_AC"],
        useTls=tls,
        enforceTls=tls,
        isCertInstallNeeded=False,
        chargeLoopCycle=1_000_000,
        chargeLoopDelay=0,
        sdpRetryCycles=3,
    )
    config.load_raw_values()
    codec = WatchedCodec()
    codec.warm_up()
    ev = FollowingEV(config, soc=args.soc, capacity_wh=args.capacity_wh, departure_s=args.departure_s)
    watch(codec, ev)
    emit("ready")
    reading = asyncio.ensure_future(commands(ev))  # held: a task nobody references can be collected mid-run
    try:
        await EVCCHandler(evcc_config=config, iface=args.iface, exi_codec=codec, ev_controller=ev).start()
    finally:
        reading.cancel()
        emit("ended")


if __name__ == "__main__":
    asyncio.run(main())
