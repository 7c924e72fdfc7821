"""TransactionEvent idempotency by (transaction, seqNo) and offline replay order."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chargers.models import IdTokenStatus, MeterValue, Transaction, TransactionEvent
from tests.chargers.conftest import raw_station
from tests.chargers.factories import IdTokenFactory, StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def tx_event(seq_no: int, event_type: str, *, minute: int, offline: bool = False, state: str = "Charging", wh=None):
    payload: dict[str, Any] = {
        "eventType": event_type,
        "timestamp": f"2026-01-15T10:{minute:02d}:00Z",
        "triggerReason": {"Started": "CablePluggedIn", "Ended": "EVCommunicationLost"}.get(
            event_type, "MeterValuePeriodic"
        ),
        "seqNo": seq_no,
        "offline": offline,
        "transactionInfo": {"transactionId": "tx-42", "chargingState": state},
        "evse": {"id": 1, "connectorId": 1},
    }
    if event_type == "Ended":
        payload["transactionInfo"]["stoppedReason"] = "EVDisconnected"
    if wh is not None:
        payload["meterValue"] = [
            {
                "timestamp": payload["timestamp"],
                "sampledValue": [
                    {"value": wh, "measurand": "Energy.Active.Import.Register", "context": "Sample.Periodic"}
                ],
            }
        ]
    return payload


async def test_a_repeated_seq_no_is_stored_once_and_replayed_events_land_in_seq_order(live_csms):
    station = await sync_to_async(StationFactory.create)()
    # Given a transaction started and updated online
    async with raw_station(live_csms, station.station_id) as cs:
        assert (await cs.rpc([2, "a", "TransactionEvent", tx_event(0, "Started", minute=0, wh=1000)]))[0] == 3
        assert (await cs.rpc([2, "b", "TransactionEvent", tx_event(1, "Updated", minute=1, wh=1500)]))[0] == 3
    # When the station comes back and replays its offline queue, including seqNo 1 again under a new message id
    # and the final event before one it had queued earlier
    async with raw_station(live_csms, station.station_id) as cs:
        for n, event in enumerate(
            [
                tx_event(1, "Updated", minute=1, wh=1500),
                tx_event(2, "Updated", minute=2, offline=True, wh=2000),
                tx_event(4, "Ended", minute=4, offline=True, state="Idle", wh=3000),
                tx_event(3, "Updated", minute=3, offline=True, state="SuspendedEV", wh=2500),
            ]
        ):
            assert (await cs.rpc([2, f"replay-{n}", "TransactionEvent", event]))[0] == 3
    # Then every seqNo is stored exactly once, readable in seqNo order with the offline flag kept
    events = [
        row
        async for row in TransactionEvent.objects.filter(transaction__station=station)
        .order_by("seq_no")
        .values_list("seq_no", "offline")
    ]
    assert events == [(0, False), (1, False), (2, True), (3, True), (4, True)]
    # And the transaction's state is the one of the highest seqNo, not of the event that arrived last
    tx = await sync_to_async(Transaction.objects.get)(station=station, transaction_id="tx-42")
    assert (tx.active, tx.charging_state, tx.last_seq_no, tx.stopped_reason) == (False, "Idle", 4, "EVDisconnected")
    assert tx.energy_wh == 3000
    # And the duplicate carried no duplicate meter values
    assert await sync_to_async(MeterValue.objects.filter(transaction=tx).count)() == 5


async def test_transaction_events_answer_the_id_token_status(live_csms):
    station = await sync_to_async(StationFactory.create)()
    token = await sync_to_async(IdTokenFactory.create)(status=IdTokenStatus.BLOCKED)
    event = tx_event(0, "Started", minute=0)
    async with raw_station(live_csms, station.station_id) as cs:
        known = await cs.rpc(
            [2, "k", "TransactionEvent", {**event, "idToken": {"idToken": token.id_token, "type": token.type}}]
        )
        unknown = await cs.rpc([2, "u", "Authorize", {"idToken": {"idToken": "NOBODY", "type": "ISO14443"}}])
    assert known[2] == {"idTokenInfo": {"status": "Blocked"}}
    assert unknown[2] == {"idTokenInfo": {"status": "Unknown"}}
