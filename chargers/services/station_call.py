"""CSMS-initiated messages: ``station_call`` / ``station_call_async`` from any process.

The request is validated against its action's schema, then sent over the channel layer to whichever server
process holds the station's socket (``chargers.consumers.OcppConsumer``), which sends it, one outstanding call
per station, and replies with the station's answer.

Every call names its actor (``actor_user_id``, ``actor_label``) and is audited: one ``StationCommand`` row per
attempt, whatever its outcome (``chargers.services.station_commands``), written off the event loop. Permissions
are the caller's business (``fleet`` knows who owns a station); a call to a station that does not exist is not
recorded. Dispatch's fan-out (``chargers.fanout``) does not come through here: ``vpp.models.Dispatch`` records it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from chargers import ocpp_j
from chargers.models import Station, StationCommand
from chargers.ocpp_j import OcppError
from chargers.passwords import WeakStationPassword
from chargers.services.password_rotation import rotation_answered, rotation_begin, rotation_password
from chargers.services.station_commands import station_command_record


class StationCallError(Exception):
    """Base of the errors ``station_call`` raises."""


class StationUnknown(StationCallError):
    pass


class StationOffline(StationCallError):
    pass


class StationBusy(StationOffline):
    """Not sent: the station's connection already has OCPP_CALLS_MAX calls queued (audited as refused)."""


class CallTimeout(StationCallError):
    pass


class CallPayloadInvalid(StationCallError):
    """The request was not sent: it does not match the action's schema (or the action is not a CSMS action)."""


