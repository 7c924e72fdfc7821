"""Fuzzed OCPP-J frames and the oracle that says what a conformant CSMS answers to each.

Valid payloads come from the ``ocpp`` package's request schemas through hypothesis-jsonschema; each one is then
sent as is or mutated (wrong types, missing or extra fields, huge numbers, U+0000, deep nesting, long strings,
wrong message type ids, malformed JSON, non-array frames, binary frames, unknown actions, answers to nothing,
duplicate ids). The oracle judges a frame by its bytes alone, with the standard library and the schemas, never
with the CSMS's own parser: what must come back (one answer with this message id, one CALLERROR, or nothing) and
which error codes the OCPP-J spec (part 4, 2.0.1 and 2.1: "Valid Error Codes") allows for it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import hypothesis_jsonschema._from_schema as _hjs
import ocpp.messages
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as _cu
from hypothesis_jsonschema import from_schema
from jsonschema import Draft4Validator

VERSIONS = ("2.0.1", "2.1")

# OCPP-J 2.0.1 part 4 and 2.1 part 4 (the same table): the only codes a CALLERROR may carry.
VALID_CODES = frozenset(
    {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    }
)
# A frame that is not a readable OCPP-J message (the RPC layer's fault, not the action's).
FRAMING_CODES = frozenset({"RpcFrameworkError", "FormatViolation", "ProtocolError"})
# A payload that breaks its action's schema: which constraint it breaks decides the code.
SCHEMA_CODES = frozenset(
    {"TypeConstraintViolation", "PropertyConstraintViolation", "OccurrenceConstraintViolation", "FormatViolation"}
)
# Codes a schema-valid CALL may still get: refused in its registration state, outside what the CSMS stores, ...
SEMANTIC_CODES = VALID_CODES - {"InternalError", "NotImplemented", "RpcFrameworkError", "MessageTypeNotSupported"}

# Station -> CSMS actions (OCPP 2.0.1 / 2.1 part 2), written out here so the fuzz test does not trust the CSMS's list.
STATION_ACTIONS_201 = [
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
]
STATION_ACTIONS = {
    "2.0.1": tuple(STATION_ACTIONS_201),
    "2.1": (
        *STATION_ACTIONS_201,
        *[
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
        ],
    ),
}


class _Many:
    """hypothesis-jsonschema 0.23.1 (the latest) calls ``many(...).more()``, which Hypothesis 6.1xx replaced by a
    context manager and iterator; this keeps the old interface on the new one, for its object strategy only."""

    def __init__(self, data: Any, **kwargs: Any) -> None:
        self._many = _cu.many(data, **kwargs)
        self._many.__enter__()
        self._elements = iter(self._many)

    def more(self) -> bool:
        return next(self._elements, False) is None

    def reject(self, why: str | None = None) -> None:
        self._many.reject()


class _CompatUtils:
    many = _Many


_hjs.cu = _CompatUtils  # type: ignore[assignment]


def _schema(kind: str, version: str, action: str) -> dict[str, Any]:
    package_dir = os.path.dirname(ocpp.messages.__file__)
    path = os.path.join(package_dir, f"v{version.replace('.', '')}", "schemas", f"{action}{kind}.json")
    with open(path, encoding="utf-8-sig") as fh:
        schema: dict[str, Any] = json.load(fh)
    # OCPP 2.1's "$id" is a URN: with it, hypothesis-jsonschema resolves "#/definitions/..." against it and fails.
    schema.pop("$id", None)
    return schema


@functools.cache
def request_validator(version: str, action: str) -> Draft4Validator | None:
    if not action.isascii() or not action.isalnum():
        return None
    try:
        return Draft4Validator(_schema("Request", version, action))
    except OSError:  # no such schema, or a name no file can have
        return None


@functools.cache
def response_validator(version: str, action: str) -> Draft4Validator:
    return Draft4Validator(_schema("Response", version, action))


@functools.cache
def _payloads(version: str, action: str) -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(_schema("Request", version, action))  # type: ignore[return-value]  # an object schema


def valid_calls(version: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(action, schema-valid payload) for every station-initiated action of ``version``."""
    return st.sampled_from(STATION_ACTIONS[version]).flatmap(
        lambda action: st.tuples(st.just(action), _payloads(version, action))
    )


# --- mutations --------------------------------------------------------------------------------------------------

Frame = str | bytes


