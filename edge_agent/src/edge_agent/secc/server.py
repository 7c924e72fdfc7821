"""Start Josev's SECC for one station: SDP (UDP 15118, IPv6 link-local multicast) and the V2G TCP server.

    task = asyncio.ensure_future(run_secc(station, iface="eth1"))

Sessions follow one another on the interface (Josev pauses SDP while a car is connected). The transport is plain
TCP: Josev's TLS wants its own PKI layout, not wired to the project's V2G PKI yet (README).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

from edge_agent import sessionlog as slog
from edge_agent.secc.codec import WatchedCodec
from edge_agent.secc.controller import StationEVSEController
from edge_agent.station import Station

LOG = logging.getLogger("edge_agent.secc")


def secc_config(*, iface: str) -> Any:
    settings = importlib.import_module("iso15118.secc.secc_settings")
    shared = importlib.import_module("iso15118.shared.settings")
    utils = importlib.import_module("iso15118.shared.utils")
    shared.shared_settings.update(
        {
            shared.SettingKey.PKI_PATH: "",
            shared.SettingKey.MESSAGE_LOG_JSON: False,
            shared.SettingKey.MESSAGE_LOG_EXI: False,
            shared.SettingKey.ENABLE_TLS_1_3: False,
        }
    )
    config = settings.Config()
    config.iface = iface
    config.log_level = "WARNING"
    config.enforce_tls = False
    config.free_charging_service = True
    config.free_cert_install_service = False
    config.allow_cert_install_service = False
    config.use_cpo_backend = False
    config.supported_protocols = utils.load_requested_protocols(["ISO_15118_20_AC"])
    config.supported_auth_options = utils.load_requested_auth_modes(["EIM"])
    config.standby_allowed = False
    return config


async def run_secc(
    station: Station,
    *,
    iface: str,
    codec: WatchedCodec | None = None,
    controller: StationEVSEController | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve cars on ``iface`` until cancelled. ``ready`` is set once the codec is warm and SDP listens."""
    secc = importlib.import_module("iso15118.secc")
    interface = importlib.import_module("iso15118.secc.controller.interface")
    loop = asyncio.get_running_loop()
    if codec is None:
        codec = await loop.run_in_executor(None, WatchedCodec)  # starts a Java VM: seconds
    warm_s = await loop.run_in_executor(None, codec.warm_up)
    controller = controller or StationEVSEController(station)
    codec.on_decoded.append(controller.on_decoded)
    codec.on_encoded.append(controller.on_encoded)
    await controller.set_status(interface.ServiceStatus.STARTING)
    slog.log_event(station.id, "secc_start", iface=iface, codec=codec.get_version(), warm_up_s=round(warm_s, 2))
    handler = secc.SECCHandler(exi_codec=codec, evse_controller=controller, config=secc_config(iface=iface))
    if ready is not None:
        loop.call_later(0.5, ready.set)  # Josev's start() never returns; its UDP server is up within a moment
    await handler.start(iface)