class CallErrorResponse(StationCallError):
    """The station answered with a CALLERROR (or with a CALLRESULT that breaks the response schema)."""

    def __init__(self, code: str, description: str, details: Any = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


def station_call(
    *,
    station_id: str,
    action: str,
    payload: dict[str, Any],
    actor_user_id: int | None,
    actor_label: str,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send a CSMS-initiated ``action`` to a station, wherever its socket is; returns the CALLRESULT payload.

    Raises StationUnknown, StationOffline, CallPayloadInvalid (nothing sent), CallTimeout or CallErrorResponse.
    Every attempt on an existing station is audited under the actor (``actor_user_id`` may be None: a system
    component or the command line, then ``actor_label`` says who, e.g. ``cli:alice``).
    """
    return async_to_sync(station_call_async)(
        station_id=station_id,
        action=action,
        payload=payload,
        actor_user_id=actor_user_id,
        actor_label=actor_label,
        timeout=timeout,
    )


async def station_call_async(
    *,
    station_id: str,
    action: str,
    payload: dict[str, Any],
    actor_user_id: int | None,
    actor_label: str,
    timeout: float | None = None,  # noqa: ASYNC109
) -> dict[str, Any]:
    """The async twin of ``station_call``, for consumers and async views."""
    requested_at = timezone.now()
    audit = {
        "station_ident": station_id,
        "action": action,
        "payload": payload,
        "actor_user_id": actor_user_id,
        "actor_label": actor_label,
        "requested_at": requested_at,
    }
    rotation = None
    try:
        new_password = rotation_password(action, payload)
        if new_password is not None:  # stored (hashed) as pending before it goes out; see password_rotation
            try:
                rotation = await _rotation_begin(station_id=station_id, raw=new_password)
            except WeakStationPassword as exc:
                raise CallPayloadInvalid(f"{action}: BasicAuthPassword: {exc}") from exc
        result = await _call(station_id=station_id, action=action, payload=payload, timeout=timeout)
    except StationUnknown:
        raise
    except StationCallError as exc:
        await _record(**audit, **_failure_audit(exc))
        if rotation is not None:
            await _rotation_answered(rotation, answer=None, actor_label=actor_label, failure=type(exc).__name__)
        raise
    await _record(**audit, outcome=StationCommand.Outcome.ANSWERED, answer=result, answered_at=timezone.now())
    if rotation is not None:
        await _rotation_answered(rotation, answer=result, actor_label=actor_label)
    return result


_record = database_sync_to_async(station_command_record)
_rotation_begin = database_sync_to_async(rotation_begin)
_rotation_answered = database_sync_to_async(rotation_answered)


def _failure_audit(exc: StationCallError) -> dict[str, Any]:
    """The audit fields of a call that failed: its outcome, the error and, for a CALLERROR, the station's answer."""
    Outcome = StationCommand.Outcome
    if isinstance(exc, CallErrorResponse):
        answer = {"errorCode": exc.code, "errorDescription": exc.description, "errorDetails": exc.details}
        return {"outcome": Outcome.CALL_ERROR, "answer": answer, "error": str(exc), "answered_at": timezone.now()}
    outcomes = {StationOffline: Outcome.OFFLINE, CallTimeout: Outcome.TIMEOUT, CallPayloadInvalid: Outcome.REFUSED}
    return {"outcome": outcomes.get(type(exc), Outcome.REFUSED), "error": str(exc)}


async def _call(
    *,
    station_id: str,
    action: str,
    payload: dict[str, Any],
    timeout: float | None,  # noqa: ASYNC109
) -> dict[str, Any]:
    timeout = float(timeout if timeout is not None else settings.OCPP_CALL_TIMEOUT)
    row = await _station_route(station_id)
    if row is None:
        raise StationUnknown(f"no station {station_id!r}")
    version, channel = row
    if not channel:
        raise StationOffline(f"station {station_id!r} is not connected")
    version = version or "2.0.1"
    if not ocpp_j.is_csms_action(version, action):
        raise CallPayloadInvalid(f"{action!r} is not a CSMS-initiated action of OCPP {version}")
    try:
        ocpp_j.check(ocpp_j.request_validator(version, action), payload)
    except OcppError as exc:
        raise CallPayloadInvalid(f"{action}: {exc.description}") from exc
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS must be configured"
    reply_channel = await layer.new_channel()
    deadline = time.time() + timeout
    await layer.send(
        channel,
        {"type": "ocpp.call", "action": action, "payload": payload, "reply_to": reply_channel, "deadline": deadline},
    )
    reply = await _await_reply(
        layer, reply_channel, station_id=station_id, action=action, channel=channel, timeout=timeout
    )
    return _reply_unpack(station_id, action, reply)


#: How often a caller waiting for an answer checks that the socket it sent to is still the station's.
ROUTE_RECHECK_S = 1.0


async def _await_reply(
    layer: Any,
    reply_channel: str,
    *,
    station_id: str,
    action: str,
    channel: str,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Wait for the consumer's reply; fail fast with StationOffline if the socket went away meanwhile.

    A call sent to a consumer that is closing sits unread in its channel (the consumer can only answer "offline"
    for calls it has already taken). Rather than hold the caller for the whole timeout, re-read the station's route
    every ``ROUTE_RECHECK_S``: once the station's channel is gone or belongs to a newer connection, the call was never
    delivered and the caller learns so within a second.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    receive = asyncio.ensure_future(layer.receive(reply_channel))
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CallTimeout(f"{station_id} did not answer {action} within {timeout:g} s")
            done, _ = await asyncio.wait({receive}, timeout=min(ROUTE_RECHECK_S, remaining))
            if done:
                return dict(receive.result())
            route = await _station_route(station_id)
            if route is None or route[1] != channel:
                raise StationOffline(f"station {station_id!r} disconnected before answering {action}")
    finally:
        if not receive.done():
            receive.cancel()


def _reply_unpack(station_id: str, action: str, reply: dict[str, Any]) -> dict[str, Any]:
    status = reply.get("status")
    if status == "result":
        return dict(reply["payload"])
    if status == "busy":
        raise StationBusy(f"station {station_id!r} has too many calls queued; {action} was not sent")
    if status == "offline":
        raise StationOffline(f"station {station_id!r} disconnected before answering {action}")
    if status == "timeout":
        raise CallTimeout(f"{station_id} did not answer {action} in time")
    raise CallErrorResponse(reply.get("code", "InternalError"), reply.get("description", ""), reply.get("details"))


@database_sync_to_async
def _station_route(station_id: str) -> tuple[str, str] | None:
    return Station.objects.filter(station_id=station_id).values_list("ocpp_version", "channel_name").first()
