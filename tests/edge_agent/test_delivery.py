"""Refused and unanswered messages (OCPP 2.0.1 E13): kept, resent unchanged at growing intervals, dropped only when
the CSMS says the message itself is wrong."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
from ocpp.v21 import call as c21

from edge_agent.buffer import OutboxStore
from edge_agent.delivery import RetryPolicy, is_final
from tests.edge_agent.csms import RecordingCsms, canonical

pytestmark = pytest.mark.timeout(60)
TE = "TransactionEvent"


def _session(caplog: pytest.LogCaptureFixture, event_prefix: str) -> list[dict[str, Any]]:
    fields = [getattr(r, "fields", {}) | {"level": r.levelname} for r in caplog.records]
    return [f for f in fields if str(f.get("event", "")).startswith(event_prefix)]


def _pending_ids(db: Path) -> list[str]:
    store = OutboxStore(db)
    try:
        return [item.message_id for item in store.pending("edge-1")]
    finally:
        store.close()


def test_the_wait_is_the_interval_times_the_failures_then_stays_at_the_last_step_within_the_cap() -> None:
    policy = RetryPolicy(attempts=3, interval_s=10.0, max_interval_s=25.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [10.0, 20.0, 25.0, 25.0, 25.0]
    assert [policy.exhausted(n) for n in range(1, 5)] == [False, False, True, True]


def test_only_errors_about_the_message_itself_are_final() -> None:
    final = ["FormatViolation", "FormationViolation", "PropertyConstraintViolation", "OccurrenceConstraintViolation",
             "TypeConstraintViolation", "ProtocolError", "NotImplemented", "NotSupported", "MessageTypeNotSupported",
             "RpcFrameworkError"]  # fmt: skip
    assert all(is_final(code) for code in final)
    # the CSMS could not store it, an unknown cause, the station's standing, a code from a newer spec: retry
    assert not any(is_final(code) for code in ("InternalError", "GenericError", "SecurityError", "SomeNewError"))


async def test_a_row_the_csms_could_not_store_is_kept_and_resent_unchanged_at_growing_intervals(
    csms: RecordingCsms, make_agent: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    db = tmp_path / "retry.sqlite3"
    # given a CSMS whose database fails four times to store the transaction's first event
    csms.fail_next(TE, *["InternalError"] * 4)
    # when an agent starts a transaction (E13: 3 attempts, 0.2 s interval)
    agent = await make_agent(
        csms, db=db, message_attempts=3, message_attempt_interval_s=0.2, message_attempt_interval_max_s=5.0
    )
    await csms.wait_for(lambda: csms.frames_of(TE))
    first = csms.frames_of(TE)[0]
    tx_id = agent.station.tx.transaction_id
    # then while it is refused the row stays at the head of the outbox, on disk
    assert first.answer == "InternalError"
    assert agent.station.outbox.head().message_id == first.message_id
    assert _pending_ids(db)[0] == first.message_id
    await csms.wait_for(lambda: (tx_id, 0) in csms.events, within_s=15)
    # and every transmission carried the same message id and the same payload
    attempts = [f for f in csms.frames_of(TE) if f.message_id == first.message_id]
    assert [f.answer for f in attempts] == ["InternalError"] * 4 + ["result"]
    assert {canonical(f.payload) for f in attempts} == {canonical(first.payload)}
    # and it was stored exactly once
    assert csms.duplicates == []
    assert not [f for f in csms.retransmits if f.message_id == first.message_id]
    # and the waits grew with the number of failures, staying at the last step once the spec's attempts were used
    retries = [f for f in _session(caplog, "buffered_message_retry") if f["message_id"] == first.message_id]
    assert [f["retry_in_s"] for f in retries] == [0.2, 0.4, 0.6, 0.6]
    assert [f["level"] for f in retries] == ["WARNING", "WARNING", "ERROR", "ERROR"]
    assert retries[-1]["event"] == "buffered_message_retry_exhausted"
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert all(gap >= wait * 0.9 for gap, wait in zip(gaps, [0.2, 0.4, 0.6, 0.6], strict=True))
    # and the events queued behind it waited for it, then followed in order
    stored = [f.payload["seqNo"] for f in csms.frames_of(TE) if f.answer == "result"]
    assert stored == sorted(stored)


async def test_a_format_violation_is_final_the_row_goes_and_the_session_log_keeps_the_message(
    csms: RecordingCsms, make_agent: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    # given a CSMS that finds the transaction's first event malformed
    csms.fail_next(TE, "FormatViolation")
    # when the agent sends it
    agent = await make_agent(csms, message_attempt_interval_s=0.1)
    await csms.wait_for(lambda: len(csms.frames_of(TE)) >= 2)
    refused, following = csms.frames_of(TE)[:2]
    # then it is not sent again: the next message follows at once
    assert refused.answer == "FormatViolation"
    assert following.message_id != refused.message_id
    await csms.wait_for(lambda: refused.message_id not in [i.message_id for i in agent.store.pending("edge-1")])
    assert refused.message_id not in [i.message_id for i in agent.station.outbox.items]
    # and the session log keeps the refused message, whole
    logged = _session(caplog, "buffered_message_refused")
    assert [(f["message_id"], f["error"], f["level"]) for f in logged] == [
        (refused.message_id, "FormatViolation", "ERROR")
    ]
    assert logged[0]["payload"] == refused.payload
    assert logged[0]["code"] == "CSMS_REJECTED"


async def test_a_retryable_error_never_removes_the_row_even_across_a_restart(
    csms: RecordingCsms, make_agent: Any, tmp_path: Path
) -> None:
    db = tmp_path / "restart.sqlite3"
    # given a CSMS that cannot store anything the agent buffers
    csms.fail_next(TE, *["InternalError"] * 1000)
    first_run = await make_agent(csms, db=db, message_attempt_interval_s=0.1, message_attempt_interval_max_s=0.2)
    await csms.wait_for(lambda: len(csms.frames_of(TE)) >= 3)
    first = csms.frames_of(TE)[0]
    tx_id = first_run.station.tx.transaction_id
    # when the agent dies and starts again on the same disk, and the CSMS can store again
    await first_run.crash()
    await csms.drop("edge-1")
    assert _pending_ids(db)[0] == first.message_id
    csms.failures.clear()
    sent_before = len(csms.frames_of(TE))
    await make_agent(csms, db=db, message_attempt_interval_s=0.1)
    await csms.wait_for(lambda: (tx_id, 0) in csms.events)
    # then only that message was ever retried before, and the new run sent it first, with its id and payload
    assert {f.message_id for f in csms.frames_of(TE)[:sent_before]} == {first.message_id}
    resent = csms.frames_of(TE)[sent_before]
    assert (resent.message_id, canonical(resent.payload)) == (first.message_id, canonical(first.payload))
    assert resent.answer == "result"
    assert csms.duplicates == []


async def test_an_unbuffered_message_is_retried_with_the_same_id_and_payload(
    csms: RecordingCsms, make_agent: Any
) -> None:
    # given a CSMS that fails to store the first status notification
    csms.fail_next("StatusNotification", "InternalError")
    await make_agent(csms, message_attempt_interval_s=0.1)
    # when the agent boots and reports its status
    await csms.wait_for(lambda: len(csms.frames_of("StatusNotification")) >= 2)
    refused, again = csms.frames_of("StatusNotification")[:2]
    # then the same message went again, and was taken
    assert (refused.answer, again.answer) == ("InternalError", "result")
    assert (again.message_id, again.payload) == (refused.message_id, refused.payload)


async def test_the_csms_sets_the_retry_settings_through_the_device_model(csms: RecordingCsms, make_agent: Any) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    result = await csms.call(
        "edge-1",
        c21.SetVariables(
            set_variable_data=[
                {
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "MessageAttemptInterval", "instance": "TransactionEvent"},
                    "attributeValue": "30",
                },
                {
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "MessageAttempts", "instance": "TransactionEvent"},
                    "attributeValue": "5",
                },
                {
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "MessageAttempts"},  # the instance is part of the variable's name
                    "attributeValue": "5",
                },
            ]
        ),
    )
    assert [r["attribute_status"] for r in result.set_variable_result] == ["Accepted", "Accepted", "UnknownVariable"]
    assert (agent.station.retry.interval_s, agent.station.retry.attempts) == (30.0, 5)
