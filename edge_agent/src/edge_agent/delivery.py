"""When the CSMS does not take a station-initiated message: which errors are final, and how long to wait to retry.

OCPP 2.0.1 E13 (transaction-related message not accepted by the CSMS): on a CALLERROR or no answer, the station
resends the same message, waiting ``MessageAttemptInterval[TransactionEvent]`` multiplied by the number of
preceding transmissions (E13.FR.03), up to ``MessageAttempts[TransactionEvent]`` transmissions; after that the spec
lets it discard the message. Our policy differs there on purpose: a buffered message is an operator's metering and
billing data, so it is never discarded on an error a retry can fix. Past ``MessageAttempts`` it keeps retrying at
the last (capped) interval and logs every failure at ERROR level, so the stuck queue is visible.

Error codes (OCPP-J, part 4, 2.0.1 and 2.1; ``FormationViolation`` and ``OccurenceConstraintViolation`` are the
1.6 / misspelt forms some servers still send):

- final: the CSMS judged the message itself. Resending the identical bytes cannot change the verdict, and a
  message that can never be delivered must not block every later one: FormatViolation, FormationViolation,
  PropertyConstraintViolation, OccurrenceConstraintViolation, TypeConstraintViolation, ProtocolError,
  NotImplemented, NotSupported, MessageTypeNotSupported, RpcFrameworkError (our framing is the same on a retry).
  The refused message, with its full payload, goes to the session log.
- retryable: everything else, including codes this list does not know. InternalError is what our CSMS answers
  exactly when it could not store the message (database down or slow, a failed batch); GenericError is
  "anything else" (unknown cause: retry rather than delete); SecurityError concerns the station's standing (e.g.
  not accepted since its boot), not the message, and can change after a new boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINAL_ERRORS = frozenset(
    {
        "FormatViolation",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurrenceConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "ProtocolError",
        "NotImplemented",
        "NotSupported",
        "MessageTypeNotSupported",
        "RpcFrameworkError",
    }
)


def is_final(code: str) -> bool:
    """True if a CALLERROR with this code means the message will never be accepted as it is."""
    return code in FINAL_ERRORS


class CsmsCallError(Exception):
    """The CSMS answered a station-initiated CALL with a CALLERROR (any code, known to the library or not)."""

    def __init__(self, code: str, description: str = "", details: Any = None) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details

    @property
    def final(self) -> bool:
        return is_final(self.code)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """E13 retry timing: ``interval_s`` times the number of failed transmissions, capped."""

    attempts: int = 3  # MessageAttempts[TransactionEvent]: after this many the spec would discard; we keep going
    interval_s: float = 10.0  # MessageAttemptInterval[TransactionEvent]
    max_interval_s: float = 60.0  # never wait longer than this between two transmissions

    def delay_s(self, failures: int) -> float:
        """The wait before the next transmission after ``failures`` failed ones (interval x n, n <= attempts)."""
        steps = max(1, min(failures, max(1, self.attempts)))
        return min(self.interval_s * steps, self.max_interval_s)

    def exhausted(self, failures: int) -> bool:
        """The spec's attempts are used up (the spec would discard now; we keep retrying, loudly)."""
        return failures >= max(1, self.attempts)