def _spots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a payload (its objects, lists and leaves)."""
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _spots(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _spots(item, (*path, index))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _other_type(value: Any, rnd: random.Random) -> Any:
    choices: list[Any] = [1, -7, 2.5, "text", True, None, [], {}, [1, "a"], {"k": "v"}]
    return rnd.choice([c for c in choices if type(c) is not type(value)])


def _dumps(frame: Any) -> str:
    # ensure_ascii: U+0000 and other control characters travel as JSON escapes, as a station's encoder writes them.
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


CSMS_ACTIONS = ("Reset", "SetChargingProfile", "GetVariables", "RequestStartTransaction")
HUGE = (10**30, -(10**30), 2**63, -(2**63) - 1, 2**64, 1e308, -1e308, 4.9e-324, 2**31, -(2**31) - 1)


def mutate(kind: str, version: str, action: str, payload: dict[str, Any], mid: str, rnd: random.Random) -> Frame:
    """One frame built from a valid (action, payload) by ``kind`` of mutation; ``mid`` is its message id."""
    spots = _spots(payload)
    spot = rnd.choice(spots)
    dicts = [p for p in spots if isinstance(_get(payload, p), dict)]
    strings = [p for p in spots if isinstance(_get(payload, p), str)]
    if kind == "valid":
        return _dumps([2, mid, action, payload])
    if kind == "wrong_type":
        return _dumps([2, mid, action, _replace(payload, spot, _other_type(_get(payload, spot), rnd))])
    if kind == "missing_field":
        where = rnd.choice(dicts)
        obj = _get(payload, where)
        if obj:
            obj = dict(obj)
            obj.pop(rnd.choice(sorted(obj)))
        return _dumps([2, mid, action, _replace(payload, where, obj)])
    if kind == "extra_field":
        where = rnd.choice(dicts)
        return _dumps([2, mid, action, _replace(payload, where, {**_get(payload, where), "fuzzExtra": 1})])
    if kind == "huge_number":
        numbers = [p for p in spots if isinstance(_get(payload, p), int | float) and p] or [spot]
        return _dumps([2, mid, action, _replace(payload, rnd.choice(numbers), rnd.choice(HUGE))])
    if kind == "huge_literal":  # JSON numbers no double holds: valid JSON, but beyond what a parser keeps
        text = _dumps([2, mid, action, _replace(payload, spot, 0.5)]) if spot else _dumps([2, mid, action, {}])
        return text.replace("0.5", rnd.choice(["1e400", "-1e400", "9" * 400]), 1)
    if kind == "nul":
        if strings and rnd.random() < 0.8:
            where = rnd.choice(strings)
            return _dumps([2, mid, action, _replace(payload, where, _get(payload, where) + "\x00")])
        return _dumps([2, mid + "\x00", action, payload])
    if kind == "deep":  # written as text: json.dumps itself cannot nest past Python's recursion limit
        depth = rnd.choice([20, 200, 600, 2000])  # around orjson's limit of 1024, nothing: the two parsers differ
        text = (
            _dumps([2, mid, action, _replace(payload, spot, "@DEEP@")]) if spot else _dumps([2, mid, action, "@DEEP@"])
        )
        return text.replace('"@DEEP@"', "[" * depth + "1" + "]" * depth, 1)
    if kind == "long_string":
        return _dumps([2, mid, action, _replace(payload, spot, "x" * rnd.choice([256, 1001, 70_000, 300_000]))])
    if kind == "message_type":
        bad = rnd.choice([0, 1, 7, 99, -1, "2", 2.0, True, None, 2**70, [2]])
        return _dumps([bad, mid, action, payload])
    if kind == "malformed_json":
        text = _dumps([2, mid, action, payload])
        cut = rnd.randrange(1, len(text))
        return rnd.choice([text[:cut], text[:cut] + "}" + text[cut:], text.replace(",", ",,", 1), text + "]", "NaN"])
    if kind == "not_array":
        return _dumps(rnd.choice([{"0": 2, "1": mid}, mid, 2, None, [], [2], [2, mid], payload]))
    if kind == "binary":
        return _dumps([2, mid, action, payload]).encode()
    if kind == "unknown_action":
        name = rnd.choice([*CSMS_ACTIONS, "MakeCoffee", "", "heartbeat", action + "Request", "x" * 300])
        return _dumps([2, mid, name, payload])
    if kind == "answer_to_nothing":
        return _dumps(rnd.choice([[3, mid, payload], [4, mid, "GenericError", "fuzz", {}], [3, mid, []]]))
    if kind == "bad_arity":
        return _dumps(rnd.choice([[2, mid, action], [2, mid, action, payload, 1], [3, mid], [4, mid, "X"]]))
    if kind == "bad_message_id":
        return _dumps([2, rnd.choice([42, None, "x" * 37, ["m"], ""]), action, payload])
    if kind == "ocpp21_frames":  # SEND and CALLRESULTERROR: never answered on 2.1, unsupported on 2.0.1
        return _dumps(rnd.choice([[6, mid, "NotifyPeriodicEventStream", {}], [5, mid, "GenericError", "x", {}]]))
    raise ValueError(kind)


KINDS = [
    "valid",
    "valid",
    "valid",
    "wrong_type",
    "missing_field",
    "extra_field",
    "huge_number",
    "huge_literal",
    "nul",
    "deep",
    "long_string",
    "message_type",
    "malformed_json",
    "not_array",
    "binary",
    "unknown_action",
    "answer_to_nothing",
    "bad_arity",
    "bad_message_id",
    "ocpp21_frames",
]


# --- the oracle -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What a conformant CSMS sends back for one frame.

    ``answer``: "call" (exactly one CALLRESULT or CALLERROR with ``message_id``), "error" (exactly one CALLERROR,
    with ``message_id`` or "-1" when the id could not be read), or "none" (nothing at all). ``codes``: the
    CALLERROR codes the spec allows here; ``result_ok``: whether a CALLRESULT is a conformant answer.
    """

    answer: str
    message_id: str = "-1"
    action: str = ""
    codes: frozenset[str] = frozenset()
    result_ok: bool = False


