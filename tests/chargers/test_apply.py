"""The writer's batch: many stations' TransactionEvents applied together, as a regulating fleet sends them, and
connection claims applied together, as a reconnect storm sends them."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from chargers.apply import batch_apply
from chargers.jobs import Connected, Disconnected, IncomingCall, Job, StationRef
from chargers.models import Connector, Evse, MeterValue, Station, StationEvent, Transaction, TransactionEvent
from chargers.telemetry import TelemetryUpdate
from tests.chargers.factories import StationFactory
from tests.chargers.payloads import COMMON
from tests.chargers.test_transactions import tx_event

pytestmark = pytest.mark.django_db(transaction=True)

AT = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def calls(ref: StationRef, events: list[dict[str, Any]], prefix: str) -> list[IncomingCall]:
    return [IncomingCall(ref, f"{prefix}-{n}", "TransactionEvent", event, AT) for n, event in enumerate(events)]


def refs(count: int) -> list[StationRef]:
    stations = StationFactory.create_batch(count)
    return [StationRef(pk=s.pk, station_id=s.station_id, version="2.0.1") for s in stations]


def test_one_batch_stores_each_seq_no_once_and_keeps_the_newest_state_per_transaction():
    # Given two stations, one with a transaction already started in an earlier batch
    a, b = refs(2)
    batch_apply(calls(a, [tx_event(0, "Started", minute=0, wh=1000)], "a0"))
    # When one batch carries, for both stations: new events, a repeat of a stored seqNo under a new message id,
    # a repeat of an event of this same batch, and an older event after a newer one
    jobs = calls(
        a,
        [
            tx_event(0, "Started", minute=0, wh=1000),
            tx_event(2, "Updated", minute=2, state="SuspendedEV", wh=2000),
            tx_event(1, "Updated", minute=1, wh=1500),
            tx_event(2, "Updated", minute=2, state="SuspendedEV", wh=2000),
        ],
        "a1",
    ) + calls(b, [tx_event(0, "Started", minute=0, wh=10), tx_event(1, "Ended", minute=5, state="Idle", wh=90)], "b1")
    outcomes = batch_apply(jobs)
    # Then every event is answered
    assert [o.error_code for o in outcomes] == [""] * len(jobs)
    # And every (transaction, seqNo) is stored exactly once
    stored = sorted(TransactionEvent.objects.values_list("transaction__station_id", "seq_no"))
    assert stored == [(a.pk, 0), (a.pk, 1), (a.pk, 2), (b.pk, 0), (b.pk, 1)]
    # And each transaction's state is that of its highest seqNo, not of the event that came last
    tx_a = Transaction.objects.get(station_id=a.pk)
    assert (tx_a.last_seq_no, tx_a.charging_state, tx_a.energy_wh, tx_a.active) == (2, "SuspendedEV", 2000, True)
    tx_b = Transaction.objects.get(station_id=b.pk)
    assert (tx_b.last_seq_no, tx_b.charging_state, tx_b.energy_wh, tx_b.active) == (1, "Idle", 90, False)
    assert tx_b.stopped_reason == "EVDisconnected"
    # And the repeats carried no meter value twice
    assert MeterValue.objects.filter(transaction=tx_a).count() == 3
    assert MeterValue.objects.filter(transaction=tx_b).count() == 2


def test_a_start_reported_late_moves_the_start_back_without_touching_the_newer_state():
    # Given a transaction first seen through an Updated event (its Started was queued offline)
    (a,) = refs(1)
    batch_apply(calls(a, [tx_event(1, "Updated", minute=3, wh=1500)], "u"))
    # When the Started event arrives afterwards
    batch_apply(calls(a, [tx_event(0, "Started", minute=0, offline=True, state="EVConnected", wh=1000)], "s"))
    # Then the start moves back to it, and the state stays that of seqNo 1
    tx = Transaction.objects.get(station_id=a.pk)
    assert tx.started_at == datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    assert (tx.last_seq_no, tx.charging_state, tx.energy_wh) == (1, "Charging", 1500)


def test_an_event_with_an_unreadable_meter_timestamp_is_refused_whole_and_its_correction_is_stored():
    # Given an event whose second meter value has a timestamp that is not ISO 8601
    (a,) = refs(1)
    event = tx_event(0, "Started", minute=0, wh=1000)
    event["meterValue"].append({**event["meterValue"][0], "timestamp": "yesterday"})
    # When it is applied, then the station gets a CALLERROR naming the constraint
    (outcome,) = batch_apply(calls(a, [event], "bad"))
    assert outcome.error_code == "PropertyConstraintViolation"
    # And nothing of the event was stored, so the station's corrected retry is not taken for a repeat
    assert not TransactionEvent.objects.exists()
    assert not MeterValue.objects.exists()
    event["meterValue"].pop()
    (retry,) = batch_apply(calls(a, [event], "fixed"))
    assert retry.error_code == ""
    assert TransactionEvent.objects.count() == 1
    assert MeterValue.objects.count() == 1


# Connection claims: applied in memory against the batch's station rows, in job order, written once at the end.


def connected(ref: StationRef, channel: str, second: int = 0) -> Connected:
    return Connected(ref, channel, AT + timedelta(seconds=second))


def disconnected(ref: StationRef, channel: str, second: int = 0) -> Disconnected:
    return Disconnected(ref, channel, AT + timedelta(seconds=second), 1000)


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The connection telemetry the batches release after COMMIT: (station id, online/offline), in order."""
    seen: list[tuple[str, str]] = []

    def record(*, updates: list[TelemetryUpdate]) -> None:
        seen.extend((u.station_id, u.status) for u in updates if u.kind == "connection")

    monkeypatch.setattr("chargers.apply.telemetry_committed", record)
    return seen


