"""A fleet of simulated chargers with cars, each a full edge agent (real OCPP over real WebSockets), in ONE process.

Light by design: one event loop, one shared tick timer for all stations (group-committed to one SQLite outbox),
one WebSocket reader and one sender task per station, no per-station timers. Station ids are
``<prefix>-<start_index>`` ... ``<prefix>-<start_index + count - 1>``.

Stable API (used by the VPP's regulation replay)::

    report = await run_fleet(count, csms_url, id_prefix, password, duration_s=60)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import Clock, SystemClock
from edge_agent.control import DroopSettings, Limits
from edge_agent.frequency import ReplayFrequency, SimulatedFrequency
from edge_agent.hardware.sim import SimulatedCar, SimulatedHardware
from edge_agent.ledger import Ledger
from edge_agent.ocpp_client import OcppClient
from edge_agent.runner import tick_forever
from edge_agent.sessionlog import log_event
from edge_agent.station import Station, StationParams
from edge_agent.tls import client_context

LOG = logging.getLogger("edge_agent.simulate")
STATUS_INTERVAL_S = 60.0  # how often the fleet logs its connected count, backlog and slowest round trips
CAR_MODELS = (  # (name, usable kWh, AC charge kW, AC discharge kW): typical bidirectional cars
    ("Nissan Leaf e+", 59_000.0, 7_400.0, 7_400.0),
    ("Kia EV6", 74_000.0, 11_000.0, 11_000.0),
    ("VW ID.4", 77_000.0, 11_000.0, 11_000.0),
    ("Ford F-150 Lightning", 123_000.0, 11_000.0, 9_600.0),
)


@dataclass
class FleetReport:
    count: int
    connected: int
    ticks: int
    duration_s: float
    queued: int  # messages still in the outbox (not yet answered by the CSMS)
    connects: int  # total successful connections (> count means reconnects happened)
    station_ids: list[str] = field(default_factory=list)


def make_car(rng: random.Random, clock: Clock) -> SimulatedCar:
    name, cap, chg, dis = rng.choice(CAR_MODELS)
    return SimulatedCar(
        capacity_wh=cap,
        soc=rng.uniform(0.35, 0.85),
        target_soc=rng.choice((0.8, 0.85, 0.9)),
        departure=clock.wall() + timedelta(hours=rng.uniform(3.0, 11.0)),
        max_charge_w=chg,
        max_discharge_w=dis,
        # 1 car in 100 answers ISO 15118 too slowly: the EVSE_ERR_TIMEOUT path is exercised in the demo.
        iso15118_latency_s=0.4 if rng.random() < 0.01 else rng.uniform(0.01, 0.08),
        model=name,
    )


class Fleet:
    """``count`` stations, their cars and OCPP clients. ``await fleet.run()`` until ``stop()``/``duration_s``."""

    def __init__(
        self,
        count: int,
        csms_url: str,
        id_prefix: str,
        password: str,
        *,
        start_index: int = 1,
        tick_s: float = 0.5,
        meter_interval_s: float = 1.0,
        idle_meter_interval_s: float = 1.0,
        freq_source: str = "replay",
        versions: list[str] | None = None,
        var_dir: str | Path | None = None,
        seed: int = 0,
        validate_messages: bool = False,
        connect_rate_per_s: float = 200.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        ping_interval_s: float | None = None,
        link_loss_timeout_s: float = 2.0,
        clock: Clock | None = None,
        ledger: str | Path | None = None,
        message_attempts: int = 3,
        message_attempt_interval_s: float = 10.0,
        ca_file: str = "",
        cert_dir: str | Path | None = None,
        key_passphrase: str = "",
    ) -> None:
        """``ca_file``/``cert_dir`` (wss://): the CA bundle to trust, and a directory of ``<station id>.pem`` /
        ``<station id>.key`` client certificates (security profile 3, e.g. from ``manage.py pki station-cert``);
        ``key_passphrase`` opens the keys when they are encrypted (``pki station-cert`` writes them so)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        # One ledger for the whole fleet: a line per CALLRESULT, appended by whichever station got it.
        self.ledger = Ledger(ledger) if ledger else None
        self.clock = clock or SystemClock()
        self.tick_s = tick_s
        self.connect_rate = connect_rate_per_s
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if var_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edge-fleet-")
            var_dir = self._tmp.name
        Path(var_dir).mkdir(parents=True, exist_ok=True)
        # One shared outbox file; fsync per commit is relaxed (WAL still survives a process crash).
        self.store = OutboxStore(Path(var_dir) / f"fleet-{id_prefix}.sqlite3", durable=False)
        rng = random.Random(seed)
        self.stations: list[Station] = []
        self.clients: list[OcppClient] = []
        for i in range(start_index, start_index + count):
            sid = f"{id_prefix}-{i}"
            grid: ReplayFrequency | SimulatedFrequency
            if freq_source == "replay":
                grid = ReplayFrequency(offset_s=rng.uniform(0, 86_400))
            else:
                grid = SimulatedFrequency(seed=rng.randrange(2**31))
            hw = SimulatedHardware(clock=self.clock, grid=grid, seed=rng.randrange(2**31),
                                   ambient_c=rng.uniform(12.0, 32.0))  # fmt: skip
            params = StationParams(
                station_id=sid,
                tick_s=tick_s,
                limits=Limits(),
                droop=DroopSettings(),
                meter_interval_s=meter_interval_s,
                idle_meter_interval_s=idle_meter_interval_s,
                link_loss_timeout_s=link_loss_timeout_s,
                message_attempts=message_attempts,
                message_attempt_interval_s=message_attempt_interval_s,
            )
            st = Station(params, clock=self.clock, hardware=hw, grid=grid,
                         outbox=Outbox(self.store, sid, defer_acks=True))  # fmt: skip
            self.stations.append(st)
            self.clients.append(
                OcppClient(
                    st,
                    csms_url=csms_url,
                    password=password,
                    versions=versions,
                    reconnect_min_s=reconnect_min_s,
                    reconnect_max_s=reconnect_max_s,
                    ping_interval_s=ping_interval_s,
                    validate_messages=validate_messages,
                    seed=rng.randrange(2**31),
                    ledger=self.ledger,
                    ssl_context=_station_tls(csms_url, sid, ca_file, cert_dir, key_passphrase),
                )
            )
        self._rng = rng
        self._stop = asyncio.Event()
        self._next_presence_check = 0.0
        self._next_status = 0.0

    def stop(self) -> None:
        self._stop.set()

    def _before_tick(self, now: float) -> None:
        self._cars_come_and_go(now)
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL_S
            self._status()

    def _status(self) -> None:
        """One ``fleet_status`` line a minute: a backlog or slow CSMS answers show up while it happens."""
        now = self.clock.monotonic()
        peaks = sorted(st.link.rtt_peak_take(now) for st in self.stations)
        log_event(
            "fleet",
            "fleet_status",
            connected=sum(1 for st in self.stations if st.link.connected),
            queued=sum(len(st.outbox) for st in self.stations),
            queued_max=max(len(st.outbox) for st in self.stations),
            rtt_peak_p50_ms=round(peaks[len(peaks) // 2] * 1000),
            rtt_peak_max_ms=round(peaks[-1] * 1000),
        )

    def _cars_come_and_go(self, now: float) -> None:
        """Every few seconds: cars past their departure leave; empty chargers get a new car now and then."""
        if now < self._next_presence_check:
            return
        self._next_presence_check = now + 5.0
        wall = self.clock.wall()
        for st in self.stations:
            car = st.car
            if car is not None and car.departure is not None and wall >= car.departure:
                st.unplug()
            elif car is None and self._rng.random() < 0.02:
                st.plug_in(make_car(self._rng, self.clock))

    async def _start_clients(self) -> list[asyncio.Task[None]]:
        tasks = []
        for i, client in enumerate(self.clients):
            tasks.append(asyncio.ensure_future(client.run()))
            if self.connect_rate > 0 and (i + 1) % max(1, int(self.connect_rate / 20)) == 0:
                await asyncio.sleep(0.05)  # spread the handshakes: connect_rate per second
            if self._stop.is_set():
                break
        return tasks

    async def run(self, duration_s: float | None = None) -> FleetReport:
        t0 = time.monotonic()
        for st in self.stations:
            st.plug_in(make_car(self._rng, self.clock))
        ticker = asyncio.ensure_future(
            tick_forever(self.stations, self.store, self.tick_s, stop=self._stop, before_tick=self._before_tick)
        )
        client_tasks = await self._start_clients()
        # Thousands of long-lived station objects: keep them out of the cyclic GC's scans (full collections
        # otherwise stall the shared loop for hundreds of ms) and collect the young generation less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log_event("fleet", "fleet_started", count=len(self.stations))
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), duration_s)
        finally:
            connected = sum(1 for st in self.stations if st.link.connected)
            self._stop.set()
            ticks = await ticker
            for client in self.clients:
                client.stop()
            await asyncio.gather(*client_tasks, return_exceptions=True)
            self.store.flush()
            report = FleetReport(
                count=len(self.stations),
                connected=connected,
                ticks=ticks,
                duration_s=time.monotonic() - t0,
                queued=self.store.count(),
                connects=sum(c.connects for c in self.clients),
                station_ids=[st.id for st in self.stations],
            )
            self.store.close()
            if self.ledger is not None:
                self.ledger.close()
            if self._tmp is not None:
                self._tmp.cleanup()
        return report


def _station_tls(
    csms_url: str, station_id: str, ca_file: str, cert_dir: str | Path | None, key_passphrase: str
) -> ssl.SSLContext | None:
    if not csms_url.startswith("wss://"):
        return None
    if cert_dir is None:
        return client_context(ca_file=ca_file)
    base = Path(cert_dir) / station_id
    return client_context(
        ca_file=ca_file, cert_file=f"{base}.pem", key_file=f"{base}.key", key_passphrase=key_passphrase
    )


async def run_fleet(
    count: int,
    csms_url: str,
    id_prefix: str,
    password: str,
    *,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    start_index: int = 1,
    tick_s: float = 0.5,
    meter_interval_s: float = 1.0,
    idle_meter_interval_s: float = 1.0,
    freq_source: str = "replay",
    versions: list[str] | None = None,
    var_dir: str | Path | None = None,
    seed: int = 0,
    ledger: str | Path | None = None,
) -> FleetReport:
    """Run ``count`` simulated agents against ``csms_url`` (``ws://host:port/ocpp``; the id is appended).

    Returns when ``duration_s`` has passed or ``stop`` is set (None/None: runs until cancelled). Each agent boots,
    reports status, starts a transaction for its car (NotifyEVChargingNeeds with departure and V2X parameters)
    and sends meter values every ``meter_interval_s`` while regulating (``idle_meter_interval_s`` otherwise).
    Agents obey the CSMS's charging profiles (CentralSetpoint etc.), AFRR signals and DER controls.
    ``ledger``: a file to append one line per acknowledged CALL to (:mod:`edge_agent.ledger`).
    """
    fleet = Fleet(
        count,
        csms_url,
        id_prefix,
        password,
        start_index=start_index,
        tick_s=tick_s,
        meter_interval_s=meter_interval_s,
        idle_meter_interval_s=idle_meter_interval_s,
        freq_source=freq_source,
        versions=versions,
        var_dir=var_dir,
        seed=seed,
        ledger=ledger,
    )
    if stop is not None:
        watcher = asyncio.ensure_future(_relay(stop, fleet))
        try:
            return await fleet.run(duration_s)
        finally:
            watcher.cancel()
    return await fleet.run(duration_s)


async def _relay(stop: asyncio.Event, fleet: Fleet) -> None:
    await stop.wait()
    fleet.stop()
