"""Per-node fan-out of CSMS calls: one channel-layer message per server process, not one per station.

``station_call_async`` costs a database read, a channel-layer send and a reply channel per station: fine for one
command, too slow for a regulation dispatch that must reach 1,000 stations within 200 ms. Here instead:

* every server process keeps a process-local registry ``station_id -> OcppConsumer`` (:data:`LOCAL`), filled by
  the consumer when a socket is accepted and emptied when it closes;
* every server process that holds stations runs one :class:`NodeListener`: a channel that joined the group
  :data:`NODES_GROUP` (``csms.nodes``);
* :func:`calls_fanout` delivers the commands for local stations directly (no hop at all), and sends ONE group
  message with the remaining commands; each node picks the stations it holds, runs their calls concurrently (each
  through the consumer's own queue, so the one-outstanding-call-per-station rule of OCPP-J still holds) and answers
  with ONE aggregated message.

With the in-memory channel layer (no REDIS_URL) there is only this process, so commands for stations that are not
here are answered ``offline`` at once. On Redis, a station that no node holds is reported ``offline`` when the
deadline passes. Requests are not validated here (the caller builds them from a template it validated once): this
is the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer

from chargers import outage

LOG = logging.getLogger(__name__)
NODES_GROUP = "csms.nodes"
# The node re-joins its group this often. A Redis restart without persistence forgets every group membership, and
# this listener cannot rely on seeing an error to notice: its receive shares the process's one blocking pop with
# every consumer, so the failure may surface in a consumer's pump instead. group_add is idempotent and cheap (one
# ZADD and one EXPIRE per process every few seconds), so a periodic join bounds the time a restarted Redis leaves
# this node deaf to dispatches to GROUP_REFRESH_S (it also renews the membership's one-day expiry).
GROUP_REFRESH_S = 3.0


class LocalStation(Protocol):
    def call_local(self, action: str, payload: dict[str, Any], deadline: float) -> asyncio.Future[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Command:
    """One CSMS-initiated call for one station."""

    station_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How one call ended. ``status``: result, error (CALLERROR or invalid CALLRESULT), timeout or offline.

    ``answer`` is the CALLRESULT payload's ``status`` field (e.g. Accepted) or the CALLERROR code; ``answered_at``
    is when the station's answer frame arrived (epoch seconds), None if it never did.
    """

    station_id: str
    status: str
    answer: str
    answered_at: float | None

    def as_list(self) -> list[Any]:
        return [self.station_id, self.status, self.answer, self.answered_at]


class LocalStations:
    """Process-local registry of the stations whose sockets this process holds."""

    def __init__(self) -> None:
        self._consumers: dict[str, LocalStation] = {}

    def register(self, station_id: str, consumer: LocalStation) -> None:
        self._consumers[station_id] = consumer
        NodeListener.ensure_started()

    def unregister(self, station_id: str, consumer: LocalStation) -> None:
        """Forget ``consumer``; a newer connection under the same id (replacement) stays registered."""
        if self._consumers.get(station_id) is consumer:
            del self._consumers[station_id]

    def get(self, station_id: str) -> LocalStation | None:
        return self._consumers.get(station_id)

    def __contains__(self, station_id: object) -> bool:
        return station_id in self._consumers

    def __len__(self) -> int:
        return len(self._consumers)


LOCAL = LocalStations()


def _result(station_id: str, reply: dict[str, Any]) -> CommandResult:
    status = str(reply.get("status", "error"))
    if status == "result":
        answer = str((reply.get("payload") or {}).get("status", ""))
    elif status == "error":
        answer = str(reply.get("code", "InternalError"))
    else:
        answer = status
    return CommandResult(station_id, status, answer, reply.get("answered_at"))


async def deliver_local(commands: Sequence[Command], deadline: float) -> list[CommandResult]:
    """Run the calls of the stations held by this process concurrently; others are skipped (not ours)."""
    pending: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
    for command in commands:
        consumer = LOCAL.get(command.station_id)
        if consumer is not None:
            pending.append((command.station_id, consumer.call_local(command.action, command.payload, deadline)))
    if not pending:
        return []
    remaining = max(deadline - time.time(), 0.0) + 0.5  # the consumer enforces the deadline; this is a backstop
    done, _ = await asyncio.wait([f for _, f in pending], timeout=remaining)
    return [
        _result(sid, f.result()) if f in done and not f.cancelled() else CommandResult(sid, "timeout", "timeout", None)
        for sid, f in pending
    ]


@dataclass(frozen=True, slots=True)
class FanoutOutcome:
    results: list[CommandResult]
    started_at: float
    finished_at: float
    nodes: int  # server processes that answered (this one included when it held any of the stations)