def owner(ref: StationRef) -> tuple[str, bool]:
    row = Station.objects.get(pk=ref.pk)
    return row.channel_name, row.online


def kinds(ref: StationRef) -> list[str]:
    return list(StationEvent.objects.filter(station_id=ref.pk).order_by("id").values_list("kind", flat=True))


def test_a_station_connected_and_disconnected_in_one_batch_ends_offline(released):
    # Given a station nobody holds
    (a,) = refs(1)
    # When its connection opens and closes within one batch
    outcomes = batch_apply([connected(a, "ch-1"), disconnected(a, "ch-1", 1)])
    # Then the claim replaced nothing and the close released it, as one job at a time would
    assert outcomes == ["", True]
    assert owner(a) == ("", False)
    assert kinds(a) == ["Connected", "Disconnected"]
    assert released == [(a.station_id, "online"), (a.station_id, "offline")]


def test_a_station_connected_twice_in_one_batch_is_held_by_the_newer_socket(released):
    # Given a station held by a socket from an earlier batch
    (a,) = refs(1)
    assert batch_apply([connected(a, "ch-old")]) == [""]
    # When two new sockets claim it within one batch, and the oldest socket's close comes last
    outcomes = batch_apply([connected(a, "ch-1", 1), connected(a, "ch-2", 2), disconnected(a, "ch-old", 3)])
    # Then each claim names the socket it replaced, in order, and the replaced socket's close releases nothing
    assert outcomes == ["ch-old", "ch-1", False]
    row = Station.objects.get(pk=a.pk)
    assert (row.channel_name, row.online, row.connected_at) == ("ch-2", True, AT + timedelta(seconds=2))
    assert kinds(a) == ["Connected", "Replaced", "Connected", "Replaced", "Connected"]
    assert released == [(a.station_id, "online")] * 3


def test_a_close_from_the_socket_replaced_in_the_same_batch_releases_nothing(released):
    # Given a station nobody holds
    (a,) = refs(1)
    # When one batch claims it for a socket, then for another, then sees the first socket close
    outcomes = batch_apply([connected(a, "ch-1"), connected(a, "ch-2", 1), disconnected(a, "ch-1", 2)])
    # Then the station stays with the second socket, online
    assert outcomes == ["", "ch-1", False]
    assert owner(a) == ("ch-2", True)
    assert kinds(a) == ["Connected", "Replaced", "Connected"]
    # And when the newer socket closes, then, in a later batch, the station is released
    assert batch_apply([disconnected(a, "ch-2", 3)]) == [True]
    assert owner(a) == ("", False)


