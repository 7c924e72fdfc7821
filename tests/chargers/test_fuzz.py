"""Property-based fuzzing of the live CSMS: random and mutated OCPP-J frames over real sockets, 2.0.1 and 2.1.

Property: every CALL gets exactly one spec-conformant answer (a CALLRESULT valid against the action's response
schema, or a CALLERROR whose code OCPP-J allows, and the one it names where that is unambiguous), every other frame
gets at most the one CALLERROR the oracle (tests.chargers.fuzz) expects or nothing, a close (if any) carries a
1xxx/4xxx code, InternalError never comes back, and a well-behaved station connected throughout keeps getting its
Heartbeat answered while the others fuzz.

``FUZZ_FRAMES`` (default 10,000) sets how many frames are sent. Reproducible in CI: ``derandomize=True`` fixes
Hypothesis's seed (the same frames on every run of the same code) and the example database is off, so a failure
found on one machine is not silently replayed, or missed, on another; the failing frame is in the report.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.chargers import fuzz
from tests.chargers.conftest import LiveServer, basic_auth, start_server, stop_server
from tests.chargers.factories import StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

FUZZ_FRAMES = int(os.environ.get("FUZZ_FRAMES", "10000"))
CONNECTIONS = 3  # fuzzing stations per OCPP version, all sending at once
BASES = 3  # valid payloads drawn per version per example; each is sent as a chunk of FRAMES_PER_BASE frames
FRAMES_PER_BASE = 7
ANSWER_WITHIN = 20.0  # generous: a bound on "answered at all", not a latency target (that is bench/)
FRAMES_PER_EXAMPLE = len(fuzz.VERSIONS) * BASES * FRAMES_PER_BASE


def _close_ok(code: int | None) -> bool:
    """RFC 6455 codes a server may send (1005/1006 mean no close frame: the connection just died) or 4000-4999."""
    return code is not None and ((1000 <= code <= 1015 and code not in (1005, 1006)) or 4000 <= code <= 4999)


@dataclass
class Station:
    station_id: str
    version: str
    ws: Any = None
    closes: list[int | None] = field(default_factory=list)

    async def connect(self, server: LiveServer) -> None:
        self.ws = await websockets.asyncio.client.connect(
            f"{server.ws_url}/{self.station_id}",
            subprotocols=[Subprotocol(f"ocpp{self.version}")],
            additional_headers=basic_auth(self.station_id),
            open_timeout=20,
            max_size=None,
            ping_interval=None,  # the server is busy by design here; a missed pong must not end the test
        )


class Harness:
    """The fuzzing stations and the well-behaved one, on an event loop of their own beside Hypothesis's thread."""

    def __init__(self, server: LiveServer, stations: list[Station], watcher: Station) -> None:
        self.server = server
        self.stations = stations
        self.watcher = watcher
        self.run_id = uuid.uuid4().hex[:8]
        self.counter = 0
        self.frames_sent = 0
        self.heartbeats = 0
        self.batches = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def connect_all() -> None:
            await asyncio.gather(*(s.connect(server) for s in [*stations, watcher]))

        self.run(connect_all())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(s.ws.close() for s in [*self.stations, self.watcher]), return_exceptions=True)

        self.run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def message_id(self) -> str:
        self.counter += 1
        return f"{self.run_id}-{self.counter}"

    def send_chunks(self, chunks: list[tuple[str, list[fuzz.Frame]]]) -> list[str]:
        """Send each chunk over one station of its version (all stations at once); the problems found."""
        by_station: dict[int, list[fuzz.Frame]] = {}
        counts = dict.fromkeys(fuzz.VERSIONS, 0)
        for version, frames in chunks:
            candidates = [i for i, s in enumerate(self.stations) if s.version == version]
            index = candidates[counts[version] % len(candidates)]
            counts[version] += 1
            by_station.setdefault(index, []).extend(frames)

        async def all_at_once() -> list[str]:
            results = await asyncio.gather(
                self._watch(),
                *(self._exchange(self.stations[i], frames) for i, frames in by_station.items()),
            )
            return [problem for problems in results for problem in problems]

        problems: list[str] = self.run(all_at_once())
        self.frames_sent += sum(len(frames) for _, frames in chunks)
        self.batches += 1
        return problems

    async def _exchange(self, station: Station, frames: list[fuzz.Frame]) -> list[str]:
        """Send frames one after another, reading each answer the oracle expects; a Heartbeat at the end proves
        that nothing unexpected (an answer to a frame that must not get one) is still on its way."""
        frames = [*frames, fuzz._dumps([2, self.message_id(), "Heartbeat", {}])]
        problems: list[str] = []
        for frame in frames:
            exp = fuzz.expect(frame, station.version)
            try:
                await station.ws.send(frame)
                if exp.answer == "none":
                    continue
                answer = json.loads(await asyncio.wait_for(station.ws.recv(), ANSWER_WITHIN))
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                station.closes.append(code)
                if not _close_ok(code):
                    problems.append(f"{station.version}: connection closed with {code} after {frame!r:.300}")
                await station.connect(self.server)
                continue
            except TimeoutError:
                problems.append(f"{station.version}: no answer within {ANSWER_WITHIN:g} s to {frame!r:.300}")
                continue
            problem = fuzz.check_answer(exp, answer, station.version)
            if problem:
                problems.append(f"{station.version}: {problem} -- for {frame!r:.300}")
        return problems

    async def _watch(self) -> list[str]:
        """The well-behaved station: one Heartbeat per example (every FRAMES_PER_EXAMPLE fuzzed frames)."""
        mid = self.message_id()
        await self.watcher.ws.send(json.dumps([2, mid, "Heartbeat", {}]))
        try:
            answer = json.loads(await asyncio.wait_for(self.watcher.ws.recv(), ANSWER_WITHIN))
        except (TimeoutError, ConnectionClosed) as exc:
            return [f"the well-behaved station's Heartbeat was not answered: {exc!r}"]
        self.heartbeats += 1
        problem = fuzz.check_answer(fuzz.Expect("call", mid, "Heartbeat", result_ok=True), answer, "2.1")
        return [f"well-behaved station: {problem}"] if problem else []


