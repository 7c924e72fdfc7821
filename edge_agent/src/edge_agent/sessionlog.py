"""Structured session log: one JSON object per line, with the error codes operators search for.

Every record carries ``ts`` (UTC), ``station``, ``event`` and, for faults, ``code`` — one of the constants below.
Logged through the stdlib ``logging`` module (logger ``edge_agent.session``) so journald, files or tests can
collect it; ``configure_session_log`` adds a JSON-lines file handler (``<var_dir>/session.log``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Error codes (the field manual's troubleshooting matrix).
EVSE_ERR_TIMEOUT = "EVSE_ERR_TIMEOUT"  # the car did not answer PowerDeliveryReq within 250 ms (ISO 15118)
HEARTBEAT_TIMEOUT = "HeartbeatTimeout"  # CSMS round trip above 500 ms, or no answer at all
PLL_SYNC_ERROR = "PLL_SYNC_ERROR"  # the inverter lost lock on the grid (Grid-Follower sync error)
OVER_TEMPERATURE = "OVER_TEMPERATURE"  # pack or inverter at its maximum: power derated to zero
GRID_TRIP = "GRID_TRIP"  # IEEE 1547 must-trip or anti-islanding: ceased to energise
FAILSAFE = "FAILSAFE"  # CSMS link lost > timeout: discharging stopped, safe mode
HARDWARE_FAULT = "HARDWARE_FAULT"  # a driver read or write failed or hung: 0 W, de-energised, connector Faulted
AUTH_REJECTED = "AUTH_REJECTED"  # the CSMS refused the station's credentials
CSMS_REJECTED = "CSMS_REJECTED"  # the CSMS answered a buffered message with a CALLERROR
PROTECTION_SETTING_REFUSED = "PROTECTION_SETTING_REFUSED"  # a DER setting outside IEEE 1547's allowed ranges

LOGGER = logging.getLogger("edge_agent.session")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body.update(fields)
        else:
            body["message"] = record.getMessage()
        return json.dumps(body, separators=(",", ":"), default=str)


def log_event(station: str, event: str, *, code: str | None = None, level: int = logging.INFO, **detail: Any) -> None:
    fields: dict[str, Any] = {"station": station, "event": event}
    if code is not None:
        fields["code"] = code
    fields.update(detail)
    LOGGER.log(level, "%s %s %s", station, event, code or "", extra={"fields": fields})


def configure_session_log(path: str | Path | None, *, level: int = logging.INFO) -> None:
    """JSON lines to ``path`` (and nothing else); None leaves logging as configured elsewhere."""
    LOGGER.setLevel(level)
    if path is None:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(p)
    handler.setFormatter(JsonLines())
    LOGGER.addHandler(handler)
    LOGGER.propagate = False
