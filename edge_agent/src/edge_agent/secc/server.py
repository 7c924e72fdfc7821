"""Start Josev's SECC for one station: SDP (UDP 15118, IPv6 link-local multicast) and the V2G TCP server.

    task = asyncio.ensure_future(run_secc(station, iface="eth1"))

Sessions follow one another on the interface (Josev pauses SDP while a car is connected). With ``tls`` (the SECC
certificate from ``manage.py pki secc-cert``, its key, the OEM roots the cars' certificates chain to) every session
runs over TLS 1.3 with the car's certificate required, as ISO 15118-20 asks; without it, plain TCP (development, and
cars that cannot do TLS) and a warning in the session log.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import sessionlog as slog
from edge_agent.secc.codec import WatchedCodec
from edge_agent.secc.controller import StationEVSEController
from edge_agent.secc.pki import SeccTlsError, SeccTlsFiles, josev_pki_dir
from edge_agent.station import Station

LOG = logging.getLogger("edge_agent.secc")


def secc_config(*, iface: str, pki_path: Path | None = None) -> Any:
    """Josev's SECC settings; ``pki_path`` (from ``josev_pki_dir``): TLS 1.3 only, the car's certificate required."""
    settings = importlib.import_module("iso15118.secc.secc_settings")
    shared = importlib.import_module("iso15118.shared.settings")
    utils = importlib.import_module("iso15118.shared.utils")
    shared.shared_settings.update(
        {
            shared.SettingKey.PKI_PATH: str(pki_path or ""),
            shared.SettingKey.MESSAGE_LOG_JSON: False,
            shared.SettingKey.MESSAGE_LOG_EXI: False,
            # Josev's switch for ISO 15118-20's TLS: 1.3, mutual (the car's OEM chain verified against oemRootCACert)
            shared.SettingKey.ENABLE_TLS_1_3: pki_path is not None,
        }
    )
    if pki_path is not None:
        _tls_1_3_only()
    config = settings.Config()
    config.iface = iface
    config.log_level = "WARNING"
    config.enforce_tls = pki_path is not None  # a car asking for plain TCP is answered with TLS
    config.free_charging_service = True
    config.free_cert_install_service = False
    config.allow_cert_install_service = False
    config.use_cpo_backend = False
    config.supported_protocols = utils.load_requested_protocols(["ISO_15118_20_AC"])
    config.supported_auth_options = utils.load_requested_auth_modes(["EIM"])
    config.standby_allowed = False
    return config


def _tls_1_3_only() -> None:
    """Josev's TLS server context, held to TLS 1.3 (its own allows 1.2 for ISO 15118-2), and never None: Josev falls
    back to plain TCP when it cannot build one; here the session fails instead. Josev's TCP server looks the
    function up in its own module, so that is where it is replaced (once per process)."""
    tcp_server = importlib.import_module("iso15118.secc.transport.tcp_server")
    josev: Callable[[bool], ssl.SSLContext | None] = tcp_server.get_ssl_context
    if getattr(josev, "tls_1_3_only", False):
        return

    def context(server_side: bool) -> ssl.SSLContext:
        ctx = josev(server_side)
        if ctx is None:
            raise SeccTlsError("Josev could not load the SECC certificate or key: no plain TCP in its place")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx

    context.tls_1_3_only = True  # type: ignore[attr-defined]
    setattr(tcp_server, "get_ssl_context", context)  # noqa: B010 - a module attribute Josev looks up by name


async def run_secc(
    station: Station,
    *,
    iface: str,
    tls: SeccTlsFiles | None = None,
    pki_dir: Path | None = None,
    codec: WatchedCodec | None = None,
    controller: StationEVSEController | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve cars on ``iface`` until cancelled. ``ready`` is set once the codec is warm and SDP listens.

    ``tls``: the SECC's certificate, key and the cars' OEM roots, written for Josev into ``pki_dir`` (the agent's,
    e.g. ``<var_dir>/iso15118-pki``); raises SeccTlsError at once when they cannot serve TLS."""
    secc = importlib.import_module("iso15118.secc")
    interface = importlib.import_module("iso15118.secc.controller.interface")
    pki_path = None
    if tls is not None:
        if pki_dir is None:
            raise SeccTlsError("run_secc: tls needs a pki_dir for Josev's copy of the files")
        pki_path = josev_pki_dir(tls, pki_dir)
    else:
        hint = "ISO 15118-20 asks for TLS 1.3: set [iso15118] cert_file, key_file, ev_ca_file"
        slog.log_event(station.id, "secc_plain_tcp", level=logging.WARNING, message=hint)
    loop = asyncio.get_running_loop()
    if codec is None:
        codec = await loop.run_in_executor(None, WatchedCodec)  # starts a Java VM: seconds
    warm_s = await loop.run_in_executor(None, codec.warm_up)
    controller = controller or StationEVSEController(station)
    codec.on_decoded.append(controller.on_decoded)
    codec.on_encoded.append(controller.on_encoded)
    await controller.set_status(interface.ServiceStatus.STARTING)
    slog.log_event(station.id, "secc_start", iface=iface, codec=codec.get_version(), warm_up_s=round(warm_s, 2),
                   transport="TLS 1.3" if pki_path else "TCP")  # fmt: skip
    config = secc_config(iface=iface, pki_path=pki_path)
    handler = secc.SECCHandler(exi_codec=codec, evse_controller=controller, config=config)
    if ready is not None:
        loop.call_later(0.5, ready.set)  # Josev's start() never returns; its UDP server is up within a moment
    await handler.start(iface)