def _chunks(version: str) -> st.SearchStrategy[list[tuple[str, list[fuzz.Frame]]]]:
    return st.lists(st.tuples(fuzz.valid_calls(version), st.integers(0, 2**32 - 1)), min_size=BASES, max_size=BASES)


@pytest.fixture
def fuzzed_csms(tmp_path: Path) -> Iterator[LiveServer]:
    """A server of the fuzz test's own: if a frame kills it, this test says how, and no other test loses its server."""
    # CPython's debug allocator: a native extension that writes past a buffer aborts the server at that frame, not
    # seconds or tests later (how orjson's overflow on deep nesting first showed: a random abort in CI).
    server = start_server({"PYTHONMALLOC": "debug"}, log_path=tmp_path / "csms.log")
    server.log_path = tmp_path / "csms.log"  # type: ignore[attr-defined]
    yield server
    stop_server(server)


def _death(server: LiveServer) -> str:
    log = server.log_path.read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
    return f"the server died (exit {server.process.poll()}); its last lines:\n" + "\n".join(log[-40:])


def test_every_fuzzed_frame_gets_one_conformant_answer_and_others_keep_being_served(
    fuzzed_csms: LiveServer,
) -> None:
    live_csms = fuzzed_csms
    # Given fuzzing stations of both OCPP versions and a well-behaved one, connected to a live CSMS
    ids = [StationFactory.create().station_id for _ in range(CONNECTIONS * len(fuzz.VERSIONS) + 1)]
    stations = [Station(sid, fuzz.VERSIONS[i % 2]) for i, sid in enumerate(ids[:-1])]
    harness = Harness(live_csms, stations, Station(ids[-1], "2.1"))

    @settings(
        max_examples=math.ceil(FUZZ_FRAMES / FRAMES_PER_EXAMPLE),
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),  # no shrinking against a live server: the failing frame is reported,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(bases_201=_chunks("2.0.1"), bases_21=_chunks("2.1"))
    def fuzz_once(bases_201: list[Any], bases_21: list[Any]) -> None:
        chunks: list[tuple[str, list[fuzz.Frame]]] = []
        for version, bases in (("2.0.1", bases_201), ("2.1", bases_21)):
            for (action, payload), seed in bases:
                rnd = random.Random(seed)
                frames: list[fuzz.Frame] = []
                for _ in range(FRAMES_PER_BASE):
                    kind = rnd.choice(fuzz.KINDS)
                    mid = harness.message_id()
                    frames.append(fuzz.mutate(kind, version, action, payload, mid, rnd))
                    if rnd.random() < 0.05:  # a duplicate id: the same frame again, or another under its id
                        again = rnd.choice(["valid", "wrong_type", "extra_field"])
                        frames.append(fuzz.mutate(again, version, action, payload, mid, rnd))
                chunks.append((version, frames))
        # When the frames are sent, each station's in order, all stations at once
        problems = harness.send_chunks(chunks)
        # Then every frame got what the spec says, and the well-behaved station was served
        assert not problems, "\n".join(problems[:20])

    try:
        fuzz_once()
    except Exception as exc:
        if live_csms.process.poll() is not None:
            raise AssertionError(_death(live_csms)) from exc
        raise
    finally:
        harness.close()
    assert harness.frames_sent >= FUZZ_FRAMES
    assert harness.heartbeats == harness.batches  # one answered Heartbeat per batch of about 42 fuzzed frames
    assert live_csms.process.poll() is None, _death(live_csms)
    print(f"fuzz: {harness.frames_sent} frames, {harness.heartbeats} heartbeats, closes: "
          f"{[c for s in stations for c in s.closes]}")  # fmt: skip
