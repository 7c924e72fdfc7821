"""The acknowledgement ledger: one line per CALL the CSMS answered with a CALLRESULT, with the payload's digest."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import _parser
from edge_agent.ledger import Ledger, payload_digest, read_ledger
from edge_agent.simulate import run_fleet
from tests.edge_agent.csms import Frame, RecordingCsms

pytestmark = pytest.mark.timeout(60)


def _digest(frame: Frame) -> str:
    """Computed here from the frame as the CSMS received it (not with the agent's code)."""
    text = json.dumps(frame.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_digest_is_of_the_canonical_json_whatever_the_key_order() -> None:
    expected = hashlib.sha256('{"a":"é","b":{"c":1,"d":[2,1]}}'.encode()).hexdigest()
    assert payload_digest({"b": {"d": [2, 1], "c": 1}, "a": "é"}) == expected


def test_a_torn_last_line_is_skipped_by_the_reader_and_cut_off_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    whole = json.dumps({"station": "s-1", "message_id": "m-1"})
    path.write_text(whole + "\n" + '{"station": "s-1", "mess')  # killed mid-write
    assert [r["message_id"] for r in read_ledger(path)] == ["m-1"]
    ledger = Ledger(path)
    ledger.record(station="s-1", action="Heartbeat", message_id="m-2", payload={})
    ledger.close()
    assert path.read_text().count("\n") == 2
    assert [r["message_id"] for r in read_ledger(path)] == ["m-1", "m-2"]


async def test_the_ledger_has_one_line_per_acknowledged_call_with_the_digest_of_what_the_csms_received(
    csms: RecordingCsms, make_agent: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    # given a CSMS that refuses the first transaction event twice before storing it
    csms.fail_next("TransactionEvent", "InternalError", "InternalError")
    # when an agent boots, reports and sends meter values for a while
    agent = await make_agent(csms, ledger=ledger, message_attempt_interval_s=0.1)
    await csms.wait_for(lambda: len([f for f in csms.frames_of("TransactionEvent") if f.answer == "result"]) >= 3)
    await agent.stop()
    ledger.close()
    lines = list(read_ledger(path))
    # then each line is a CALL the CSMS answered with a CALLRESULT, once, with the digest of the payload it got
    answered = {f.message_id: f for f in csms.frames if f.answer == "result"}
    ids = [line["message_id"] for line in lines]
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(answered)
    assert len(set(answered) - set(ids)) <= 1  # the answer in flight when the agent stopped
    for line in lines:
        frame = answered[line["message_id"]]
        assert list(line) == ["station", "action", "message_id", "seq_no", "meter_timestamp", "payload_sha256",
                              "acked_at"]  # fmt: skip
        assert (line["station"], line["action"]) == ("edge-1", frame.action)
        assert line["payload_sha256"] == _digest(frame)
        assert line["seq_no"] == frame.payload.get("seqNo")
        meter = frame.payload.get("meterValue")
        assert line["meter_timestamp"] == (meter[0]["timestamp"] if meter else None)
        assert datetime.fromisoformat(line["acked_at"]).utcoffset() == timedelta(0)
    assert {"BootNotification", "StatusNotification", "NotifyEVChargingNeeds", "TransactionEvent"} <= {
        line["action"] for line in lines
    }
    # and the refused transmissions are not in it: the event they carried appears once, when it was stored
    refused = next(f for f in csms.frames if f.answer == "InternalError")
    assert ids.count(refused.message_id) == 1


async def test_the_simulated_fleet_writes_one_ledger_for_all_its_stations(tmp_path: Path) -> None:
    csms = await RecordingCsms(stations={}, default_password="pw").start()
    path = tmp_path / "fleet-ledger.jsonl"
    try:
        args = _parser().parse_args(["simulate", "--count", "2", "--csms", csms.url, "--ledger", str(path)])
        assert args.ledger == str(path)
        await run_fleet(2, csms.url, "led", "pw", duration_s=2.0, tick_s=0.25, var_dir=tmp_path, ledger=path)
    finally:
        await csms.stop()
    lines = list(read_ledger(path))
    assert {line["station"] for line in lines} == {"led-1", "led-2"}
    digests = {f.message_id: _digest(f) for f in csms.frames if f.answer == "result"}
    assert all(digests[line["message_id"]] == line["payload_sha256"] for line in lines)