async def calls_fanout(commands: Sequence[Command], *, timeout: float) -> FanoutOutcome:  # noqa: ASYNC109
    """Send every command to its station, wherever its socket is; one result per command, in no particular order."""
    started = time.time()
    deadline = started + timeout
    remote = [c for c in commands if c.station_id not in LOCAL]
    remote_results: list[CommandResult] = []
    collecting: asyncio.Future[tuple[list[CommandResult], int]] | None = None
    send_failed: BaseException | None = None
    nodes = 0
    if remote:
        layer = get_channel_layer()
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            remote_results = [CommandResult(c.station_id, "offline", "offline", None) for c in remote]
        else:
            # The other nodes' message goes out BEFORE this node starts on its own stations: sent after, its Redis
            # round trips would wait behind the local burst (hundreds of frames on this loop) and every other node
            # would start its share that much later (measured: bench/README.md, "Several nodes").
            try:
                reply_to = await _remote_send(layer, remote, deadline)
                collecting = asyncio.ensure_future(_remote_collect(layer, reply_to, remote, deadline))
            except Exception as exc:  # this node's own stations still get their commands; the error is raised after
                send_failed = exc
    local_results = await deliver_local(commands, deadline)
    if send_failed is not None:
        raise send_failed
    if collecting is not None:
        remote_results, nodes = await collecting
    return FanoutOutcome(
        results=local_results + remote_results,
        started_at=started,
        finished_at=time.time(),
        nodes=nodes + (1 if local_results else 0),
    )


async def _remote_send(layer: Any, commands: list[Command], deadline: float) -> str:
    """One group message to every node with the commands for stations not held here; returns the reply channel."""
    # The default "specific" prefix matters on channels-redis: every process-local channel of a layer is served by
    # one receive loop per real channel, and a second prefix would queue behind the consumers' 5-s blocking pops.
    reply_to: str = await layer.new_channel()
    await layer.group_send(
        NODES_GROUP,
        {
            "type": "fanout.calls",
            "origin": NodeListener.node_id,
            "reply_to": reply_to,
            "deadline": deadline,
            "commands": [[c.station_id, c.action, c.payload] for c in commands],
        },
    )
    return reply_to


async def _remote_collect(
    layer: Any, reply_to: str, commands: list[Command], deadline: float
) -> tuple[list[CommandResult], int]:
    """The nodes' aggregated answers on ``reply_to`` until every command has one or the deadline passed."""
    wanted = {c.station_id for c in commands}
    results: list[CommandResult] = []
    nodes = 0
    # The station's own deadline plus a margin for the node's reply to travel back.
    while wanted and (left := deadline + 0.5 - time.time()) > 0:
        try:
            message = await asyncio.wait_for(layer.receive(reply_to), left)
        except TimeoutError:
            break
        nodes += 1
        for sid, status, answer, answered_at in message["results"]:
            if sid in wanted:
                wanted.discard(sid)
                results.append(CommandResult(sid, status, answer, answered_at))
    results.extend(CommandResult(sid, "offline", "offline", None) for sid in wanted)
    return results, nodes


class NodeListener:
    """This process's member of :data:`NODES_GROUP`: serves ``fanout.calls`` for the stations it holds."""

    node_id = uuid.uuid4().hex
    _task: asyncio.Task[None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _serving: set[asyncio.Task[None]] = set()  # strong references while they run

    @classmethod
    def ensure_started(cls) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if cls._task is not None and not cls._task.done() and cls._loop is loop:
            return
        layer = get_channel_layer()
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            return  # a single process: calls_fanout delivers locally, no group traffic needed
        cls._loop = loop
        cls._task = loop.create_task(cls._run(layer), name="csms-fanout-node")

    @classmethod
    async def _run(cls, layer: Any) -> None:
        channel = await layer.new_channel()  # default prefix: see _remote_send
        failures = 0
        joined: float | None = None
        receiving: asyncio.Future[Any] | None = None
        try:
            while True:
                if joined is None or time.monotonic() - joined >= GROUP_REFRESH_S:
                    try:
                        await layer.group_add(NODES_GROUP, channel)
                    except Exception as exc:  # Redis away: the outage is logged once; join again after a back-off
                        failures += 1
                        outage.CHANNEL_LAYER.failed(exc)
                        await asyncio.sleep(outage.backoff(failures))
                        continue
                    joined = time.monotonic()
                    if failures:
                        failures = 0
                        outage.CHANNEL_LAYER.recovered()
                if receiving is None:
                    receiving = asyncio.ensure_future(layer.receive(channel))
                # The receive outlives the wait's timeout (a cancelled receive may drop a buffered message).
                done, _ = await asyncio.wait({receiving}, timeout=max(joined + GROUP_REFRESH_S - time.monotonic(), 0.0))
                if not done:
                    continue
                finished, receiving = receiving, None
                try:
                    message = finished.result()
                except Exception as exc:  # the layer hiccuped (Redis restart): join again at once, then keep serving
                    failures += 1
                    outage.CHANNEL_LAYER.failed(exc)
                    joined = None
                    await asyncio.sleep(outage.backoff(failures))
                    continue
                if message.get("type") == "fanout.calls" and message.get("origin") != cls.node_id:
                    task = asyncio.ensure_future(cls._serve(layer, message))
                    cls._serving.add(task)
                    task.add_done_callback(cls._serving.discard)
        finally:
            if receiving is not None:
                receiving.cancel()

    @classmethod
    async def _serve(cls, layer: Any, message: dict[str, Any]) -> None:
        commands = [Command(sid, action, payload) for sid, action, payload in message["commands"] if sid in LOCAL]
        if not commands:
            return
        results = await deliver_local(commands, float(message["deadline"]))
        try:
            await layer.send(
                message["reply_to"],
                {"type": "fanout.results", "node": cls.node_id, "results": [r.as_list() for r in results]},
            )
        except Exception:
            LOG.warning("could not deliver fan-out results to %s", message["reply_to"], exc_info=True)
