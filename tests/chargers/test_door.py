"""One station's unstorable message cannot poison a write batch: it is refused at the door with its own CALLERROR.

Payloads are the real ones of ``tests.chargers.payloads`` with one hostile value each: a meter reading of 1e308, an
integer beyond 32 or 64 bits, a date-time that leaves the calendar in UTC, ``\\u0000`` in a string. The frames go
through the consumer's own steps (``door_jobs`` mirrors ``OcppConsumer._on_call``) and then, with good messages
from other stations, to one group-commit writer.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargers import ocpp_j
from chargers.apply import batch_apply
from chargers.handlers.storable import payload_storable_check
from chargers.jobs import CallOutcome, IncomingCall, Job, LogEntry, StationRef
from chargers.models import Direction, MessageLog, MeterValue, StationEvent, TransactionEvent
from chargers.writer import GroupCommitWriter
from tests.chargers.factories import StationFactory
from tests.chargers.payloads import COMMON, V21_ONLY, station_payloads

AT = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
U64_MAX = 2**64 - 1


def door_jobs(ref: StationRef, frames: list[str]) -> list[Job]:
    """What OcppConsumer._on_call hands the writer for each frame: the call, or the record of its CALLERROR."""
    jobs: list[Job] = []
    for text in frames:
        frame = ocpp_j.parse(text, ref.version)
        try:
            ocpp_j.validate_station_request(frame, ref.version)
            payload_storable_check(ref.version, frame.action, frame.payload, frame.message_id)
        except ocpp_j.OcppError as exc:
            jobs.append(
                LogEntry(ref, Direction.IN, frame.message_type, message_id=exc.message_id, action=frame.action,
                         payload=frame.payload, error_code=exc.code, error_description=exc.description)
            )  # fmt: skip
            continue
        jobs.append(IncomingCall(ref, frame.message_id, frame.action, frame.payload, AT))
    return jobs


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _sampled(p: dict[str, Any]) -> dict[str, Any]:
    return p["meterValue"][0]["sampledValue"][0]


# (action, how the real payload is made hostile, the JSON path the CALLERROR names)
HOSTILE: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("MeterValues", lambda p: _sampled(p).update(value=1e308), "value"),
    ("MeterValues", lambda p: _sampled(p).update(value=1e17), "value"),  # 1e20 Wh: beyond a bigint
    ("MeterValues", lambda p: _sampled(p).update(value=U64_MAX, unitOfMeasure={"unit": "Wh"}), "value"),
    ("MeterValues", lambda p: _sampled(p).update(unitOfMeasure={"unit": "kWh", "multiplier": 400}), "multiplier"),
    ("MeterValues", lambda p: p.update(evseId=2**63), "evseId"),
    ("MeterValues", lambda p: p.update(evseId=2**31), "evseId"),
    ("TransactionEvent", lambda p: p.update(seqNo=2**40), "seqNo"),
    ("TransactionEvent", lambda p: p["transactionInfo"].update(transactionId="tx\x00-1"), "transactionId"),
    ("DataTransfer", lambda p: p.update(data="a\x00b"), "data"),
    ("DataTransfer", lambda p: p.update(data={"nested": ["ok", {"k\x00": 1}]}), "data/nested/1"),
    ("BootNotification", lambda p: p["chargingStation"].update(firmwareVersion="v1\x00"), "firmwareVersion"),
    ("StatusNotification", lambda p: p.update(timestamp="9999-12-31T23:00:00-05:00"), "date-time"),
    ("NotifyEVChargingNeeds", lambda p: p["chargingNeeds"]["dcChargingParameters"].update(evMaxPower=1e12),
     "evMaxPower"),
    # Vendor data nested 40 levels deep: schema-valid, more than the store keeps as JSON
    ("DataTransfer", lambda p: p.update(data=_deep(40)), "data/0/0/0"),
]  # fmt: skip


def hostile_frame(n: int, message_id: str) -> str:
    action, mutate, _ = HOSTILE[n]
    payload = copy.deepcopy(COMMON[action])
    mutate(payload)
    return json.dumps([2, message_id, action, payload])


@pytest.mark.parametrize("n", range(len(HOSTILE)), ids=[f"{a}-{p}" for a, _, p in HOSTILE])
def test_a_valid_payload_the_store_cannot_hold_gets_a_property_constraint_violation_naming_the_field(n):
    # Given a real payload, schema-valid, with one value no column or jsonb can hold
    frame = ocpp_j.parse(hostile_frame(n, "bad-1"), "2.1")
    ocpp_j.validate_station_request(frame, "2.1")
    # When the door checks it / Then it is refused with the code OCPP-J names for a value outside the constraints
    with pytest.raises(ocpp_j.OcppError) as refused:
        payload_storable_check("2.1", frame.action, frame.payload, frame.message_id)
    assert refused.value.code == "PropertyConstraintViolation"
    assert HOSTILE[n][2] in refused.value.description
    assert refused.value.message_id == "bad-1"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('[2,"m-1","Heartbeat",{"x":NaN}]', "RpcFrameworkError"),  # not JSON: orjson admits no NaN/Infinity
        # Grammatical JSON with a number no double holds: answered under its own message id
        ('[2,"m-1","MeterValues",{"evseId":1e999,"meterValue":[]}]', "FormatViolation"),
        ('[2,"m\\u0000","Heartbeat",{}]', "RpcFrameworkError"),
        # Beyond 64 bits orjson reads a float, which a Draft 4 "integer" is not
        ('[2,"m-1","StatusNotification",{"timestamp":"2026-01-15T10:00:00Z","connectorStatus":"Occupied",'
         '"evseId":18446744073709551616,"connectorId":1}]', "TypeConstraintViolation"),
    ],
)  # fmt: skip
def test_frames_that_are_not_json_or_not_integers_are_refused_before_the_door(text, code):
    def read() -> None:
        ocpp_j.validate_station_request(ocpp_j.parse(text, "2.1"), "2.1")

    with pytest.raises(ocpp_j.OcppError) as refused:
        read()
    assert refused.value.code == code


@pytest.mark.django_db(transaction=True)
async def test_poison_messages_get_their_callerror_and_good_ones_commit_in_one_batch(caplog):
    # Given stations sending good messages and one station sending every hostile message, all at once
    good_stations = [await _station() for _ in range(3)]
    bad_station = await _station()
    good = [
        job
        for ref in good_stations
        for job in door_jobs(
            ref,
            [json.dumps([2, f"mv-{ref.pk}", "MeterValues", COMMON["MeterValues"]]),
             json.dumps([2, f"tx-{ref.pk}", "TransactionEvent", COMMON["TransactionEvent"]]),
             json.dumps([2, f"dt-{ref.pk}", "DataTransfer", COMMON["DataTransfer"]])],
        )
    ]  # fmt: skip
    bad = door_jobs(bad_station, [hostile_frame(n, f"bad-{n}") for n in range(len(HOSTILE))])
    assert all(isinstance(job, IncomingCall) for job in good)
    assert all(isinstance(job, LogEntry) for job in bad)
    applied: list[int] = []

    def batch_fn(jobs: Sequence[Job]) -> list[Any]:
        applied.append(len(jobs))
        return batch_apply(jobs)

    writer: GroupCommitWriter[Job] = GroupCommitWriter(batch_fn)
    jobs = [job for pair in zip(good, bad, strict=False) for job in pair] + good[len(bad) :] + bad[len(good) :]
    # When they reach the writer together
    try:
        with caplog.at_level(logging.WARNING, logger="chargers.writer"):
            outcomes = await asyncio.gather(*(writer.submit(job) for job in jobs))
    finally:  # the writer thread's own connection must not outlive the test database
        await asyncio.get_running_loop().run_in_executor(writer._executor, connections.close_all)
        writer._executor.shutdown()
    # Then they commit as one batch: the job-by-job retry never ran
    assert (writer.batches, applied) == (1, [len(jobs)])
    assert "retrying job by job" not in caplog.text
    # And every good message is answered and stored
    answers = [o for job, o in zip(jobs, outcomes, strict=True) if isinstance(job, IncomingCall)]
    assert all(isinstance(o, CallOutcome) and not o.error_code for o in answers)
    assert await MeterValue.objects.filter(station_id__in=[r.pk for r in good_stations]).acount() == 2 * 3 * 3
    assert await TransactionEvent.objects.acount() == 3
    assert await StationEvent.objects.filter(kind="DataTransfer").acount() == 3
    # And every poison message is in the message log with its CALLERROR, storable (U+0000 and deep nesting kept as
    # JSON text, the rest as JSON)
    logged = [row async for row in MessageLog.objects.filter(station_id=bad_station.pk).order_by("message_id")]
    assert len(logged) == len(HOSTILE)
    assert {row.error_code for row in logged} == {"PropertyConstraintViolation"}
    assert all(row.payload_sha256 for row in logged)
    deep = next(f"bad-{n}" for n, (_, _, path) in enumerate(HOSTILE) if path == "data/0/0/0")
    by_id = {row.message_id: row for row in logged}
    assert by_id[deep].payload is None
    assert "[[[[" in by_id[deep].raw
    assert all(row.payload is not None or "\\u0000" in row.raw for mid, row in by_id.items() if mid != deep)
    assert await MeterValue.objects.filter(station_id=bad_station.pk).acount() == 0
    await sync_to_async(connections.close_all)()  # the ORM's async thread: nothing may outlive the test database


async def _station() -> StationRef:
    station = await sync_to_async(StationFactory.create)()
    return StationRef(pk=station.pk, station_id=station.station_id, version="2.1")


# --- Hypothesis: whatever JSON values sit in the schema-valid positions, batch_apply never raises -----------------


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values in the place of ``value``: any integer, any finite float, any text, same structure."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers() | st.sampled_from([2**31, 2**63, U64_MAX, -(2**63) - 1])
    if isinstance(value, float):
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers()
    if isinstance(value, str):
        return st.text(max_size=40) | st.just(value) | st.sampled_from(["a\x00", "9999-12-31T23:59:59-14:00"])
    if isinstance(value, list):
        return st.tuples(*(_like(v) for v in value)).map(list)
    if isinstance(value, dict):
        return st.fixed_dictionaries({k: _like(v) for k, v in value.items()})
    return st.just(value)


SAMPLES = [("2.1", action, payload) for action, payload in station_payloads("2.1").items()] + [
    ("2.0.1", action, payload) for action, payload in COMMON.items() if action not in V21_ONLY
]


@st.composite
def _hostile_calls(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    version, action, payload = draw(st.sampled_from(SAMPLES))
    return version, action, draw(_like(payload))


@pytest.mark.django_db
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=_hostile_calls())
def test_arbitrary_values_in_schema_valid_positions_never_make_batch_apply_raise(call, django_db_blocker):
    version, action, payload = call
    station = StationFactory.create()
    ref = StationRef(pk=station.pk, station_id=station.station_id, version=version)
    # Given a frame as a station would send it (integers beyond 64 bits read as floats, as the parser reads them)
    (job,) = door_jobs(ref, [json.dumps([2, "h-1", action, payload])])
    # When it passes the door / Then the batch applies it without raising: answered, or refused with a CALLERROR
    (outcome,) = batch_apply([job])
    if isinstance(job, IncomingCall):
        assert isinstance(outcome, CallOutcome)
    assert MessageLog.objects.filter(station=station).count() == 1
