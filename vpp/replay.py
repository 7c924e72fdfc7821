"""``regulation replay``: the whole regulation path end to end on a signal file, with simulated edge agents.

1. a live CSMS: Daphne in a subprocess on a free port, the project's settings and database (or ``--csms URL``);
2. N stations provisioned, N simulated edge agents (``edge-agent simulate``, another process) connected to it;
3. once every agent has booted, started its transaction and reported its needs and SoC: a fleet of N vehicles
   (plug sessions on those stations) and a regulation Award for its portfolio (``fleet-<id>``);
4. the signal followed in real time (``speed`` > 1 compresses time) over the utility WebSocket ``ws/regulation``,
   i.e. through the real intake, dispatcher, fan-out and stations;
5. one output row per signal value (2 s of signal time) from what is stored -- dispatch records and the stations'
   MeterValues -- and the PJM performance score (markets.regulation.scoring) over the replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import websockets.asyncio.client
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction
from rest_framework.authtoken.models import Token

from chargers.models import EvChargingNeeds, MeterValue, Station, Transaction
from chargers.services.provisioning import stations_add
from fleet.models import Fleet, Organisation, PlanSource, Vehicle
from fleet.numerics.arrays import power_bounds
from fleet.services import departure_plan_set, session_open, session_set_limits, soc_report
from markets.models import Award, Bid, Product
from markets.regulation import scoring
from markets.regulation.selectors import charge_point_power
from markets.regulation.signals import SignalTrace
from vpp.dispatch_selectors import dispatch_state_load
from vpp.models import Dispatch

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("pjm", "reg-d")
SOC_MAX_AGE_S = 30.0
POWER_MAX_AGE_S = 10.0


class ReplayError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def live_csms(csms_url: str | None, *, workers: int = 1) -> Iterator[tuple[str, str]]:
    """(ws base URL ``ws://host:port``, http base URL); starts and stops a Daphne subprocess unless given one.

    ``workers`` > 1 serves from that many Daphne processes (``vpp.serve --workers``; needs REDIS_URL).
    """
    if csms_url:
        base = csms_url.rstrip("/").removesuffix("/ocpp")
        yield base.replace("http://", "ws://").replace("https://", "wss://"), base.replace("ws", "http", 1)
        return
    port = free_port()
    db_name = str(settings.DATABASES["default"]["NAME"])
    # Our own interpreter and module; the database name comes from our settings.
    argv = [sys.executable, "-m", "vpp.serve", str(port), db_name, "0", "--workers", str(workers)]
    process = subprocess.Popen(argv, cwd=ROOT)  # noqa: S603
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise ReplayError(f"the CSMS exited with {process.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise ReplayError("the CSMS did not listen within 30 s")
            time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def simulated_agents(
    *, count: int, ws_base: str, prefix: str, password: str, versions: str = "2.1", log_to: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``edge-agent simulate`` in its own process (its own core), stopped with SIGTERM at the end.

    ``log_to``: keep the agents' session log (JSON lines, with a ``fleet_status`` line a minute) at this path.
    """
    exe = shutil.which("edge-agent", path=str(Path(sys.executable).parent)) or shutil.which("edge-agent")
    if exe is None:
        raise ReplayError("the edge-agent command is not installed (pip install ./edge_agent)")
    var_dir = tempfile.mkdtemp(prefix="replay-agents-")
    process = subprocess.Popen(  # noqa: S603 - the installed edge-agent next to our interpreter
        [
            exe,
            "simulate",
            "--count",
            str(count),
            "--csms",
            f"{ws_base}/ocpp",
            "--id-prefix",
            prefix,
            "--password",
            password,
            "--ocpp",
            versions,
            "--var-dir",
            var_dir,
            "--tick",
            "0.25",
        ],
        cwd=ROOT,
    )
    try:
        yield process
    finally:
        _stop(process)
        try:
            if log_to is not None:
                shutil.copyfile(Path(var_dir) / f"edge-fleet-{prefix}.log", log_to)
        except OSError as exc:  # the log is a by-product: losing it must not hide how the replay ended
            LOG.warning("could not keep the agents' session log at %s: %s", log_to, exc)
        finally:
            shutil.rmtree(var_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------------------------


def stations_provision(*, count: int, prefix: str, password: str) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(1, count + 1)]
    stations_add(station_ids=ids, password=password, update=True)
    return ids


def utility_token(username: str = "replay-utility") -> str:
    """API token of a (non-staff) utility user holding the signal-intake permission."""
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"is_active": True})
    user.user_permissions.add(Permission.objects.get(codename="submit_regulation_signal"))
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


