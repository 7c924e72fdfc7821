"""Wiring: configuration -> hardware driver, frequency source, station, OCPP client; and ``run_agent``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.control import DroopSettings, Limits
from edge_agent.failsafe import SafeMode
from edge_agent.frequency import GridSample, MeterFrequency, ReplayFrequency, SimulatedFrequency
from edge_agent.hardware import Hardware
from edge_agent.hardware.sim import SimulatedCar, SimulatedHardware
from edge_agent.ocpp_client import OcppClient
from edge_agent.protection import EnterService, IslandingSettings
from edge_agent.runner import tick_forever
from edge_agent.sessionlog import configure_session_log, log_event
from edge_agent.station import Station, StationParams
from edge_agent.tls import client_context

LOG = logging.getLogger("edge_agent")


def station_params(cfg: AgentConfig) -> StationParams:
    c = cfg.control
    return StationParams(
        station_id=cfg.station_id,
        tick_s=c.tick_s,
        nominal_hz=c.nominal_hz,
        nominal_voltage_v=cfg.hardware.nominal_voltage_v,
        limits=Limits(
            max_charge_w=c.max_charge_w,
            max_discharge_w=c.max_discharge_w,
            rated_w=max(c.max_charge_w, c.max_discharge_w),
            ramp_w_per_s=c.ramp_w_per_s,
            floor_soc=c.floor_soc,
        ),
        droop=DroopSettings(
            nominal_hz=c.nominal_hz,
            deadband_over_hz=c.deadband_hz,
            deadband_under_hz=c.deadband_hz,
            over_droop=c.droop_pct / 100,
            under_droop=c.droop_pct / 100,
        ),
        default_mode=c.default_mode,
        meter_interval_s=cfg.ocpp.meter_interval_s,
        idle_meter_interval_s=cfg.ocpp.idle_meter_interval_s,
        heartbeat_s=cfg.ocpp.heartbeat_s,
        filter_samples=c.filter_samples,
        lookahead_s=c.lookahead_s,
        islanding_clearing_s=c.islanding_clearing_s,
        enter_service=EnterService(delay_s=c.enter_service_delay_s, ramp_s=c.enter_service_ramp_s),
        protection_category=cfg.protection.category,
        phases=cfg.protection.phases,
        islanding=IslandingSettings(*cfg.protection.resolved()),
        link_loss_timeout_s=cfg.failsafe.link_loss_timeout_s,
        hardware_timeout_s=cfg.hardware.io_timeout_s,
        hardware_recover_s=cfg.hardware.fault_recover_s,
        safe_mode=SafeMode(cfg.failsafe.mode, cfg.failsafe.charge_limit_w),
        vendor=cfg.vendor,
        model=cfg.model,
        message_attempts=cfg.ocpp.message_attempts,
        message_attempt_interval_s=cfg.ocpp.message_attempt_interval_s,
        message_attempt_interval_max_s=cfg.ocpp.message_attempt_interval_max_s,
        firmware_trust_anchor=cfg.firmware.trust_anchor,
        firmware_crl=cfg.firmware_crl(),
    )


def make_hardware(cfg: AgentConfig, clock: Clock, grid: SimulatedFrequency | ReplayFrequency | None) -> Hardware:
    hw = cfg.hardware
    if hw.driver == "modbus":
        from edge_agent.hardware.sunspec import SunSpecHardware

        return SunSpecHardware(
            host=hw.modbus_host, port=hw.modbus_port, unit_id=hw.modbus_unit_id, revert_s=hw.revert_s
        )
    if hw.driver == "can":
        from edge_agent.hardware.canbus import CanHardware

        return CanHardware(dbc=hw.can_dbc, interface=hw.can_interface, channel=hw.can_channel, revert_s=hw.revert_s)
    return SimulatedHardware(clock=clock, grid=grid, nominal_voltage_v=hw.nominal_voltage_v, ambient_c=hw.sim_ambient_c)


def build_station(cfg: AgentConfig, *, clock: Clock, store: OutboxStore) -> Station:
    source = cfg.frequency.source
    grid: SimulatedFrequency | ReplayFrequency | None = None
    if source == "sim":
        grid = SimulatedFrequency(nominal_hz=cfg.control.nominal_hz)
    elif source == "replay":
        grid = ReplayFrequency(path=cfg.frequency.replay_path or None, offset_s=cfg.frequency.replay_offset_s)
    hardware = make_hardware(cfg, clock, grid)
    station: Station
    if grid is not None:
        station = Station(
            station_params(cfg), clock=clock, hardware=hardware, grid=grid, outbox=Outbox(store, cfg.station_id)
        )
    else:
        meter = MeterFrequency(reading=lambda: station.last, nominal_voltage_v=cfg.hardware.nominal_voltage_v)

        def read_meter(now: float) -> GridSample:
            return meter(now)

        station = Station(station_params(cfg), clock=clock, hardware=hardware, grid=read_meter,
                          outbox=Outbox(store, cfg.station_id))  # fmt: skip
    return station


def start_site_meter(cfg: AgentConfig, station: Station, stop: asyncio.Event) -> asyncio.Future[None] | None:
    """The depot's main meter, when one is configured: read and reported as MeterValues for EVSE 0 until ``stop``."""
    sm = cfg.site_meter
    if not sm.driver:
        return None
    from edge_agent.hardware.sunspec_meter import SunSpecMeter
    from edge_agent.sitemeter import SiteMeterReporter

    meter = SunSpecMeter(sm.host, port=sm.port, unit_id=sm.unit_id, timeout_s=cfg.hardware.io_timeout_s,
                         import_positive=sm.import_positive)  # fmt: skip
    reporter = SiteMeterReporter(station, meter.read, interval_s=sm.interval_s, io_timeout_s=1.0)

    async def run() -> None:
        try:
            await reporter.run(stop)
        finally:
            await meter.close()

    return asyncio.ensure_future(run())


