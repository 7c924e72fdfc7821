"""Writes of peak shaving: the audit record of each decision that sent commands to a depot's cars.

Regulation and reserve dispatch store a ``Dispatch`` per fleet setpoint; a shaver's setpoints have no product or
signal behind them but a site-meter reading, so they are stored as :class:`vpp.models.PeakStep`: the site, the
setpoint (or the release), why, when and by which server process, with the stations' answers counted (each CALL
itself is in the CSMS's message log). Written on the shaver's database thread, after the fan-out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import timezone

from vpp.models import PeakStep
from vpp.peak.shaver import ShaveStep


def peak_step_record(*, site_id: int, step: ShaveStep, node: str) -> PeakStep:
    """Store one step that sent commands (a setpoint asked of the cars, or their profiles cleared)."""
    results = step.outcome.results if step.outcome is not None else []
    accepted = sum(1 for r in results if r.status == "result" and r.answer == "Accepted")
    return PeakStep.objects.create(
        site_id=site_id,
        node=node[:32],
        at=datetime.fromtimestamp(step.at, UTC),
        action=step.action,
        import_w=step.import_w,
        fleet_w=step.fleet_w,
        cap_w=step.threshold_w,
        setpoint_w=None if step.action == "release" else step.setpoint_w,
        achieved_w=None if step.action == "release" else step.achieved_w,
        reason=step.reason,
        commands=len(step.commands),
        accepted=accepted,
        failed=len(step.commands) - accepted,
        recorded_at=timezone.now(),
    )