@dataclass
class StationReady:
    station_id: str
    transaction_id: str
    started_at: datetime | None
    soc_pct: int
    needs: EvChargingNeeds


def stations_ready(station_ids: list[str]) -> list[StationReady]:
    """The stations that are online with an active transaction, their EV's needs and a SoC reading."""
    ready = []
    stations = {s.pk: s for s in Station.objects.filter(station_id__in=station_ids, online=True)}
    txs = {t.station_id: t for t in Transaction.objects.filter(station_id__in=stations, active=True)}
    needs: dict[int, EvChargingNeeds] = {}
    for row in EvChargingNeeds.objects.filter(station_id__in=stations).order_by("received_at"):
        needs[row.station_id] = row
    socs: dict[int, int] = {}
    for station_pk, value in (
        MeterValue.objects.filter(station_id__in=stations, measurand="SoC").order_by("timestamp", "id")
    ).values_list("station_id", "value"):
        socs[station_pk] = value
    for pk, station in stations.items():
        if pk in txs and pk in needs and pk in socs and needs[pk].max_discharge_power_w is not None:
            tx = txs[pk]
            ready.append(StationReady(station.station_id, tx.transaction_id, tx.started_at, socs[pk], needs[pk]))
    return ready


def stations_reported_since(*, station_ids: list[str], since: datetime) -> int:
    """How many of the stations have a stored meter value taken at or after ``since`` (station clock)."""
    readings = MeterValue.objects.filter(station__station_id__in=station_ids, timestamp__gte=since)
    return readings.values("station_id").distinct().count()


def meter_values_await(*, station_ids: list[str], since: datetime, timeout_s: float) -> int:
    """Wait until every station's meter values reach ``since`` (their agents catching up on queued messages), at
    most ``timeout_s``; returns how many stations did. The response is measured from stored meter values: scored
    before they arrive, the last minutes of a replay read as no response at all.
    """
    deadline = time.monotonic() + timeout_s
    while (done := stations_reported_since(station_ids=station_ids, since=since)) < len(station_ids):
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return done


def capacity_estimate_wh(needs: EvChargingNeeds, soc_pct: int) -> int:
    """Usable capacity from what the EV reported: energy to full over the room left (ISO 15118 V2X parameters)."""
    to_full = needs.ev_max_energy_request_wh or 0
    if needs.target_soc and needs.ev_target_energy_request_wh and needs.target_soc < 100:
        # (full - target) is known exactly in Wh and in %: the most precise estimate.
        spread = to_full - needs.ev_target_energy_request_wh
        if spread > 0 and needs.ev_target_energy_request_wh > 0:
            return round(spread * 100 / (100 - needs.target_soc))
    room = max(100 - soc_pct, 1)
    return max(round(to_full * 100 / room), 1000)