async def supervise(
    name: str,
    start: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    station_id: str,
    first_s: float = 2.0,
    max_s: float = 60.0,
) -> None:
    """Run ``start()`` until ``stop``: a failure (Java or the interface missing, the stack crashing) is logged with
    its exception and in the session log, then retried with a growing delay, so it is a clear error rather than a
    silent absence and recovers without restarting the agent (the grid-side loop runs on regardless)."""
    delay = first_s
    while not stop.is_set():
        try:
            await start()
            if stop.is_set():
                return
            LOG.warning("%s ended by itself; restarting in %.0f s", name, delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            LOG.exception("%s failed; retrying in %.0f s", name, delay)
            log_event(station_id, "component_failed", component=name, error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, max_s)


async def run_agent(cfg: AgentConfig, *, stop: asyncio.Event | None = None, clock: Clock | None = None) -> None:
    """Run one station until SIGTERM/SIGINT (or ``stop``); leaves the inverter at 0 W on the way out."""
    clock = clock or SystemClock()
    var_dir = Path(cfg.var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
    configure_session_log(cfg.session_log or var_dir / "session.log")
    store = OutboxStore(var_dir / "edge-agent.sqlite3")
    station = build_station(cfg, clock=clock, store=store)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    secc_task: asyncio.Future[None] | None = None
    if cfg.iso15118.interface:
        from edge_agent.secc.pki import SeccTlsFiles
        from edge_agent.secc.server import run_secc  # the iso15118 extra: only where it is configured

        iso = cfg.iso15118
        tls = None
        if iso.cert_file:
            tls = SeccTlsFiles(cert_file=Path(iso.cert_file), key_file=Path(iso.key_file),
                               ev_ca_file=Path(iso.ev_ca_file), key_passphrase=iso.key_passphrase)  # fmt: skip
        secc_task = asyncio.ensure_future(
            supervise(
                "ISO 15118 SECC",
                lambda: run_secc(station, iface=iso.interface, tls=tls, pki_dir=var_dir / "iso15118-pki"),
                stop,
                station_id=cfg.station_id,
            )
        )
    elif cfg.hardware.driver == "sim":
        hw = cfg.hardware
        station.plug_in(
            SimulatedCar(
                capacity_wh=hw.sim_capacity_wh,
                soc=hw.sim_initial_soc,
                target_soc=hw.sim_target_soc,
                departure=station.departure_in(hw.sim_departure_h),
            )
        )
    client = OcppClient(
        station,
        csms_url=cfg.csms_url,
        password=cfg.password,
        versions=cfg.versions,
        call_timeout_s=cfg.ocpp.call_timeout_s,
        reconnect_min_s=cfg.ocpp.reconnect_min_s,
        reconnect_max_s=cfg.ocpp.reconnect_max_s,
        ping_interval_s=cfg.ocpp.ping_interval_s,
        validate_messages=cfg.ocpp.validate_messages,
        ssl_context=(
            client_context(
                ca_file=cfg.tls.ca_file,
                cert_file=cfg.tls.cert_file,
                key_file=cfg.tls.key_file,
                key_passphrase=cfg.tls.key_passphrase,
            )
            if cfg.csms_url.startswith("wss://")
            else None
        ),
    )
    log_event(cfg.station_id, "agent_start", csms=client.url, driver=cfg.hardware.driver, source=cfg.frequency.source)
    client_task = asyncio.ensure_future(client.run())
    meter_task = start_site_meter(cfg, station, stop)
    try:
        await tick_forever([station], store, cfg.control.tick_s, stop=stop)
    finally:
        client.stop()
        if meter_task is not None:
            await asyncio.gather(meter_task, return_exceptions=True)
        if secc_task is not None:
            secc_task.cancel()
            await asyncio.gather(secc_task, return_exceptions=True)
        await station.firmware.close()  # a download in progress is abandoned; installing has no await to cut
        with contextlib.suppress(Exception):  # bounded: a hung device is left to its own revert timer
            async with asyncio.timeout(cfg.hardware.io_timeout_s):
                await station.hw.apply(0.0, True)
        await asyncio.gather(client_task, return_exceptions=True)
        await station.hw.close()
        store.close()
        log_event(cfg.station_id, "agent_stop")