def _strict_loads(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    value = json.loads(text, parse_constant=refuse)
    if _has_non_finite(value, 0):
        raise ValueError("number beyond a double")
    return value


def _has_non_finite(value: Any, depth: int) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) > sys.float_info.max
    if isinstance(value, dict):
        return any(_has_non_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v, depth + 1) for v in value)
    return False


def expect(frame: Frame, version: str) -> Expect:
    """The conformant answer to ``frame`` on an OCPP ``version`` connection (OCPP-J part 4, sections 4.1-4.4)."""
    any_error = Expect("error", codes=FRAMING_CODES)
    if isinstance(frame, bytes):
        return any_error
    try:
        msg = _strict_loads(frame)
    except (ValueError, RecursionError):
        msg = _readable_id(frame)
        # A JSON text whose numbers no double holds: the frame is refused, but its id is readable and answered.
        return Expect("error", message_id=msg, codes=FRAMING_CODES) if msg else any_error
    if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
        return any_error
    message_type, mid = msg[0], msg[1]
    if len(mid) > 36:
        return any_error
    allowed = (2, 3, 4, 5, 6) if version == "2.1" else (2, 3, 4)
    if type(message_type) is not int or message_type not in allowed:
        return Expect("error", message_id=mid, codes=frozenset({"MessageTypeNotSupported", *FRAMING_CODES}))
    if message_type in (2, 6) and (len(msg) != 4 or not isinstance(msg[2], str)):
        return Expect("error", message_id=mid, codes=FRAMING_CODES)
    if message_type in (2, 6) and not isinstance(msg[3], dict):
        return Expect("error", message_id=mid, codes=FRAMING_CODES | {"TypeConstraintViolation"})
    if message_type == 3:
        return Expect("none") if len(msg) == 3 else Expect("error", message_id=mid, codes=FRAMING_CODES)
    if message_type in (4, 5):
        return Expect("none") if len(msg) == 5 else Expect("error", message_id=mid, codes=FRAMING_CODES)
    if message_type == 6:
        return Expect("none")
    action, payload = msg[2], msg[3]
    if "\x00" in mid:  # the id is readable, if unusual: any framing error, under its own id
        return Expect("error", message_id=mid, codes=FRAMING_CODES)
    if action not in STATION_ACTIONS[version]:
        known = request_validator(version, action) is not None
        return Expect("call", mid, action, frozenset({"NotSupported" if known else "NotImplemented"}))
    if any(True for _ in _errors(version, action, payload)):
        return Expect("call", mid, action, SCHEMA_CODES)
    return Expect("call", mid, action, SEMANTIC_CODES, result_ok=True)


def _errors(version: str, action: str, payload: Any) -> Any:
    validator = request_validator(version, action)
    assert validator is not None
    return validator.iter_errors(payload)


def _readable_id(text: str) -> str:
    """The message id of a frame Python's json reads but only with numbers beyond a double; "" otherwise."""
    try:
        msg = json.loads(text, parse_constant=lambda c: None)
    except (ValueError, RecursionError):
        return ""
    if isinstance(msg, list) and len(msg) >= 3 and type(msg[0]) is int and isinstance(msg[1], str):
        return msg[1] if len(msg[1]) <= 36 and "\x00" not in msg[1] else ""
    return ""


def check_answer(exp: Expect, answer: list[Any], version: str) -> str | None:
    """None if ``answer`` is a conformant reply to a frame expected as ``exp``; else what is wrong with it."""
    if not isinstance(answer, list) or not answer or answer[0] not in (3, 4):
        return f"not a CALLRESULT or CALLERROR: {answer!r:.300}"
    ids = {exp.message_id} if exp.answer == "call" or exp.message_id != "-1" else {"-1"}
    if exp.answer == "error" and exp.message_id != "-1":
        ids.add("-1")
    if answer[1] not in ids:
        return f"answer under message id {answer[1]!r}, expected {sorted(ids)}"
    if answer[0] == 3:
        if not exp.result_ok:
            return f"a CALLRESULT where the spec wants a CALLERROR {sorted(exp.codes)}"
        if len(answer) != 3:
            return f"malformed CALLRESULT {answer!r:.300}"
        errors = list(response_validator(version, exp.action).iter_errors(answer[2]))
        return f"CALLRESULT breaks {exp.action}Response: {errors[0].message:.200}" if errors else None
    if len(answer) != 5 or not isinstance(answer[3], str) or not isinstance(answer[4], dict):
        return f"malformed CALLERROR {answer!r:.300}"
    if len(answer[3]) > 255:
        return "CALLERROR description longer than 255 characters"
    code = answer[2]
    if code not in VALID_CODES:
        return f"error code {code!r} is not one of OCPP-J's"
    if code == "InternalError":
        return f"InternalError ({answer[3]!r})"
    if code not in exp.codes:
        return f"error code {code} where the spec names {sorted(exp.codes)} ({answer[3]!r:.200})"
    return None
