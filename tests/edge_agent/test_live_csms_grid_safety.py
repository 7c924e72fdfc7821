"""Grid safety end to end: an edge agent against the real Django CSMS (Daphne live server).

- a replayed frequency recording arrives in the CSMS's meter values unchanged, to the mHz;
- a must-trip curve outside IEEE 1547-2018's ranges, sent by an operator through ``station call``, is Rejected, the
  CSMS stores the station's security event, and the agent keeps the protection it had.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections

import edge_agent.data
from chargers.models import MeterValue, StationEvent, StationEventKind
from edge_agent.frequency import GridSample, load_recording
from edge_agent.runner import tick_forever
from tests.chargers.conftest import LiveServer, start_server, stop_server
from tests.chargers.factories import STATION_PASSWORD, StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

# The 1-s recording of ../shared/data as the agent package ships it (byte for byte, gzip; edge_agent/data/README.md):
# in the repository, so a clean clone (CI) runs these tests instead of skipping them.
RECORDING = Path(edge_agent.data.__file__).parent / "grid-frequency-voltage-1s-one-day.csv.gz"
OFFSET_S = 43_200  # noon: the recording wanders between 59.95 and 60.05 Hz there


@dataclass
class Endpoint:
    url: str


@pytest.fixture(scope="module")
def django_csms(django_db_setup: None, django_db_blocker: Any) -> Iterator[LiveServer]:
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture
async def close_db_threads() -> Any:
    yield
    await sync_to_async(connections.close_all)()


async def _until(predicate: Any, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


class HeldRecording:
    """The recording as the meter would present it: each 1-s sample held for its second (no interpolation)."""

    def __init__(self, offset_s: int) -> None:
        self.f, self.v = load_recording(RECORDING)
        self.offset_s = offset_s
        self.t0: float | None = None

    def index(self, now: float) -> int:
        if self.t0 is None:
            self.t0 = now
        return self.offset_s + int(now - self.t0)

    def __call__(self, now: float) -> GridSample:
        i = self.index(now)
        return self.f[i], self.v[i], True


async def _stored(station_id: str, measurand: str) -> list[tuple[int, str]]:
    def query() -> list[tuple[int, str]]:
        rows = MeterValue.objects.filter(station__station_id=station_id, measurand=measurand).order_by("timestamp")
        return list(rows.values_list("value", "unit"))

    return await sync_to_async(query)()


def _is_subsequence(stored: list[int], recording: list[int]) -> bool:
    it = iter(recording)
    return all(any(value == r for r in it) for value in stored)


@pytest.mark.usefixtures("close_db_threads")
async def test_a_replayed_frequency_recording_reaches_the_csms_to_the_millihertz(
    django_csms: LiveServer, make_agent: Any
) -> None:
    sid = "edge-live-freq"
    await sync_to_async(StationFactory)(station_id=sid)
    # given an agent whose meter reads the real 1-s recording (noon onwards), reporting every second
    agent = await make_agent(Endpoint(django_csms.ws_url), sid, password=STATION_PASSWORD, start=False)
    grid = HeldRecording(OFFSET_S)
    agent.station.grid = agent.hw.grid = grid
    agent.tasks.append(asyncio.ensure_future(agent.client.run()))
    agent.tasks.append(asyncio.ensure_future(tick_forever([agent.station], agent.store, 0.05, stop=agent.stop_event)))

    # when the CSMS has stored ten seconds of its meter values
    async def enough() -> bool:
        return len(await _stored(sid, "Frequency")) >= 10

    await _until(enough)
    played = range(OFFSET_S, grid.index(asyncio.get_running_loop().time()) + 2)
    # then each stored frequency is a recorded one, to the mHz, in the order recorded (a 0.1 Hz rounding would
    # have stored 60000 mHz for nearly all of them)
    stored = await _stored(sid, "Frequency")
    assert {unit for _, unit in stored} == {"mHz"}
    recorded_mhz = [round(grid.f[i] * 1000) for i in played]
    assert _is_subsequence([v for v, _ in stored], recorded_mhz), (stored[:5], recorded_mhz[:5])
    assert len({v for v, _ in stored}) >= 3  # the recording moves; so does what the CSMS sees
    # and the voltage, to the 0.1 V the meter resolves
    volts = [v for v, _ in await _stored(sid, "Voltage")]
    assert _is_subsequence(volts, [round(round(grid.v[i] * 240.0, 1) * 1000) for i in played])


async def _security_events(station_id: str) -> list[str]:
    def query() -> list[str]:
        rows = StationEvent.objects.filter(station__station_id=station_id, kind=StationEventKind.SECURITY_EVENT)
        return [str(r.summary) for r in rows.order_by("timestamp", "id")]

    return await sync_to_async(query)()


@pytest.mark.usefixtures("close_db_threads")
async def test_an_out_of_range_must_trip_curve_from_the_csms_is_rejected_and_stored_as_a_security_event(
    django_csms: LiveServer, make_agent: Any
) -> None:
    sid = "edge-live-der"
    await sync_to_async(StationFactory)(station_id=sid)
    await sync_to_async(get_user_model().objects.create_superuser)("ops", "ops@example.com", "x")
    # given an agent (Category II) connected to the real CSMS over OCPP 2.1
    agent = await make_agent(Endpoint(django_csms.ws_url), sid, password=STATION_PASSWORD, versions=["2.1"])

    async def ready() -> bool:
        return bool(agent.station.link.connected)

    await _until(ready)

    async def station_call(curve: list[tuple[float, float]]) -> dict[str, Any]:
        request = {
            "isDefault": True,
            "controlId": "hv-ops",
            "controlType": "HVMustTrip",
            "curve": {"priority": 0, "yUnit": "PctEffectiveV", "curveData": [{"x": x, "y": y} for x, y in curve]},
        }
        out = StringIO()
        await sync_to_async(call_command)(
            "station", "call", sid, "SetDERControl", json.dumps(request), "--server", django_csms.http_url, stdout=out
        )
        answer: dict[str, Any] = json.loads(out.getvalue())
        return answer

    # when an operator sends an in-range curve, then one whose OV1 clears in 60 s (the maximum is 13 s)
    accepted = await station_call([(0.16, 120.0), (5.0, 112.0)])
    refused = await station_call([(0.16, 120.0), (60.0, 110.0)])

    # then the first is in force, the second Rejected and stored by the CSMS as the station's security event
    assert accepted["status"] == "Accepted"
    assert refused["status"] == "Rejected"

    async def stored() -> bool:
        return "ProtectionSettingRefused" in await _security_events(sid)

    await _until(stored)
    over = {t.name: (t.threshold, t.clearing_s) for t in agent.station.protection.trips if t.name.startswith("OV")}
    assert over == {"OV2": (1.2, 0.16), "OV1": (1.12, 5.0)}
