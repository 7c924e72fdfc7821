"""OCPP-J framing and schema validation for 2.0.1 and 2.1, without the `ocpp` library's executor round trip.

The `ocpp` package parses only message types 2-4 and validates in a thread per message; a CSMS serving thousands
of stations parses every frame itself, validates inline against the package's JSON schemas (validators cached by
``ocpp.messages.get_validator``), and understands OCPP 2.1's CALLRESULTERROR (5) and SEND (6).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema_rs
import ocpp.messages
import orjson
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError, best_match

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND = 2, 3, 4, 5, 6
_MESSAGE_TYPES_201 = (CALL, CALLRESULT, CALLERROR)
_MESSAGE_TYPES_21 = (CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND)
SUBPROTOCOLS = {"ocpp2.1": "2.1", "ocpp2.0.1": "2.0.1"}  # in order of preference
MESSAGE_ID_MAX = 36

# Station -> CSMS actions per version (OCPP 2.0.1 part 2 and OCPP 2.1 part 2, "messages sent by the CS").
_STATION_ACTIONS_201 = frozenset(
    {
        "Authorize",
        "BootNotification",
        "ClearedChargingLimit",
        "DataTransfer",
        "FirmwareStatusNotification",
        "Get15118EVCertificate",
        "GetCertificateStatus",
        "Heartbeat",
        "LogStatusNotification",
        "MeterValues",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyEvent",
        "NotifyMonitoringReport",
        "NotifyReport",
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "SecurityEventNotification",
        "SignCertificate",
        "StatusNotification",
        "TransactionEvent",
    }
)
_STATION_ACTIONS_21 = _STATION_ACTIONS_201 | {
    "BatterySwap",
    "ClosePeriodicEventStream",
    "GetCertificateChainStatus",
    "NotifyDERAlarm",
    "NotifyDERStartStop",
    "NotifyPriorityCharging",
    "NotifySettlement",
    "OpenPeriodicEventStream",
    "PullDynamicScheduleUpdate",
    "ReportDERControl",
    "VatNumberValidation",
}
STATION_ACTIONS: dict[str, frozenset[str]] = {"2.0.1": _STATION_ACTIONS_201, "2.1": frozenset(_STATION_ACTIONS_21)}
SEND_ACTIONS: dict[str, frozenset[str]] = {"2.0.1": frozenset(), "2.1": frozenset({"NotifyPeriodicEventStream"})}


class OcppError(Exception):
    """A frame or payload the spec answers with a CALLERROR of ``code``."""

    def __init__(self, code: str, description: str, message_id: str = "-1", details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description[:255]
        self.message_id = message_id
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class Frame:
    message_type: int
    message_id: str
    action: str = ""  # CALL and SEND
    payload: Any = None  # CALL, CALLRESULT, SEND
    error_code: str = ""  # CALLERROR, CALLRESULTERROR
    error_description: str = ""
    error_details: Any = None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's json reads NaN and Infinity; the grammar has neither


def _readable_id(text: str) -> str:
    """The message id of a frame orjson refuses but the JSON grammar allows (a lone surrogate escape such as
    ``"\\udb5d"``, a number too large for a double): the station can then match the error to its message. "-1"
    when the frame is not even that."""
    try:  # deep nesting stops at the interpreter's recursion limit (RecursionError), as orjson's does
        msg = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return "-1"
    found = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else ""
    # Printable: nothing the message log cannot keep (U+0000, lone surrogates).
    return found if 0 < len(found) <= MESSAGE_ID_MAX and found.isprintable() else "-1"


def parse(text: str, version: str) -> Frame:
    """Parse one OCPP-J frame. Raises OcppError with the CALLERROR to answer (message id "-1" if unreadable)."""
    try:
        msg = orjson.loads(text)
    except (ValueError, RecursionError) as exc:
        message_id = _readable_id(text)
        if message_id != "-1":  # grammatical JSON whose content is not valid (a lone surrogate, a huge number)
            raise OcppError("FormatViolation", "frame holds a value that is not valid JSON text", message_id) from exc
        raise OcppError("RpcFrameworkError", "frame is not valid JSON") from exc
    if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
        raise OcppError("RpcFrameworkError", "frame is not an OCPP-J array [type, messageId, ...]")
    message_type, message_id = msg[0], msg[1]
    if len(message_id) > MESSAGE_ID_MAX:
        raise OcppError("RpcFrameworkError", f"messageId longer than {MESSAGE_ID_MAX} characters")
    if "\x00" in message_id:  # PostgreSQL refuses U+0000 in text: the message log could not keep the frame
        raise OcppError("RpcFrameworkError", "messageId contains U+0000", message_id)
    if type(message_type) is not int:
        raise OcppError("RpcFrameworkError", "MessageTypeId is not an integer", message_id)
    allowed = _MESSAGE_TYPES_21 if version == "2.1" else _MESSAGE_TYPES_201
    if message_type not in allowed:
        raise OcppError("MessageTypeNotSupported", f"MessageTypeId {message_type} not supported", message_id)
    if message_type in (CALL, SEND):
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise OcppError("RpcFrameworkError", "CALL must be [2, messageId, action, payload]", message_id)
        if not isinstance(msg[3], dict):
            raise OcppError("FormatViolation", "payload is not a JSON object", message_id)
        return Frame(message_type, message_id, action=msg[2], payload=msg[3])
    if message_type == CALLRESULT:
        if len(msg) != 3:
            raise OcppError("RpcFrameworkError", "CALLRESULT must be [3, messageId, payload]", message_id)
        return Frame(message_type, message_id, payload=msg[2])
    if len(msg) != 5:
        raise OcppError("RpcFrameworkError", "CALLERROR must have 5 elements", message_id)
    return Frame(
        message_type,
        message_id,
        error_code=str(msg[2]),
        error_description=str(msg[3]),
        error_details=msg[4],
    )


def validate_station_request(frame: Frame, version: str) -> None:
    """Check that the station may send ``frame.action`` and that its payload matches the schema."""
    known = STATION_ACTIONS[version] if frame.message_type == CALL else SEND_ACTIONS[version]
    if frame.action not in known:
        if _schema_exists(version, f"{frame.action}Request"):
            raise OcppError("NotSupported", f"{frame.action} is not sent by a charging station", frame.message_id)
        raise OcppError("NotImplemented", f"unknown action {frame.action!r}", frame.message_id)
    validator = (
        send_validator(version, frame.action)
        if frame.message_type == SEND
        else request_validator(version, frame.action)
    )
    check(validator, frame.payload, frame.message_id)


def request_validator(version: str, action: str) -> Draft4Validator:
    return ocpp.messages.get_validator(CALL, action, version)


def response_validator(version: str, action: str) -> Draft4Validator:
    return ocpp.messages.get_validator(CALLRESULT, action, version)


@cache
def send_validator(version: str, action: str) -> Draft4Validator:
    """SEND payload schemas carry no Request/Response suffix (e.g. NotifyPeriodicEventStream.json)."""
    with open(_schema_path(version, action), encoding="utf-8-sig") as fh:
        return Draft4Validator(json.load(fh))


def is_csms_action(version: str, action: str) -> bool:
    """An action the CSMS may send: it has a request schema and is not station-initiated."""
    return action not in STATION_ACTIONS[version] and _schema_exists(version, f"{action}Request")


def check(validator: Draft4Validator, payload: Any, message_id: str = "-1") -> None:
    """Raise the OcppError the spec names for the most relevant schema violation, if any.

    Valid payloads (nearly all of them) are recognised by a compiled validator in microseconds; the `jsonschema`
    walk, about a millisecond per MeterValues because of the schemas' many $refs, runs only to name the error of an
    invalid one, and stays the judge: a payload only the fast validator rejects (NaN) is still accepted.
    """
    if _fast_validator(validator).is_valid(payload):
        return
    error = best_match(validator.iter_errors(payload))
    if error is not None:
        raise OcppError(_error_code(error), _describe(error), message_id)


_fast: dict[int, tuple[Draft4Validator, jsonschema_rs.Draft4Validator]] = {}


def _fast_validator(validator: Draft4Validator) -> jsonschema_rs.Draft4Validator:
    """The same schema compiled by jsonschema-rs (Draft 4, formats not asserted, exactly as Draft4Validator does).

    Keyed by id(): the entry keeps the `jsonschema` validator alive, so the id cannot be reused.
    """
    entry = _fast.get(id(validator))
    if entry is None:
        entry = _fast[id(validator)] = (
            validator,
            jsonschema_rs.Draft4Validator(validator.schema, validate_formats=False),
        )
    return entry[1]


def _error_code(error: ValidationError) -> str:
    if error.validator == "type":
        return "TypeConstraintViolation"
    if error.validator in ("required", "minItems", "maxItems"):
        return "OccurrenceConstraintViolation"
    if error.validator == "additionalProperties":
        return "FormatViolation"  # OCPP-J 2.0.1/2.1; "FormationViolation" is 1.6's spelling
    return "PropertyConstraintViolation"  # enum, maxLength, minimum, maximum, pattern, ...


def _describe(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or 'payload'}: {error.message}"


def _schema_path(version: str, name: str) -> str:
    package_dir = os.path.dirname(ocpp.messages.__file__)
    return os.path.join(package_dir, f"v{version.replace('.', '')}", "schemas", f"{name}.json")


@cache
def _schema_exists(version: str, name: str) -> bool:
    return os.path.exists(_schema_path(version, name))


def payload_digest(payload: Any) -> str:
    """Hex SHA-256 of a payload as received: the message-id dedup and the edge agent's ledger both key on it.

    CONTRACT (the edge agent computes the same bytes): ``json.dumps(payload, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` encoded as UTF-8, of the parsed payload before any normalisation. ``json`` and not orjson:
    the two spell some floats differently (``1e+16`` / ``1e16``), and the digest must not depend on the encoder.
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# The deepest nesting of containers a payload may have to be stored as JSON (the 2.0.1 and 2.1 schemas nest about
# eight levels; customData is vendor-defined). Deeper payloads are refused at the door (PropertyConstraintViolation)
# and logged as text: the native encoders never see them (orjson <= 3.11.9 corrupted its heap on some).
MAX_NESTING = 32


def dumps_bytes(obj: Any) -> bytes:
    """Compact JSON as UTF-8: orjson, ten times faster than ``json`` on OCPP payloads (every frame and stored
    payload goes through here); ``json`` for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def dumps(obj: Any) -> str:
    return dumps_bytes(obj).decode()


def call_frame(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return dumps([CALL, message_id, action, payload])


def result_frame(message_id: str, payload: dict[str, Any]) -> str:
    return dumps([CALLRESULT, message_id, payload])


def error_frame(message_id: str, code: str, description: str, details: dict[str, Any] | None = None) -> str:
    return dumps([CALLERROR, message_id, code, description, details or {}])


def result_error_frame(message_id: str, code: str, description: str) -> str:
    """OCPP 2.1 CALLRESULTERROR: our complaint about a CALLRESULT the station sent."""
    return dumps([CALLRESULTERROR, message_id, code, description, {}])