def test_a_station_released_and_claimed_again_in_one_batch_ends_with_the_last_claim(released):
    # Given a station held by a socket from an earlier batch
    (a,) = refs(1)
    batch_apply([connected(a, "ch-1")])
    # When one batch sees that socket close, a new one open, and a message on it
    boot = IncomingCall(a, "b1", "BootNotification", COMMON["BootNotification"], AT)
    outcomes = batch_apply([disconnected(a, "ch-1", 1), connected(a, "ch-2", 2), boot])
    # Then the new socket replaced nothing (the old one was released first) and holds the station, booted
    assert outcomes[:2] == [True, ""]
    assert outcomes[2].payload["status"] == "Accepted"
    row = Station.objects.get(pk=a.pk)
    assert (row.channel_name, row.online, row.vendor, row.model) == ("ch-2", True, "Acme", "VX-1")
    assert kinds(a) == ["Connected", "Disconnected", "Connected", "Booted"]
    assert released[-2:] == [(a.station_id, "offline"), (a.station_id, "online")]


def test_a_storm_of_claims_boots_and_statuses_reads_and_writes_a_few_times_per_batch_not_per_station():
    # Given 40 stations, half connecting, booting and reporting a connector in the same batch, half only connecting
    stations = refs(40)
    jobs: list[Job] = []
    for n, ref in enumerate(stations):
        jobs.append(connected(ref, f"ch-{n}"))
        if n % 2:
            jobs.append(IncomingCall(ref, f"b{n}", "BootNotification", COMMON["BootNotification"], AT))
            jobs.append(status(ref, n, 1, "Available"))
    # When the batch is applied
    with CaptureQueriesContext(connection) as queries:
        outcomes = batch_apply(jobs)
    # Then every claim, boot and status is stored
    assert all(o == "" or o.error_code == "" for o in outcomes)
    assert Station.objects.filter(online=True).count() == 40
    assert Station.objects.filter(vendor="Acme").count() == 20
    assert Connector.objects.filter(status="Available").count() == 20

    def statements(*tables: str) -> list[str]:
        pattern = "|".join(rf"\b{table}\b" for table in tables)
        return [q["sql"] for q in queries.captured_queries if re.search(pattern, q["sql"])]

    # And the station table was read once and updated once per set of fields (connected and booted, connected only)
    # and by the touch, not per station
    station = statements(Station._meta.db_table)
    assert len(station) <= 4, "\n".join(s[:150] for s in station)
    # And the EVSEs and connectors were read once and inserted once each
    connector = statements(Evse._meta.db_table, Connector._meta.db_table)
    assert len(connector) <= 3, connector


