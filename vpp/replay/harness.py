"""``regulation replay``: the whole regulation path end to end on a signal file, with simulated edge agents.

1. a live CSMS: Daphne in a subprocess on a free port, the project's settings and database (or ``--csms URL``);
2. N stations provisioned, N simulated edge agents (``edge-agent simulate``, another process) connected to it;
3. once every agent has booted, started its transaction and reported its needs and SoC: a fleet of N vehicles
   (plug sessions on those stations) and a regulation Award for its portfolio (``fleet-<id>``);
4. the signal followed in real time (``speed`` > 1 compresses time) over the utility WebSocket ``ws/regulation``,
   i.e. through the real intake, dispatcher, fan-out and stations;
5. then :mod:`vpp.replay.results` reads one row per signal value (2 s of signal time) from what is stored --
   dispatch records and the stations' MeterValues -- and the PJM performance score (markets.regulation.scoring).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import websockets.asyncio.client
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction
from django.utils import timezone

from chargers.models import EvChargingNeeds, MeterValue, Station, Transaction
from chargers.services.provisioning import stations_add
from fleet.models import ApiKey, ApiScope, Fleet, Organisation, PlanSource, Vehicle
from fleet.numerics.arrays import power_bounds
from fleet.services.accounts import api_key_issue, api_key_revoke
from fleet.services.vehicles import departure_plan_set, session_open, session_set_limits, soc_report
from markets.defaults import ensure_defaults
from markets.models import Award, Bid, BidEvent, DepotSite, MarketOperator, Product
from markets.regulation.models import PerformanceScoreRecord, RegulationBasepoint, RegulationSignal, Settlement
from markets.regulation.signals import SignalTrace
from vpp.dispatch.selectors import dispatch_state_load
from vpp.models import Dispatch

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # the repository: the CSMS and the agents run from there
PRODUCT = ("pjm", "reg-d")


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
            "--ocpp",
            versions,
            "--var-dir",
            var_dir,
            "--tick",
            "0.25",
        ],
        cwd=ROOT,
        # The password in the environment, not argv (visible in `ps`; one starting with "-" reads as an option).
        env={**os.environ, "EDGE_AGENT_PASSWORD": password},
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


REPLAY_KEY_NAME = "replay"
REPLAY_ORG = "replay"


def utility_token(username: str = "replay-utility") -> str:
    """A fresh API key (scope ``signal``, a day long) of a (non-staff) utility user holding the signal-intake
    permission; the user's earlier replay keys are revoked (keys are hashed: an old one cannot be read back)."""
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"is_active": True})
    user.user_permissions.add(Permission.objects.get(codename="submit_regulation_signal"))
    for old in ApiKey.objects.filter(user=user, name=REPLAY_KEY_NAME, revoked=False):
        api_key_revoke(key=old)
    _key, raw = api_key_issue(
        user=user,
        scopes=[ApiScope.SIGNAL],
        expires_at=timezone.now() + timedelta(days=1),
        name=REPLAY_KEY_NAME,
    )
    return raw


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
    org, _ = Organisation.objects.get_or_create(slug=REPLAY_ORG, defaults={"name": "Regulation replay"})
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


@transaction.atomic
def replay_cleanup(*, station_ids: list[str], portfolio: str | None, fleet_id: int | None) -> dict[str, int]:
    """Delete what a replay created so it does not linger in the product's views (the demo's dashboard, bids, revenue
    and station lists): its stations (with their readings, transactions and messages), its fleet and cars, its bids,
    awards, signal, basepoints, dispatch records and any score or settlement made of them meanwhile (the hourly task
    may settle a replay that runs against a live server). The result CSV and the agents' log are kept."""
    deleted: dict[str, int] = {}

    def count(label: str, result: tuple[int, dict[str, int]]) -> None:
        deleted[label] = result[0]

    if portfolio:
        awards = Award.objects.filter(portfolio=portfolio)
        count("settlements", Settlement.objects.filter(award__in=awards).delete())
        count("scores", PerformanceScoreRecord.objects.filter(portfolio=portfolio).delete())
        bids = list(Bid.objects.filter(portfolio=portfolio).values_list("pk", flat=True))
        count("awards", awards.delete())
        BidEvent.objects.filter(bid_id__in=bids).delete()
        count("bids", Bid.objects.filter(pk__in=bids).delete())
        count("dispatches", Dispatch.objects.filter(portfolio=portfolio).delete())
        count("signal", RegulationSignal.objects.filter(portfolio=portfolio).delete())
        RegulationBasepoint.objects.filter(portfolio=portfolio).delete()
    if fleet_id is not None:
        count("fleet", Fleet.objects.filter(pk=fleet_id).delete())
    count("stations", Station.objects.filter(station_id__in=station_ids).delete())
    Organisation.objects.filter(slug=REPLAY_ORG, fleets__isnull=True, station_ownerships__isnull=True).delete()
    return deleted


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
    progress: Callable[[float], None] | None = None,
) -> list[dict[str, Any]]:
    """Send each value at its (scaled) time over ``ws/regulation``; returns the intake's answers. ``progress`` is
    told the signal seconds sent so far."""
    answers: list[dict[str, Any]] = []
    async with websockets.asyncio.client.connect(
        f"{ws_base}/ws/regulation", additional_headers={"Authorization": f"Api-Key {token}"}, open_timeout=10
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
            if progress is not None:
                progress(offset - start)
        await asyncio.sleep(1.0)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return answers


def product_default() -> Product:
    """The RegD product; (re)creates the market defaults if they are missing (e.g. a database flushed since migrate)."""
    ensure_defaults(MarketOperator, DepotSite, Product)
    return Product.objects.select_related("operator").get(operator__code=PRODUCT[0], code=PRODUCT[1])


def env_password() -> str:
    return os.environ.get("REPLAY_STATION_PASSWORD") or secrets.token_urlsafe(18)