@transaction.atomic
def fleet_register(ready: list[StationReady], *, name: str) -> Fleet:
    """One vehicle per ready station, plugged in there now, with its reported SoC, limits and departure plan."""
    org, _ = Organisation.objects.get_or_create(slug="replay", defaults={"name": "Regulation replay"})
    fleet = Fleet.objects.create(organisation=org, name=name)
    now = datetime.now(UTC)
    for item in ready:
        needs = item.needs
        capacity = capacity_estimate_wh(needs, item.soc_pct)
        vehicle = Vehicle.objects.create(
            fleet=fleet,
            name=f"{item.station_id} car",
            model="simulated",
            usable_capacity_wh=capacity,
            ac_max_charge_w=needs.max_charge_power_w or needs.ev_max_power_w or 7400,
            ac_max_discharge_w=needs.max_discharge_power_w or 0,
        )
        session = session_open(
            vehicle=vehicle,
            station_id=item.station_id,
            evse_id=needs.evse_id,
            transaction_id=item.transaction_id,
            matched_by="manual",
            started_at=item.started_at or now,
        )
        session_set_limits(
            session=session, ev_max_charge_w=needs.max_charge_power_w, ev_max_discharge_w=needs.max_discharge_power_w
        )
        soc_report(vehicle=vehicle, soc_wh=capacity * item.soc_pct // 100, valid_at=now)
        if needs.departure_time is not None and needs.target_soc is not None:
            departure_plan_set(
                vehicle=vehicle,
                departure_at=needs.departure_time,
                target_soc_pct=needs.target_soc,
                source=PlanSource.STATION,
                session=session,
            )
    return fleet


def capacity_offer_w(*, product: Product, portfolio: str, share: float = 0.4) -> int:
    """What to offer: ``share`` of the fleet's symmetric range around its must-charge level, in whole kW."""
    state = dispatch_state_load(product_id=product.pk, portfolio=portfolio, now=time.time())
    if not len(state.fleet):
        raise ReplayError("no vehicle is ready to regulate")
    bounds = power_bounds(state.fleet, now=time.time(), duration_s=settings.DISPATCH_HOLD_S)
    lo, hi = int(bounds.lo.sum()), int(bounds.hi.sum())
    base = min(max(state.preferred_basepoint_w, lo), hi)
    room = min(hi - base, base - lo)
    if room < 2 * share * (hi - lo) / 2:  # the must-charge level sits near an edge: regulate around the middle
        room = (hi - lo) // 2
    return max(int(room * share) // 1000 * 1000, 1000)


@transaction.atomic
def award_create(*, product: Product, portfolio: str, capacity_w: int, start: datetime, end: datetime) -> Award:
    """A simulated market award of ``capacity_w`` of regulation for the replay's window."""
    ref = f"replay-{secrets.token_hex(6)}"
    bid = Bid.objects.create(
        product=product,
        portfolio=portfolio,
        interval_start=start,
        interval_end=end,
        quantity_w=capacity_w,
        price=Decimal("30.00"),
        status=Bid.Status.AWARDED,
        external_ref=ref,
    )
    return Award.objects.create(
        bid=bid,
        product=product,
        portfolio=portfolio,
        interval_start=start,
        interval_end=end,
        awarded_w=capacity_w,
        clearing_price=Decimal("30.00"),
        source=Award.Source.SIMULATED,
        source_ref=ref,
        received_at=datetime.now(UTC),
    )


# --------------------------------------------------------------------------------------------------------------
# Following the signal
# --------------------------------------------------------------------------------------------------------------


async def signal_follow(
    *,
    ws_base: str,
    token: str,
    product: str,
    portfolio: str,
    trace: SignalTrace,
    t0: float,
    speed: float,
    limit_s: float,
) -> list[dict[str, Any]]:
    """Send each value at its (scaled) time over ``ws/regulation``; returns the intake's answers."""
    answers: list[dict[str, Any]] = []
    async with websockets.asyncio.client.connect(
        f"{ws_base}/ws/regulation", additional_headers={"Authorization": f"Token {token}"}, open_timeout=10
    ) as ws:

        async def read() -> None:
            async for frame in ws:
                answers.append(json.loads(frame))

        reader = asyncio.ensure_future(read())
        start = float(trace.offsets_s[0])
        for offset, value in zip(trace.offsets_s.tolist(), trace.values.tolist(), strict=True):
            if offset - start > limit_s:
                break
            due = t0 + (offset - start) / speed
            await asyncio.sleep(max(due - time.time(), 0.0))
            at = datetime.fromtimestamp(due, UTC).isoformat()
            await ws.send(json.dumps({"product": product, "portfolio": portfolio, "value": value, "at": at}))
        await asyncio.sleep(1.0)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return answers


# --------------------------------------------------------------------------------------------------------------
# Results from what is stored
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ReplayRows:
    times_s: np.ndarray
    signal: np.ndarray
    setpoint_w: np.ndarray
    basepoint_w: np.ndarray
    fleet_power_w: np.ndarray
    min_soc_pct: np.ndarray
    capacity_w: int
    meter_values: int
    duplicates: int


def _held(times: np.ndarray, values: np.ndarray, grid: np.ndarray, max_age_s: float) -> np.ndarray:
    return scoring.sample_hold(times, values, grid, max_age_s=max_age_s)


def replay_rows(
    *,
    product: Product,
    portfolio: str,
    station_ids: list[str],
    times_s: np.ndarray,
    signal: np.ndarray,
    sample_at_s: float = 0.0,
) -> ReplayRows:
    """One row per signal value; the fleet's metered response (power, lowest SoC) is read ``sample_at_s`` after
    the value's instant (0: at the instant itself, when the answer to that value cannot have been metered yet)."""
    start = datetime.fromtimestamp(float(times_s[0]), UTC)
    end = datetime.fromtimestamp(float(times_s[-1]) + 1.0 + sample_at_s, UTC)
    sampled_s = times_s + sample_at_s
    dispatches = list(
        Dispatch.objects.filter(
            product=product, portfolio=portfolio, signal_at__gte=start - timedelta(seconds=1), signal_at__lt=end
        )
        .order_by("signal_at")
        .values_list("signal_at", "setpoint_w", "basepoint_w", "capacity_w")
    )
    d_t = np.array([d[0].timestamp() for d in dispatches], dtype=float)
    # The dispatch of a value is stored at that value's instant: hold on the grid with a 1-ms guard against the
    # rounding of instants through ISO strings and the database.
    setpoint = _held(d_t, np.array([d[1] for d in dispatches], dtype=float), times_s + 0.001, 1e9)
    basepoint = _held(d_t, np.array([d[2] for d in dispatches], dtype=float), times_s + 0.001, 1e9)
    capacity = max((d[3] for d in dispatches), default=0)
    pks = list(Station.objects.filter(station_id__in=station_ids).values_list("pk", flat=True))
    series = charge_point_power(start=start, end=end, stations=pks)
    power = np.zeros(times_s.shape)
    for s in series:
        power += np.nan_to_num(_held(s.times_s, s.values, sampled_s, POWER_MAX_AGE_S), nan=0.0)
    min_soc = np.full(times_s.shape, np.nan)
    soc_rows = (
        MeterValue.objects.filter(
            station_id__in=pks,
            measurand="SoC",
            timestamp__gte=start - timedelta(seconds=SOC_MAX_AGE_S),
            timestamp__lt=end,
        )
        .order_by("station_id", "timestamp", "id")
        .values_list("station_id", "timestamp", "value")
    )
    by_station: dict[int, list[tuple[float, int]]] = {}
    for station_pk, ts, value in soc_rows:
        by_station.setdefault(station_pk, []).append((ts.timestamp(), value))
    for readings in by_station.values():
        at, values = np.array([r[0] for r in readings]), np.array([r[1] for r in readings], dtype=float)
        held = _held(at, values, sampled_s, SOC_MAX_AGE_S)
        min_soc = np.fmin(min_soc, held)
    return ReplayRows(
        times_s=times_s,
        signal=signal,
        setpoint_w=setpoint,
        basepoint_w=basepoint,
        fleet_power_w=power,
        min_soc_pct=min_soc,
        capacity_w=int(capacity),
        meter_values=sum(len(s.meter_ids) for s in series),
        duplicates=sum(s.duplicates for s in series),
    )


def rows_write(path: str | Path, rows: ReplayRows) -> int:
    """One CSV row per signal value. Power columns in kW, + charging (the fleet's grid power)."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "time",
                "signal",
                "fleet_setpoint_kw",
                "fleet_response_kw",
                "min_soc_pct",
                "basepoint_kw",
                "regulation_requested_kw",
                "regulation_delivered_kw",
            ]
        )
        for i, t in enumerate(rows.times_s.tolist()):
            base = rows.basepoint_w[i]
            writer.writerow(
                [
                    datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds"),
                    f"{rows.signal[i]:.5f}",
                    _kw(rows.setpoint_w[i]),
                    _kw(rows.fleet_power_w[i]),
                    "" if math.isnan(rows.min_soc_pct[i]) else int(rows.min_soc_pct[i]),
                    _kw(base),
                    _kw(rows.signal[i] * rows.capacity_w),
                    _kw(base - rows.fleet_power_w[i]),
                ]
            )
    return len(rows.times_s)


def _kw(watts: float) -> str:
    return "" if math.isnan(watts) else f"{watts / 1000:.3f}"


def replay_score(rows: ReplayRows, *, speed: float) -> scoring.PerformanceScore:
    """PJM score on 10-s rows of signal time (10/speed s of wall time), from the stored rows above.

    Regulation requested = capacity x signal; response = basepoint - metered fleet power (PJM: + = up).
    """
    period = scoring.SAMPLE_PERIOD_S / speed
    t = rows.times_s
    grid = scoring.scoring_grid(float(t[0]), int((t[-1] - t[0]) // period) + 1, period)
    if grid.size <= scoring.LOOKAHEAD_ROWS:
        raise ReplayError(
            f"{grid.size} scoring rows: a score needs more than {scoring.LOOKAHEAD_ROWS} (> 5 min of signal)"
        )
    reg = scoring.sample_hold(t, rows.signal, grid, max_age_s=period) * rows.capacity_w / 1e6
    response = scoring.sample_hold(t, rows.basepoint_w - rows.fleet_power_w, grid, max_age_s=period) / 1e6
    return scoring.performance_score(np.nan_to_num(reg), np.nan_to_num(response))


def product_default() -> Product:
    """The RegD product; (re)creates the market defaults if they are missing (e.g. a database flushed since migrate)."""
    from markets.defaults import ensure_defaults
    from markets.models import DepotSite, MarketOperator

    ensure_defaults(MarketOperator, DepotSite, Product)
    return Product.objects.select_related("operator").get(operator__code=PRODUCT[0], code=PRODUCT[1])


def env_password() -> str:
    return os.environ.get("REPLAY_STATION_PASSWORD") or secrets.token_urlsafe(18)
