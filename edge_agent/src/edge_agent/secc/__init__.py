"""ISO 15118-20 towards the car: the SECC (the charger's side), through Josev (the ``iso15118`` package).

Installed with ``pip install ./edge_agent[iso15118]`` in the agent's own environment (Josev pins cryptography 44 and
pydantic 1, and its EXI codec runs on a Java runtime). Only ``controller``, ``codec`` and ``server`` import Josev;
``car`` is plain Python, so the core agent, its station model and its tests never need it.

- ``car``: the car as the station sees it when a real EV talks ISO 15118-20 (what it reported: SoC, limits, energy
  requests, departure), and the session-log codes of the SECC.
- ``controller``: Josev's ``EVSEControllerInterface`` on the agent's ``Station``: the car's reports go into the
  station's limits and OCPP NotifyEVChargingNeeds; each AC_ChargeLoopRes carries the station's latest command.
- ``codec``: Josev's EXI codec (EXIficient on Java), warmed up before the first session, watching the messages it
  encodes and decodes (timing, and the DisplayParameters Josev drops).
- ``server``: starts Josev's SECC (SDP on UDP 15118, the V2G TCP server) on a network interface.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any


def _trace(self: logging.Logger, message: str, *args: Any, **kwargs: Any) -> None:
    return None


def _josev_logging_left_alone() -> None:
    """Josev's ``iso15118.shared``, ``.secc`` and ``.evcc`` run ``logging.config.fileConfig`` when imported: a DEBUG
    console handler on the root logger of the whole process. The root logger is put back as it was, and the setup
    replaced, before ``.secc``/``.evcc`` are imported, by the one thing Josev's code relies on (a TRACE level and
    ``Logger.trace``); Josev's loggers say warnings and errors only."""
    if importlib.util.find_spec("iso15118") is None:
        return
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    josev_logging = importlib.import_module("iso15118.shared.logging")  # iso15118.shared runs it once, here
    root.handlers[:] = handlers
    root.setLevel(level)

    def init_logger() -> None:
        logging.addLevelName(logging.DEBUG - 5, "TRACE")
        if not hasattr(logging.getLoggerClass(), "trace"):
            logging.getLoggerClass().trace = _trace  # type: ignore[attr-defined]
        logging.getLogger("iso15118").setLevel(logging.WARNING)

    setattr(josev_logging, "_init_logger", init_logger)  # noqa: B010 - a module attribute Josev imports by name
    init_logger()


_josev_logging_left_alone()