def test_two_processes_claiming_one_station_leave_the_last_one_owner_told_of_the_first():
    if connection.vendor != "postgresql":
        pytest.skip("two writers at once: PostgreSQL (SQLite has one writer at a time)")
    # Given a station claimed in one process's batch, applied but not yet committed
    (a,) = refs(1)
    applied, outcomes = threading.Event(), {}

    def first_process() -> None:
        with transaction.atomic():
            outcomes["first"] = batch_apply([connected(a, "node1.ch")])
            applied.set()
            threading.Event().wait(1.0)  # a slow COMMIT
        connection.close()

    def second_process() -> None:  # its own connection, as another server process has
        applied.wait()
        outcomes["second"] = batch_apply([connected(a, "node2.ch", 1)])
        outcomes["late close"] = batch_apply([disconnected(a, "node1.ch", 2)])
        connection.close()

    # When the station reconnects to another process meanwhile, and the first socket's close reaches the first
    # process afterwards (here: any process; the claim is in the row)
    threads = [threading.Thread(target=first_process), threading.Thread(target=second_process)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then the second claim waited for the first to commit and names the socket it replaced (told to close)
    assert outcomes["first"] == [""]
    assert outcomes["second"] == ["node1.ch"]
    # And exactly one owner is left: the newer socket; the replaced socket's close released nothing
    assert outcomes["late close"] == [False]
    assert owner(a) == ("node2.ch", True)
    assert kinds(a) == ["Connected", "Replaced", "Connected"]


# StatusNotification and BootNotification: against the batch's rows in memory, the same answers and rows as one
# message at a time.


def status(ref: StationRef, n: int, minute: int, value: str, evse: int = 1, connector: int = 1) -> IncomingCall:
    payload = {
        "timestamp": f"2026-01-15T10:{minute:02d}:00Z",
        "connectorStatus": value,
        "evseId": evse,
        "connectorId": connector,
    }
    return IncomingCall(ref, f"s{n}", "StatusNotification", payload, AT)


def connectors(ref: StationRef) -> dict[tuple[int, int], tuple[str, int | None]]:
    rows = Connector.objects.filter(evse__station_id=ref.pk).values_list(
        "evse__evse_id", "connector_id", "status", "status_at"
    )
    return {(evse, connector): (value, at.minute if at else None) for evse, connector, value, at in rows}


def test_statuses_in_one_batch_keep_the_newest_station_timestamp_per_connector(released):
    # Given a station with one connector already reported at 10:05, and a second EVSE known without connectors
    a, b = refs(2)
    batch_apply([status(a, 0, 5, "Available")])
    Evse.objects.create(station_id=a.pk, evse_id=2)
    # When one batch reports: the known connector newer then older; a new connector on the known EVSE, newer then
    # older; a new EVSE's connector older then newer; and another station's first connector
    outcomes = batch_apply(
        [
            status(a, 1, 7, "Occupied"),
            status(a, 2, 6, "Faulted"),
            status(a, 3, 9, "Reserved", evse=2),
            status(a, 4, 8, "Unavailable", evse=2),
            status(a, 5, 1, "Faulted", evse=3, connector=2),
            status(a, 6, 2, "Occupied", evse=3, connector=2),
            status(b, 7, 3, "Available"),
        ]
    )
    # Then each is answered, and each connector keeps the status of its newest timestamp
    assert [o.error_code for o in outcomes] == [""] * 7
    assert connectors(a) == {(1, 1): ("Occupied", 7), (2, 1): ("Reserved", 9), (3, 2): ("Occupied", 2)}
    assert connectors(b) == {(1, 1): ("Available", 3)}
    assert Evse.objects.filter(station_id=a.pk).count() == 3
    # And a later batch's older report changes nothing, a newer one does
    batch_apply([status(a, 8, 6, "Faulted"), status(a, 9, 10, "Available", evse=2)])
    assert connectors(a) == {(1, 1): ("Occupied", 7), (2, 1): ("Available", 10), (3, 2): ("Occupied", 2)}


def test_two_boots_in_one_batch_store_the_last_and_answer_the_registration_status():
    # Given a Pending station with a 120-s heartbeat interval
    row = StationFactory.create(boot_status="Pending", heartbeat_interval=120)
    a = StationRef(pk=row.pk, station_id=row.station_id, version="2.1")
    first = {"chargingStation": {"model": "VX-1", "vendorName": "Acme", "firmwareVersion": "1.0"}, "reason": "PowerUp"}
    second = {"chargingStation": {"model": "VX-2", "vendorName": "Acme"}, "reason": "FirmwareUpdate"}
    # When it boots twice within one batch
    outcomes = batch_apply(
        [IncomingCall(a, "b1", "BootNotification", first, AT), IncomingCall(a, "b2", "BootNotification", second, AT)]
    )
    # Then both are answered with its registration status and interval
    assert [(o.payload["status"], o.payload["interval"]) for o in outcomes] == [("Pending", 120)] * 2
    # And the row holds the second boot
    row.refresh_from_db()
    assert (row.model, row.firmware_version, row.last_boot_reason, row.ocpp_version) == (
        "VX-2",
        "",
        "FirmwareUpdate",
        "2.1",
    )
    assert kinds(a) == ["Booted", "Booted"]
