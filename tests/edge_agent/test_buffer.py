"""The offline buffer: written before sending, resent in order, each row with its message id and payload unchanged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.buffer import Outbox, OutboxStore
from tests.edge_agent.conftest import PASSWORD
from tests.edge_agent.csms import RecordingCsms

pytestmark = pytest.mark.timeout(60)


def _tx_events(csms: RecordingCsms, tx_id: str) -> list[dict[str, Any]]:
    return [e for e in csms.of("TransactionEvent") if e["transaction_info"]["transaction_id"] == tx_id]


def test_a_message_is_durable_before_the_sender_can_see_it(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "q.sqlite3")
    box = Outbox(store, "edge-1")
    seen: list[int] = []
    box.on_put(lambda: seen.append(len(box)))
    with store.batch():
        item = box.put("TransactionEvent", {"seq_no": 0}, offline=False)
        # inside the batch nothing is visible to the sender yet
        assert len(box) == 0
    assert seen == [1]
    # a second process (or the next run) sees the committed row, with the message id it will be sent under
    other = OutboxStore(tmp_path / "q.sqlite3")
    pending = other.pending("edge-1")
    assert [(p.action, p.payload, p.text, p.message_id) for p in pending] == [
        ("TransactionEvent", {"seq_no": 0}, '{"seq_no":0}', item.message_id)
    ]


def test_a_failed_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "q.sqlite3")
    box = Outbox(store, "edge-1")

    def tick_that_crashes() -> None:
        with store.batch():
            box.put("TransactionEvent", {"seq_no": 0}, offline=False)
            raise RuntimeError("crash inside the tick")

    with pytest.raises(RuntimeError):
        tick_that_crashes()
    assert store.count() == 0
    assert len(box) == 0


def test_seq_numbers_continue_across_restarts(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "q.sqlite3")
    box = Outbox(store, "edge-2")
    assert [box.next_seq_no("tx-1") for _ in range(3)] == [0, 1, 2]
    store.close()
    again = Outbox(OutboxStore(tmp_path / "q.sqlite3"), "edge-2")
    assert again.next_seq_no("tx-1") == 3


async def test_events_queued_during_a_disconnect_are_replayed_in_order_exactly_once(
    csms: RecordingCsms, make_agent: Any
) -> None:
    # given a connected agent in a transaction, sending meter values every second
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected and len(csms.of("TransactionEvent")) >= 2)
    tx_id = agent.station.tx.transaction_id
    # when the link drops and the CSMS refuses reconnection for ~3 s
    del csms.stations["edge-1"]
    await csms.drop("edge-1")
    await csms.wait_for(lambda: not agent.station.link.connected)
    await csms.wait_for(lambda: len(agent.station.outbox) >= 3, within_s=6)
    stored_before = {seq for tx, seq in csms.events if tx == tx_id}
    # (seqNo -> offline flag as queued; the one in flight at the cut was queued online, the others offline)
    queued = {
        item.payload["seqNo"]: item.payload["offline"]
        for item in agent.station.outbox.items
        if item.payload["seqNo"] not in stored_before
    }
    assert sum(queued.values()) >= 2
    csms.stations["edge-1"] = PASSWORD
    await csms.wait_for(lambda: agent.station.link.connected and len(agent.station.outbox) == 0, within_s=10)
    # then every event of the transaction was stored exactly once, none lost, arriving in seqNo order
    firsts = [e["seq_no"] for e in _tx_events(csms, tx_id) if not any(e is d for d in csms.duplicates)]
    assert firsts == sorted(firsts)
    assert sorted(seq for tx, seq in csms.events if tx == tx_id) == list(range(max(firsts) + 1))
    # (the message in flight at the cut may have been stored with its answer lost: its repeat carried the same
    # message id and payload, so it was recognised as a retransmission, never stored as a second event)
    assert csms.duplicates == []
    # and each was stored as it was queued: offline=true if queued while offline, never rewritten on a resend,
    # with its original timestamp, in order
    replayed = [csms.events[(tx_id, seq)] for seq in queued]
    assert [e["offline"] for e in replayed] == list(queued.values())
    stamps = [e["timestamp"] for e in replayed]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


async def test_nothing_is_lost_or_sent_twice_as_new_across_a_crash(
    csms: RecordingCsms, make_agent: Any, tmp_path: Path
) -> None:
    db = tmp_path / "crash.sqlite3"
    # given an agent whose CSMS stores its messages but whose answers are lost (half-open link)
    first = await make_agent(csms, db=db)
    await csms.wait_for(lambda: first.station.link.connected and len(csms.of("TransactionEvent")) >= 2)
    tx_id = first.station.tx.transaction_id
    csms.lose_answers = True
    await asyncio.sleep(2.5)  # meter values keep being queued; one is in flight, unanswered
    assert len(first.station.outbox) >= 2
    # when the agent dies without warning and starts again on the same disk
    await first.crash()
    await csms.drop("edge-1")
    csms.lose_answers = False
    second = await make_agent(csms, db=db)
    await csms.wait_for(lambda: second.station.link.connected and len(second.station.outbox) == 0, within_s=10)
    # then the old transaction's events are all stored exactly once, and it ends with PowerLoss
    seqs = sorted(k[1] for k in csms.events if k[0] == tx_id)
    assert seqs == list(range(len(seqs)))
    last = csms.events[(tx_id, seqs[-1])]
    assert last["event_type"] == "Ended"
    assert last["transaction_info"]["stopped_reason"] == "PowerLoss"
    # and the unanswered in-flight message was sent again with its message id and payload unchanged: the CSMS
    # recognised the retransmission, and nothing was ever sent twice as a new message
    assert csms.retransmits, "the unanswered in-flight message must have been sent again"
    assert csms.duplicates == []
    # and the new run started its own transaction
    assert second.station.tx.transaction_id != tx_id


def test_a_queue_file_from_before_message_ids_gets_one_id_per_row_kept_across_restarts(tmp_path: Path) -> None:
    # given a queue file written by an agent that did not store message ids yet
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, station_id TEXT NOT NULL, action TEXT NOT NULL,"
        " payload TEXT NOT NULL, queued_offline INTEGER NOT NULL DEFAULT 0, created_at TEXT)"
    )
    old.execute("INSERT INTO outbox (station_id, action, payload) VALUES ('edge-1', 'MeterValues', '{\"evseId\":1}')")
    old.commit()
    old.close()
    # when the new agent opens it twice (a restart in between)
    first = OutboxStore(path).pending("edge-1")
    second = OutboxStore(path).pending("edge-1")
    # then the row got an id once, and keeps it
    assert len(first) == 1
    assert first[0].message_id
    assert second[0].message_id == first[0].message_id
