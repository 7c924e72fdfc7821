"""Synchronized reserve events from stored data: measure an event from meter values, price its shortfall, and
hand the settlement of the award period it starts in its penalty.

* :func:`reserve_event_measure` -- measure one ended event (:mod:`.measurement`) and its retroactive penalty
  (:mod:`.penalty`); stored with one line per charge point (meter ids, counts, SHA-256), idempotent.
* :func:`reserve_events_measure_due` -- every event ended at least :data:`MEASURE_AFTER` ago and not yet measured.
* :func:`reserve_period_penalty` -- the exact penalty a reserve award's settlement period carries (settling calls it).
* :func:`reserve_run_claim` -- take or renew the lease on dispatching an event (one server process at a time).
* :func:`reserve_events_unfinished` -- the events in force or still to come (what a (re)started process resumes).

Look-back: PJM's "average number of days between synchronized reserve events" is published by PJM and changes;
``RESERVE_PENALTY_AVERAGE_DAYS`` (setting, default 3) stands for it. The SRMCP of a cleared hour is the award's
clearing price (PJM clears Tier 2 at the SRMCP of the hour).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from markets.models import Award, Product
from markets.regulation.models import ReserveDeployment
from markets.regulation.performance import power_only_trace
from markets.regulation.selectors import charge_point_vehicles
from markets.regulation.services import RegulationError
from markets.reserve.measurement import RESPONSE_S, ROW_S, EventResponse, event_response, event_rows
from markets.reserve.models import ReserveEventLine, ReserveEventPerformance
from markets.reserve.penalty import ClearedInterval, lookback, retroactive_penalty

#: An event is measured this long after it ends: the stations' last meter values (sent every 10 s, queued ones
#: later) are in by then.
LOG = logging.getLogger(__name__)
MEASURE_AFTER = timedelta(minutes=2)
# An event still without a single meter value this long after its end is measured as no response at all (credited 0,
# the whole assignment short), as a market measures a resource that sent no data: waiting for ever would hold its
# award's settlement (credits included) back for ever, and a fleet that went dark would escape its penalty.
NO_DATA_AFTER = timedelta(hours=1)


class ReserveNotMeasured(RegulationError):
    """An event cannot be measured yet (not over, or its meter values not yet due) or cannot be measured at all."""


def reserve_event_measure(*, deployment: ReserveDeployment, now: datetime | None = None) -> ReserveEventPerformance:
    """Measure ``deployment`` from the stored meter values and price its shortfall (returned if already stored)."""
    stored = ReserveEventPerformance.objects.filter(deployment=deployment).first()
    if stored is not None:
        return stored
    now = now or timezone.now()
    if deployment.product_id is None:
        raise ReserveNotMeasured(f"{deployment} deploys no reserve product: an offset on regulation, not measured")
    if now < deployment.end + MEASURE_AFTER:
        raise ReserveNotMeasured(f"{deployment} is measured from {(deployment.end + MEASURE_AFTER).isoformat()}")
    duration_s = (deployment.end - deployment.start).total_seconds()
    rows = event_rows(duration_s)
    # A later part of a utility event is measured against the event's first baseline (baseline_at): one trace from
    # there, its row 0 the baseline, the event's own rows from its start on.
    baseline_at = (
        deployment.baseline_at if deployment.baseline_at and deployment.baseline_at < deployment.start else None
    )
    # The event's rows stay on its own start's grid; row 0 falls at or up to one row before baseline_at (still the
    # fleet's power before the event's response).
    skip = math.ceil((deployment.start - baseline_at).total_seconds() / ROW_S) if baseline_at else 0
    trace = power_only_trace(
        deployment.start - timedelta(seconds=skip * ROW_S), skip + rows, deployment.portfolio, None
    )
    if not trace.series and now < deployment.end + NO_DATA_AFTER:
        raise ReserveNotMeasured(f"no meter values of {deployment.portfolio} around {deployment.start.isoformat()}")
    if trace.series:
        fleet = _measured(trace.fleet_power_w, skip, duration_s=duration_s, assigned_w=deployment.power_w)
    else:
        LOG.warning("%s: no meter values %s after its end, measured as no response", deployment, NO_DATA_AFTER)
        fleet = event_response(np.zeros(rows), duration_s=duration_s, assigned_w=deployment.power_w)
    lines = [_measured(trace.power_w[i], skip, duration_s=duration_s, assigned_w=0) for i in range(len(trace.series))]
    window, exact, hours = _penalty(deployment, fleet.shortfall_w)
    try:
        return _store(deployment, trace, fleet, lines, window, exact, hours, now, baseline_at)
    except IntegrityError:  # measured by another worker meanwhile: same inputs, same figures
        return ReserveEventPerformance.objects.get(deployment=deployment)


def _measured(power_w: np.ndarray, skip: int, *, duration_s: float, assigned_w: int) -> EventResponse:
    """The event's response from ``power_w`` whose row ``skip`` is the event's start and row 0 its baseline."""
    baseline = float(power_w[0]) if skip else None
    return event_response(power_w[skip:], duration_s=duration_s, assigned_w=assigned_w, baseline_w=baseline)


def _penalty(deployment: ReserveDeployment, shortfall_w: int) -> tuple[timedelta, Decimal, list[list[object]]]:
    assert deployment.product_id is not None  # reserve_event_measure refused an event of no product
    previous = (
        ReserveEventPerformance.objects.filter(
            deployment__portfolio=deployment.portfolio,
            deployment__product_id=deployment.product_id,
            deployment__start__lt=deployment.start,
            shortfall_w__gt=0,
        )
        .order_by("-deployment__start")
        .values_list("deployment__start", flat=True)
        .first()
    )
    window = lookback(
        average_days_between_events=Decimal(str(settings.RESERVE_PENALTY_AVERAGE_DAYS)),
        since_last_shortfall=deployment.start - previous if previous is not None else None,
    )
    awards = Award.objects.filter(
        product_id=deployment.product_id,
        portfolio=deployment.portfolio,
        interval_start__lte=deployment.start,
        interval_end__gt=deployment.start - window,
        awarded_w__gt=0,
    ).order_by("interval_start", "id")
    cleared = [ClearedInterval(a.pk, a.interval_start, a.interval_end, a.awarded_w, a.clearing_price) for a in awards]
    exact, used = retroactive_penalty(
        shortfall_w=shortfall_w, event_start=deployment.start, window=window, cleared=cleared
    )
    hours = [
        [h.ref, h.start.isoformat(), h.cleared_w, h.penalised_w, str(h.hours), str(h.price), str(h.amount)]
        for h in used
    ]
    return window, exact, hours


def _store(deployment, trace, fleet: EventResponse, lines, window, exact, hours, now, baseline_at=None):
    owners = charge_point_vehicles(series=trace.series, start=deployment.start, end=deployment.end)
    with transaction.atomic():
        performance = ReserveEventPerformance.objects.create(
            deployment=deployment,
            assigned_w=fleet.assigned_w,
            baseline_w=fleet.baseline_w,
            response_10min_w=fleet.response_10min_w,
            sustained_w=fleet.sustained_w,
            credited_w=fleet.credited_w,
            shortfall_w=fleet.shortfall_w,
            rows=int(trace.grid_s.size),
            meter_values=trace.meter_values,
            duplicates_ignored=trace.duplicates,
            stations=len(trace.series),
            lookback_days=(Decimal(int(window.total_seconds())) / Decimal(86_400)).quantize(Decimal("0.0001")),
            penalty_exact=exact.quantize(Decimal("1E-10")),
            penalty_hours=hours,
            currency=deployment.product.operator.currency if deployment.product else "USD",
            inputs={
                "row_s": ROW_S,
                "response_s": RESPONSE_S,
                "baseline": "fleet power in force at the event start (sample and hold, readings up to 60 s old)"
                + (
                    f"; this part of a utility event: at the event's first start, {baseline_at.isoformat()}"
                    if baseline_at
                    else ""
                ),
                "credited": "min(response at 10 min, mean response from 10 min to the end, assigned)",
                "price": "award clearing price (SRMCP) of each cleared hour",
                "average_days_between_events": str(settings.RESERVE_PENALTY_AVERAGE_DAYS),
            },
            computed_at=now,
        )
        ReserveEventLine.objects.bulk_create(
            ReserveEventLine(
                performance=performance,
                station_id=series.station_pk,
                evse_id=series.evse_id,
                vehicle_id=who.vehicle_id,
                vehicle_ref=who.vehicle_ref,
                baseline_w=line.baseline_w,
                response_10min_w=line.response_10min_w,
                sustained_w=line.sustained_w,
                meter_count=len(series.meter_ids),
                duplicates_ignored=series.duplicates,
                meter_first_id=series.meter_ids[0] if series.meter_ids else None,
                meter_last_id=series.meter_ids[-1] if series.meter_ids else None,
                meter_digest=series.digest,
            )
            for series, who, line in zip(trace.series, owners, lines, strict=True)
        )
    return performance


def reserve_events_measure_due(*, now: datetime | None = None, since: timedelta = timedelta(days=2)) -> list[int]:
    """Measure every reserve event that ended at least :data:`MEASURE_AFTER` before ``now`` (and less than
    ``since`` ago) and is not measured yet; returns the ids measured. One that cannot be is left for the next run."""
    now = now or timezone.now()
    due = ReserveDeployment.objects.filter(
        product__isnull=False, performance__isnull=True, end__lte=now - MEASURE_AFTER, end__gt=now - since
    ).select_related("product__operator")
    done = []
    for deployment in due:
        try:
            reserve_event_measure(deployment=deployment, now=now)
            done.append(deployment.pk)
        except ReserveNotMeasured as exc:
            LOG.info("reserve event not measured yet: %s", exc)
        except Exception:  # one event's fault must not hold the others, nor the settlement run that follows
            LOG.exception("reserve event %s could not be measured; retried on the next run", deployment.pk)
    return done


def reserve_period_penalty(*, award: Award, period_start: datetime, period_end: datetime, now: datetime) -> Decimal:
    """The exact shortfall penalties ``award``'s settlement period carries: those of the events of its product and
    portfolio that start in the period, when ``award`` is the lowest-id award of them in force at the event start
    (two awards of one hour pay one penalty). Measures a due event on the way; raises :class:`ReserveNotMeasured`
    for one not yet measurable, so the period waits for it rather than settle without it."""
    if award.product.kind != Product.Kind.RESERVE:
        return Decimal(0)
    events = ReserveDeployment.objects.filter(
        product_id=award.product_id, portfolio=award.portfolio, start__gte=period_start, start__lt=period_end
    ).select_related("product__operator")
    total = Decimal(0)
    for event in events:
        carrier = (
            Award.objects.filter(
                product_id=award.product_id,
                portfolio=award.portfolio,
                interval_start__lte=event.start,
                interval_end__gt=event.start,
                awarded_w__gt=0,
            )
            .order_by("id")
            .values_list("id", flat=True)
            .first()
        )
        if carrier != award.pk:
            continue
        total += reserve_event_measure(deployment=event, now=now).penalty_exact
    return total


def fleet_response_rows(performance: ReserveEventPerformance) -> np.ndarray:
    """The fleet's response (W) on the event's 10-s rows, re-read from the meter values (for charts and audits)."""
    deployment = performance.deployment
    trace = power_only_trace(deployment.start, performance.rows, deployment.portfolio, None)
    return performance.baseline_w - trace.fleet_power_w


def reserve_run_claim(*, deployment_id: int, node: str, now: datetime, lease: timedelta) -> bool:
    """Take or renew the lease on dispatching event ``deployment_id`` for server process ``node`` until
    ``now + lease``; False when another process holds an unexpired lease (it dispatches the event).

    One atomic UPDATE: of two processes claiming at once, one matches the row and the other does not.
    """
    free = Q(run_node=node) | Q(run_lease_until__isnull=True) | Q(run_lease_until__lte=now)
    claimed = ReserveDeployment.objects.filter(Q(pk=deployment_id, end__gt=now) & free).update(
        run_node=node[:32], run_lease_until=now + lease
    )
    return claimed == 1


def reserve_events_unfinished(*, now: datetime, ahead: timedelta = timedelta(days=1)) -> list[ReserveDeployment]:
    """Events in force at ``now`` or starting within ``ahead``, whose lease no process holds now (none, expired)."""
    return list(
        ReserveDeployment.objects.filter(end__gt=now, start__lte=now + ahead)
        .filter(Q(run_lease_until__isnull=True) | Q(run_lease_until__lte=now))
        .order_by("start", "pk")
    )
