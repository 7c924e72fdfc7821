"""The edge agent against the real Django CSMS (Daphne live server): replayed events are stored exactly once.

This is the only edge-agent test that touches Django, and only on the CSMS side (the agent runs in this process
but never imports Django; the test reads the CSMS's database to check what it stored).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections

from chargers.models import StationEvent, StationEventKind, TransactionEvent
from edge_agent.revocation import CrlSettings
from tests.chargers.conftest import LiveServer, start_server, stop_server
from tests.chargers.factories import STATION_PASSWORD, StationFactory
from tests.edge_agent.firmware_kit import PackageServer, make_ca, make_signer, update_firmware

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@dataclass
class Endpoint:
    url: str


@pytest.fixture(scope="module")
def django_csms(django_db_setup: None, django_db_blocker: Any) -> Iterator[LiveServer]:
    # The replay test refuses an agent's reconnections with a wrong password for a few seconds: with the default
    # limit of failed handshakes its station id would then be blocked (429) for a minute (chargers.handshake).
    server = start_server({"OCPP_AUTH_FAILURES_PER_STATION": "10000"})
    yield server
    stop_server(server)


async def _stored(station_id: str, tx_id: str) -> list[tuple[int, bool, str]]:
    def query() -> list[tuple[int, bool, str]]:
        return list(
            TransactionEvent.objects.filter(
                transaction__station__station_id=station_id, transaction__transaction_id=tx_id
            )
            .order_by("seq_no")
            .values_list("seq_no", "offline", "event_type")
        )

    return await sync_to_async(query)()


async def _until(predicate: Any, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


@pytest.fixture
async def close_db_threads() -> Any:
    yield
    # sync_to_async ran the ORM in its worker thread: close that thread's connection, or the test database
    # cannot be dropped at the end of the session (PostgreSQL: "being accessed by other users").
    await sync_to_async(connections.close_all)()


@pytest.mark.usefixtures("close_db_threads")
async def test_the_csms_stores_each_replayed_event_exactly_once(
    django_csms: LiveServer, make_agent: Any, tmp_path: Path
) -> None:
    sid = "edge-live-1"
    await sync_to_async(StationFactory)(station_id=sid)
    db = tmp_path / "edge-live.sqlite3"
    endpoint = Endpoint(django_csms.ws_url)
    # given an agent in a transaction, reporting every second to the real CSMS
    agent = await make_agent(endpoint, sid, password=STATION_PASSWORD, db=db)
    await _until(lambda: _ready(agent))
    tx_id = agent.station.tx.transaction_id
    await _until(lambda: _count_at_least(sid, tx_id, 2))

    # when the link drops and reconnection fails for ~3 s (the CSMS refuses a wrong password)
    agent.client.password = "not-the-password"
    agent.client.drop_connection()
    await asyncio.sleep(3.0)
    already = {seq for seq, _, _ in await _stored(sid, tx_id)}
    # (the message in flight at the cut may have been stored without its answer arriving: that one is a repeat,
    # sent again with the same message id and payload; it was queued online, the others offline)
    queued = {
        item.payload["seqNo"]: item.payload["offline"]
        for item in agent.station.outbox.items
        if item.payload["seqNo"] not in already
    }
    assert sum(queued.values()) >= 2
    # and the agent then crashes with its queue on disk, and restarts with the right password
    await agent.crash()
    restarted = await make_agent(endpoint, sid, password=STATION_PASSWORD, db=db)
    await _until(lambda: _drained(restarted))

    # then the CSMS stored every event of the old transaction exactly once, none lost, each offline flag as queued
    stored = await _stored(sid, tx_id)
    seqs = [s for s, _, _ in stored]
    assert seqs == list(range(len(seqs)))
    assert stored[-1][2] == "Ended"  # the restart ended it (PowerLoss)
    by_seq = {s: offline for s, offline, _ in stored}
    assert {s: by_seq[s] for s in queued} == queued
    # and the new transaction is being stored too
    new_tx = restarted.station.tx.transaction_id
    assert new_tx != tx_id
    await _until(lambda: _count_at_least(sid, new_tx, 1))


async def _ready(agent: Any) -> bool:
    return bool(agent.station.link.connected and agent.station.tx is not None)


async def _drained(agent: Any) -> bool:
    return bool(agent.station.link.connected and len(agent.station.outbox) == 0)


async def _count_at_least(station_id: str, tx_id: str, n: int) -> bool:
    return len(await _stored(station_id, tx_id)) >= n


async def _events(station_id: str, kind: str) -> list[str]:
    def query() -> list[str]:
        rows = StationEvent.objects.filter(station__station_id=station_id, kind=kind).order_by("timestamp", "id")
        return [str(row.summary) for row in rows]

    return await sync_to_async(query)()


@pytest.mark.usefixtures("close_db_threads")
async def test_the_csms_stores_a_signed_updates_progress_and_a_forged_ones_security_event(
    django_csms: LiveServer, make_agent: Any, tmp_path: Path
) -> None:
    sid = "edge-live-fw"
    await sync_to_async(StationFactory)(station_id=sid)
    await sync_to_async(get_user_model().objects.create_superuser)("ops", "ops@example.com", "x")
    ca = make_ca()
    signer = make_signer(ca, algorithm="ed25519")
    package = b"edge-agent firmware 3.1.0"
    repo = PackageServer(
        files={"/fw/edge-agent-3.1.0.bin": package, "/fw/forged.bin": package + b"!", "/crl": ca.crl()}
    ).start()
    try:
        # given an agent connected to the real CSMS, trusting our firmware-signing CA (and its CRL)
        agent = await make_agent(
            Endpoint(django_csms.ws_url),
            sid,
            password=STATION_PASSWORD,
            firmware_trust_anchor=ca.write(tmp_path / "ca.pem"),
            firmware_crl=CrlSettings(url=repo.url("/crl"), cache_dir=str(tmp_path / "crl")),
        )
        await _until(lambda: _ready(agent))

        async def station_call(request: dict[str, Any]) -> None:
            await sync_to_async(call_command)(
                "station", "call", sid, "UpdateFirmware", json.dumps(request), "--server", django_csms.http_url
            )

        # when an operator sends a correctly signed update, then a forged one, through `station call`
        await station_call(
            update_firmware(
                1, repo.url("/fw/edge-agent-3.1.0.bin"), signature=signer.sign(package), cert_pem=signer.cert_pem()
            )
        )
        await _until(lambda: _has(sid, StationEventKind.FIRMWARE_STATUS, "Installed"))
        await station_call(
            update_firmware(2, repo.url("/fw/forged.bin"), signature=signer.sign(package), cert_pem=signer.cert_pem())
        )
        await _until(lambda: _has(sid, StationEventKind.SECURITY_EVENT, "InvalidFirmwareSignature"))
    finally:
        repo.stop()
    # then the CSMS stored every step and both security events as station events, for operators to see
    statuses = await _events(sid, StationEventKind.FIRMWARE_STATUS)
    assert statuses[:5] == ["Downloading", "Downloaded", "SignatureVerified", "Installing", "Installed"]
    await _until(lambda: _has(sid, StationEventKind.FIRMWARE_STATUS, "InvalidSignature"))
    assert await _events(sid, StationEventKind.SECURITY_EVENT) == ["FirmwareUpdated", "InvalidFirmwareSignature"]
    assert agent.station.firmware.installed_version == "edge-agent-3.1.0.bin"


async def _has(station_id: str, kind: str, summary: str) -> bool:
    return summary in await _events(station_id, kind)


@pytest.mark.usefixtures("close_db_threads")
async def test_a_sunspec_site_meter_read_by_the_agent_is_stored_as_the_depots_site_meter_reading(
    make_agent: Any,
) -> None:
    import socket

    from chargers.models import Station
    from edge_agent.hardware.sunspec_meter import SunSpecMeter
    from edge_agent.sitemeter import SiteMeterReporter
    from markets.models import DepotSite
    from markets.peak.models import MeterSource, SiteMeter, SiteMeterReading
    from tests.edge_agent.sunspec_meter import SunSpecMeterDevice

    sid = "edge-live-meter"

    def depot() -> None:
        StationFactory(station_id=sid)
        station = Station.objects.get(station_id=sid)
        site = DepotSite.objects.create(code="edge-depot", name="Edge depot", threshold_w=10**9, demand_charge=0)
        SiteMeter.objects.create(site=site, kind=SiteMeter.Kind.MODBUS, station=station, evse_id=0)

    await sync_to_async(depot)()
    # Given the depot's SunSpec meter (model 203, 152.34 kW import) and the agent of the station it is wired to
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    device = SunSpecMeterDevice(203)
    await device.start(port)
    meter = SunSpecMeter("127.0.0.1", port=port, timeout_s=0.5)
    # a server of its own: the site meter's readings are stored by a Celery task, run eagerly there (no worker runs
    # in tests, with REDIS_URL or not)
    server = start_server({"REDIS_URL": ""})
    agent = await make_agent(Endpoint(server.ws_url), sid, password=STATION_PASSWORD, plug=False)
    stop = asyncio.Event()
    task = asyncio.ensure_future(SiteMeterReporter(agent.station, meter.read, interval_s=0.2).run(stop))

    async def stored() -> list[tuple[int, str, str]]:
        return await sync_to_async(
            lambda: list(SiteMeterReading.objects.filter(site__code="edge-depot").values_list(
                "import_w", "source", "source_ref"))
        )()  # fmt: skip

    try:
        # When it reads and reports for a while
        async def some() -> bool:
            return bool(await stored())

        await _until(some)
    finally:
        stop.set()
        await task
        await meter.close()
        await device.stop()
        stop_server(server)
    # Then the CSMS stored the readings as the depot's site meter: 152,340 W, source modbus, the station's EVSE 0
    assert set(await stored()) == {(152_340, MeterSource.MODBUS, f"{sid}/0")}
